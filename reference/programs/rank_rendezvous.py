"""The ranks of `mpiexec -n N python -m reference train` (N > 1) start together and stop together.

Every rank runs the command with the same flags (reference/programs/train.py); rank 0 prints and writes,
the others keep their stderr to themselves. Once set up (data read, model built, DPO's reference
log-probabilities computed), the ranks meet (`ranks_ready`: a rendezvous, in torch.distributed's word):
each says it is ready, with digests of its settings and data and the step it resumes from, or why it
failed. So a rank that failed to start stops every rank with its own error line, and ranks started with
other settings or data are refused. From the meeting on, a failure of one rank alone ends the whole run
(MPI_Abort) rather than leave the others waiting in a collective; a rank that loses a peer (`PeerLost`)
leaves the naming to the lost rank's watcher (reference/programs/rank_watch.py) and speaks itself only
when no watcher did (docs/data-parallel.md, "Faults, and what every rank does").
"""

from __future__ import annotations

import sys
from typing import Callable

from .collectives import PeerLost
from .training.trainer import Trainer

__all__ = ["PEER_LOST_GRACE_S", "run_ranks", "ranks_ready"]

# How long a rank that lost a peer waits for the lost rank's watcher to name it (and the launcher to end
# every rank) before it speaks itself: a watcher needs milliseconds; seconds cover a loaded machine.
PEER_LOST_GRACE_S = 5.0


def run_ranks(comm, run_rank: Callable[[dict], int]) -> int:
    """`run_rank(state)` (the command on this rank) run so that no rank is left waiting: with one process, just
    that. With N > 1 ranks, ranks above 0 keep their stderr to themselves; `run_rank` meets the others once
    set up (`ranks_ready`, which marks `state["ready"]`), and a rank that failed before that meeting tells
    the others there, its last error line with its exit code. After it: a failure of this rank alone
    (`state["alone"]`) ends every rank (MPI_Abort with its code); a lost peer (`PeerLost`) is named by that
    rank's watcher (reference/programs/rank_watch.py) within PEER_LOST_GRACE_S, or else by this rank, in one
    line, before MPI_Abort; a bug prints its traceback and aborts. Returns the exit code."""
    if comm.size == 1:
        return run_rank({})
    import contextlib
    import io
    captured, state = io.StringIO(), {}
    quiet = contextlib.redirect_stderr(captured) if comm.rank else contextlib.nullcontext()
    try:
        with quiet:
            code = run_rank(state)
    except KeyboardInterrupt:
        # Ctrl-C while setting up (DPO's reference log-probabilities, say): a failure to start, told to the
        # others at the meeting below; from the meeting on, Ctrl-C only raises a flag (catch_interrupts).
        with quiet:
            print("interrupted: python -m reference train stopped before training started", file=sys.stderr)
        code = 130
    except PeerLost as e:                                      # another rank died: its watcher names it
        import time                                            # (rank_watch.py) and the launcher then ends us;
        time.sleep(PEER_LOST_GRACE_S)                          # still here: no watcher spoke, so we do
        print(f"error: rank {comm.rank} lost contact with another rank ({e}); every rank stops now. The last "
              "checkpoint in out_dir is intact (written atomically): resume with --resume", file=sys.stderr)
        sys.stderr.flush()
        comm.abort(1)
        return 1
    except BaseException:                                      # a bug: its traceback, then no rank left waiting
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        comm.abort(1)
        raise
    if "ready" not in state:                                   # failed before the meeting: tell the others there
        lines = captured.getvalue().strip().splitlines()
        comm.allgather((code, lines[-1] if lines else "", None))
    elif code not in (0, 130) and state.get("alone"):
        sys.stderr.flush()
        comm.abort(code)
    return code


def ranks_ready(comm, trainer: Trainer, state: dict) -> int:
    """The ranks' meeting after setup: each says it is ready (with what it must share with the others) or
    why it failed. 0 when all are ready with the same settings and data; else the first failure's exit
    code, its line printed by rank 0."""
    import os
    import socket
    every = comm.allgather((0, "", {**trainer.dist.check_digests(trainer.fingerprint()),
                                    "where": (socket.gethostname(), os.getpid())}))
    state["ready"] = True
    failed = [(r, code, line) for r, (code, line, _) in enumerate(every) if code != 0]
    if failed:
        r, code, line = failed[0]
        print(f"rank {r}: {line}" if line else f"error: rank {r} failed to start (exit code {code})", file=sys.stderr)
        return code
    trainer.dist.where = [d.pop("where") if d else None for _, _, d in every]     # for the "start" record
    try:
        trainer.dist.compare_digests([d for _, _, d in every])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
