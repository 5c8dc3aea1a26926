"""A lost rank, named: each rank of a data-parallel run under MPICH's `mpiexec` (Hydra) trains in a child
process that its launched process watches.

Why a second process. When a rank dies (kill -9, the out-of-memory killer), Hydra kills every other rank
within milliseconds of seeing the dead rank's connection to it close, and prints a banner naming a
process id, not the rank, and not always the dead one's. No rank lives long enough to say which was lost:
a watchdog thread inside the ranks loses that race (measured: 4 runs out of 10). So the process Hydra starts
(the *watcher*) runs the training itself in a child (the *worker*) and waits for it, as torchrun's agent
does for its workers:

    mpiexec -n N python -m reference train ...
      rank r: watcher (Hydra's child; holds the PMI connection, so Hydra sees no death)   <- prints the line
                worker (its own session, so Hydra's kill of the watcher's group misses it;
                        dies with its watcher: PR_SET_PDEATHSIG)                        <- MPI, training

The worker inherits the watcher's connection to Hydra (the PMI_FD the launcher set) and is the MPI rank.
When the worker ends, the watcher exits with its exit code; when a signal killed it, the watcher first
prints one line naming the rank, its pid and host and the signal, then exits 128 + the signal's number.
Only then does Hydra see the connection close and end the other ranks: their watchers are killed, and
their workers die with them. Checkpoints are written atomically (docs/checkpoints.md), so the last one
is intact.

Ctrl-C and SIGTERM reach the watchers (Hydra forwards them); each forwards the signal to its worker.

Only under Hydra (PMI_FD is set) with N > 1 ranks and on Linux (PR_SET_PDEATHSIG); elsewhere the rank
trains in its launched process, and the launcher reports a lost rank in its own words (Open MPI's names
the rank).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

__all__ = ["WORKER_ENV", "should_watch", "watch_worker", "become_worker"]

# Set in the worker's environment: the watcher's pid (the worker must not start a watcher of its own).
WORKER_ENV = "NUMPY_GPT_RANK_WATCHER"
_PR_SET_PDEATHSIG = 1                                        # <linux/prctl.h>


def should_watch(environ=os.environ) -> bool:
    """True in a process Hydra started as one of N > 1 ranks, on Linux, that is not already a worker."""
    from .collectives import world_size_from_env
    return (sys.platform.startswith("linux") and "PMI_FD" in environ and WORKER_ENV not in environ
            and world_size_from_env(environ) > 1)


def describe_death(rank: str, pid: int, host: str, signum: int) -> str:
    """The one line for a worker killed by `signum`."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    why = " (kill -9, or the out-of-memory killer)" if signum == signal.SIGKILL else ""
    return (f"error: rank {rank} (pid {pid} on {host}) was killed by {name}{why}; every rank stops now. Checkpoints "
            "are written whole or not at all: --resume continues from the last one in out_dir, if the run wrote one, "
            "at any number of ranks")


def watch_worker(argv: list[str] | None = None) -> int:
    """Run this command again as the worker (same interpreter, arguments and environment, plus WORKER_ENV)
    and wait for it; its exit code, or 128 + the signal that killed it after one line on stderr."""
    argv = list(sys.orig_argv if argv is None else argv)
    argv[0] = sys.executable
    pmi_fd = int(os.environ["PMI_FD"])
    worker = subprocess.Popen(argv, env={**os.environ, WORKER_ENV: str(os.getpid())}, pass_fds=(pmi_fd,),
                              start_new_session=True)

    def forward(signum, frame):
        try:
            worker.send_signal(signum)
        except ProcessLookupError:
            pass
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    code = worker.wait()
    if code >= 0:
        return code
    bar = "--no-progress" not in argv                          # rank 0's progress bar ends in no newline:
    print(("\n" if bar else "") + describe_death(os.environ.get("PMI_RANK", "?"), worker.pid,   # a line of its own
                                                  socket.gethostname(), -code), file=sys.stderr, flush=True)
    return 128 - code


def become_worker(environ=os.environ) -> None:
    """In the worker: die with the watcher (PR_SET_PDEATHSIG, SIGKILL), and at once if it is already gone."""
    watcher = environ.get(WORKER_ENV)
    if watcher is None or not sys.platform.startswith("linux"):
        return
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if str(os.getppid()) != watcher:                           # the watcher died before the prctl
        os._exit(1)
