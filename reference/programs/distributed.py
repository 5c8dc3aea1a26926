"""Data-parallel training on MPI: the shard arithmetic, the objective's weighted pieces, gradient accumulation,
ZeRO-1 (the communicators and the ring: reference/programs/collectives.py; the flat parameters and ZeRO-1's
AdamW on a slice of them: reference/programs/zero.py).

    mpiexec -n N python -m reference train ...          the same flags as one process

One step of a run with N ranks and `gradient_accumulation_steps` K (docs/data-parallel.md derives each line):

    x, y = get_batch(train, batch_size * K)            every rank draws the whole batch: the one-process draw
    rows of rank r = shard_bounds(G, N)[r]             contiguous, sizes differ by at most one row
    for each micro-batch of <= batch_size rows:        forward and backward; the loss's gradient weighted
        grad += (n_i / n) d(mean loss_i)               by its count of target tokens n_i (n: the batch's)
    ring all-reduce of the flat gradient               sum_i (n_i / n) g_i: exactly the full-batch mean
    clip by the global norm; AdamW step                every rank the same step (ZeRO-1: its slice only,
                                                       then the parameters all-gathered)

Another objective cuts its own units (`TokenMean`'s protocol): DPO shares out pairs, a piece of b pairs
weighing b / B, each pair's two rows together (reference/programs/dpo.py::DPOObjective, docs/dpo.md).

The reduction order is fixed (the ring's: chunk c is summed starting at rank c + 1), so every rank holds
the same bits, and ZeRO-1 equals plain data parallel bit for bit. Against one process the sums run in
another order: equal to round-off (tests/test_data_parallel.py, tests/test_grad_accum.py).

The communicators and the ring are in reference/programs/collectives.py; mpi4py is imported only when the
environment says this process is one of several MPI ranks, so one-process training never loads it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np

from ..lora import set_lora_masks
from ..optim import clip_grad_norm_
from .collectives import LocalComm, ring_allgather, ring_allreduce, ring_reduce_scatter
from .zero import FlatParams, ZeroAdamW

__all__ = ["DataParallel", "TokenMean", "shard_bounds", "data_digest"]


def shard_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """`n` items split into `parts` contiguous ranges [a, b), in order, sizes differing by at most one (the
    first n % parts ranges one longer). Rows of a batch over ranks, a shard over micro-batches, the flat
    parameters over ZeRO-1's owners and over the ring's chunks all use it."""
    base, extra = divmod(n, parts)
    out, a = [], 0
    for i in range(parts):
        b = a + base + (1 if i < extra else 0)
        out.append((a, b))
        a = b
    return out


# ------------------------------------------------------------------------------------- a step's pieces


class _StepMasks:
    """Dropout masks for the pieces of a step: each layer's mask is drawn once per step for the whole batch
    (the draw one process makes, in the same order, of the same shape) and every piece takes its rows and,
    when it is shorter than the batch (a piece of DPO pairs padded to its own longest row), its first
    positions. `rows`, `time`: the whole batch's rows and length (its x's shape)."""

    def __init__(self, source, rows: int, time: int):
        self.source, self.rows, self.time, self.full = source, rows, time, {}

    def full_shape(self, shape: tuple, time: int) -> tuple:
        """The whole batch's mask shape for a piece's `shape` of length `time`: the model draws its dropout
        masks as (rows, T, features) or (rows, heads, T, T) (attention); ValueError for any other layout."""
        rest = list(shape[1:])
        if time != self.time:
            axes = {3: (1,), 4: (2, 3)}.get(len(shape))
            if axes is None or any(shape[a] != time for a in axes):
                raise ValueError(f"a dropout mask of shape {shape} for a piece of length {time}: expected "
                                 "(rows, T, features) or (rows, heads, T, T)")
            for a in axes:
                rest[a - 1] = self.time
        return (self.rows, *rest)

    def rows_of(self, rows, time: int | None = None):
        """The mask source of one piece: `rows` (a slice or an index array) of the batch's rows, its first
        `time` positions (default: all)."""
        time = self.time if time is None else time

        def draw(name, shape, p, dtype):
            if name not in self.full:
                self.full[name] = self.source(name, self.full_shape(shape, time), p, dtype)
            mask = self.full[name][rows]
            return mask if time == self.time else mask[(slice(None), *(slice(0, d) for d in shape[1:]))]
        return draw


class TokenMean:
    """The language model's objective as a step's pieces see it: a batch (x, y) of rows, its loss the mean
    cross-entropy over the target tokens (positions whose target is `ignore_index` left out), so a piece's
    weight is its share of the batch's target tokens. The protocol `DataParallel.forward_backward` asks of
    an objective (reference/programs/dpo.py::DPOObjective is the other one):

        units(batch)                      what ranks and micro-batches share out: rows here, pairs for DPO
        count(batch, a, b)                the loss's denominator in units [a, b): target tokens here
        piece(batch, a, b)                (the sub-batch of units [a, b), its rows of the batch's x)
        loss_and_backward(model, batch, masks, weight)   forward, the batch's mean loss, and the backward
                                                         of weight x that loss (gradients accumulate)
    """

    def __init__(self, ignore_index: int):
        self.ignore_index = ignore_index

    def units(self, batch) -> int:
        return len(batch[0])

    def count(self, batch, a: int, b: int) -> int:
        return int((batch[1][a:b] != self.ignore_index).sum())

    def piece(self, batch, a: int, b: int):
        x, y = batch
        return (x[a:b], y[a:b]), slice(a, b)

    def loss_and_backward(self, model, batch, masks=None, weight: float = 1.0) -> float:
        x, y = batch
        if weight == 1.0:
            return model.loss_and_backward(x, y, masks)        # one process, one batch: the plain code
        loss, _, (cache, c_loss) = model.loss(x, y, masks)
        model.backward(model.criterion.backward(weight, c_loss), cache)
        return float(loss)


# ------------------------------------------------------------------------------------- data parallel


class DataParallel:
    """How one rank of N takes part in a step. One process (LocalComm) with K = 1 runs exactly the
    one-process code: loss_and_backward's arithmetic, clip_grad_norm_, optimizer.step().

    `zero_stage` 1: the AdamW moments live in slices, this rank's being flat[own] of the flattened parameters
    (`shard_bounds(P, N)[rank]`); see `attach`."""

    def __init__(self, comm=None, zero_stage: int = 0):
        self.comm = comm if comm is not None else LocalComm()
        self.rank, self.size = self.comm.rank, self.comm.size
        self.zero_stage = zero_stage
        self.flat: FlatParams | None = None
        self.where: list | None = None                          # each rank's (host, pid), once they have met
        self.zero: ZeroAdamW | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, prints and writes checkpoints."""
        return self.rank == 0

    def ranks(self) -> list[dict]:
        """Each rank's host and pid, for the log's "start" record (a launcher names a lost rank by pid)."""
        where = self.where or [(None, os.getpid())]
        return [{"rank": r, "host": w[0] if w else None, "pid": w[1] if w else None} for r, w in enumerate(where)]

    @property
    def plain(self) -> bool:
        """One process, no ZeRO: the one-process code path, unchanged."""
        return self.size == 1 and self.zero_stage == 0

    def attach(self, params, optimizer) -> None:
        """Set up the flat views (and ZeRO-1's slice of the moments) for `params` and their `optimizer`."""
        self.flat = FlatParams(params)
        self.chunks = shard_bounds(self.flat.size, self.size)
        if self.zero_stage == 1:
            self.zero = ZeroAdamW(optimizer, self.flat, self.chunks[self.rank])

    # ---- the batch

    def rows(self, batch: int) -> tuple[int, int]:
        """This rank's rows [a, b) of a step's batch of `batch` rows."""
        return shard_bounds(batch, self.size)[self.rank]

    def micro_batches(self, batch: int, micro: int) -> list[tuple[int, int]]:
        """This rank's micro-batches of at most `micro` rows, as row ranges of the step's batch."""
        a, b = self.rows(batch)
        count = max(1, -(-(b - a) // micro))
        return [(a + c, a + d) for c, d in shard_bounds(b - a, count) if d > c]

    def describe(self, batch: int, micro: int, block_size: int, unit: str = "rows") -> str:
        """The settings line's part: N, the shard sizes and the micro-batches, in `unit`s ("rows" of
        block_size tokens; "pairs" for DPO, two rows each)."""
        shards = [b - a for a, b in shard_bounds(batch, self.size)]
        per = [max(1, -(-s // micro)) for s in shards]
        size = f" ({batch * block_size} tokens)" if unit == "rows" else ""
        return (f"data parallel: {self.size} rank(s), a step's batch {batch} {unit}{size} "
                f"in shards of {shards} {unit}, {per} micro-batch(es) of <= {micro} {unit} per rank"
                + (", ZeRO-1 (AdamW moments split over the ranks)" if self.zero_stage == 1 else ""))

    # ---- one step

    def forward_backward(self, model, batch, masks, micro: int, objective=None) -> float:
        """Forward and backward of this rank's micro-batches of `batch`, each piece's gradient weighted by its
        share of the loss's denominator (`objective.count`: target tokens for the language model, pairs for
        DPO) and summed over ranks (ZeRO-1: only this rank's slice is summed, in `self.zero.grad`); returns
        the batch's mean loss, the same float on every rank. `batch`: (x, y) for the language model (the
        default `objective`, TokenMean), the objective's batch otherwise; `micro`: the most units (rows,
        pairs) one forward holds; `masks`: a DropoutMasks or None."""
        objective = objective if objective is not None else TokenMean(model.criterion.ignore_index)
        units = objective.units(batch)
        pieces = self.micro_batches(units, micro)
        if self.size == 1 and pieces == [(0, units)] and self.zero_stage == 0:
            return objective.loss_and_backward(model, batch, masks)    # one process, one batch: unchanged
        n_total = objective.count(batch, 0, units)                 # every rank holds the whole batch
        step_masks = _StepMasks(masks, *batch[0].shape) if masks is not None else None
        local = 0.0
        for a, b in pieces:
            n = objective.count(batch, a, b)
            if n == 0:
                continue                                           # no targets: no loss, no gradient
            w = n / n_total                                        # this piece's share of the mean
            part, rows = objective.piece(batch, a, b)
            piece_masks = step_masks.rows_of(rows, part[0].shape[1]) if step_masks else None
            set_lora_masks(model, piece_masks)                     # LoRA adapters' dropout: the same rows
            local += w * float(objective.loss_and_backward(model, part, piece_masks, w))
        total = sum(self._gather_checking_interrupts(local))      # rank order: the same float everywhere
        if n_total == 0:
            total = math.nan
        self._reduce_gradients()
        return float(total)

    def _reduce_gradients(self) -> None:
        if self.size == 1 and self.zero is None:
            return
        g = self.flat.grads()
        if self.zero is not None:
            ring_reduce_scatter(self.comm, g, self.chunks)        # only this rank's slice is summed
            lo, hi = self.chunks[self.rank]
            self.zero.grad = g[lo:hi].copy()
        else:
            ring_allreduce(self.comm, g, self.chunks)
            self.flat.set_grads(g)

    def clip_grad_norm_(self, params, max_norm: float) -> float:
        """The global L2 norm of the summed gradient, clipped as torch does (reference.optim.clip_grad_norm_);
        with several ranks or ZeRO-1: each rank's sum of squares over its own chunk, added in rank order."""
        if self.plain:
            return clip_grad_norm_(params, max_norm)
        lo, hi = self.chunks[self.rank]
        if self.zero is not None:
            own = self.zero.grad
        else:
            own = self.flat.grads()[lo:hi]
        total = math.sqrt(sum(self.comm.allgather(float(np.vdot(own, own)))))
        coef = max_norm / (total + 1e-6)
        if not coef >= 1.0:
            if self.zero is not None:
                self.zero.grad *= coef
            else:
                for p in params:
                    p.grad *= coef
        return total

    def step(self, optimizer) -> None:
        """The optimizer step: every rank the whole step, or (ZeRO-1) its slice and then the all-gather."""
        if self.zero is None:
            optimizer.step()
            return
        values = self.flat.values()
        lo, hi = self.chunks[self.rank]
        own = values[lo:hi]
        self.zero.step(own)
        ring_allgather(self.comm, values, self.chunks)
        self.flat.set_values(values)

    # ---- evaluation

    def eval_loss(self, draw, loss, iters: int) -> float:
        """nanoGPT's estimate_loss on one split, the batches shared round-robin over the ranks: every rank
        draws every batch (`draw()`, so the generator stays in step), computes `loss(batch)` for those i with
        i % N == rank, and the means are gathered in batch order: the one-process number, bit for bit."""
        mine = []
        for i in range(iters):
            batch = draw()
            if i % self.size == self.rank:
                mine.append((i, float(loss(batch))))
        losses = [v for _, v in sorted(p for part in self._gather_checking_interrupts(mine) for p in part)]
        return float(np.mean(losses))

    # ---- agreement

    def catch_interrupts(self) -> None:
        """With several ranks, Ctrl-C (SIGINT) and SIGTERM only raise a flag: a rank that stopped at once would
        leave the others waiting in a collective. The ranks compare flags at their next exchange (each
        step's loss, each evaluation) and all raise KeyboardInterrupt there, at the same point."""
        if self.size == 1:
            return
        import signal

        def note(signum, frame):
            self.interrupted = True
        signal.signal(signal.SIGINT, note)
        signal.signal(signal.SIGTERM, note)

    interrupted = False

    def _gather_checking_interrupts(self, value) -> list:
        every = self.comm.allgather((value, self.interrupted))
        if any(flag for _, flag in every):
            raise KeyboardInterrupt
        return [v for v, _ in every]

    @staticmethod
    def check_digests(what: dict[str, object]) -> dict[str, str]:
        """Short digests of what every rank must share ({"settings": ..., "train data": ...})."""
        return {k: hashlib.blake2b(json.dumps(v, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()
                for k, v in what.items()}

    def compare_digests(self, every: list[dict[str, str] | None]) -> None:
        """ValueError when the ranks were started with different settings or data (`every`: each rank's
        `check_digests`, in rank order; None for a rank that stopped before training)."""
        for r, theirs in enumerate(every):
            if theirs is None:
                raise ValueError(f"rank {r} stopped before training while rank 0 did not")
            for k in every[0]:
                if theirs.get(k) != every[0][k]:
                    raise ValueError(f"rank {r} was started with other {k} than rank 0; start every rank with the "
                                     f"same flags and the same data (mpiexec -n {self.size} python -m reference "
                                     "train ...)")

    def agree(self, error: str | None) -> str | None:
        """Rank 0's outcome of something only it did (writing a checkpoint), told to every rank."""
        return self.comm.bcast(error, root=0) if self.size > 1 else error

    # ---- checkpoints

    def full_optimizer_state(self, optimizer) -> None:
        """ZeRO-1 before a checkpoint: the moment slices gathered into `optimizer.state` on rank 0 (the
        one-process layout, so any run resumes on any N); a collective, every rank calls it."""
        if self.zero is not None:
            self.zero.gather_into(optimizer, self.comm, self.chunks)

    def release_optimizer_state(self, optimizer) -> None:
        """ZeRO-1 after a checkpoint, or after resuming: the full state dropped, only the slice kept."""
        if self.zero is not None:
            optimizer.state = {}

    def adopt_optimizer_state(self, optimizer) -> None:
        """ZeRO-1 after resuming: this rank's slice of the full state restore_optimizer put in `optimizer`."""
        if self.zero is not None:
            self.zero.take_slice(optimizer)
            optimizer.state = {}


def data_digest(data: np.ndarray) -> str:
    """A short digest of a token array, to check that every rank reads the same data."""
    return hashlib.blake2b(np.ascontiguousarray(data).tobytes(), digest_size=16).hexdigest()
