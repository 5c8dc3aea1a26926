"""ZeRO-1 (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models",
stage 1; torch.distributed.optim.ZeroRedundancyOptimizer): the optimizer state split over the ranks.

`FlatParams` sees the trained parameters as one vector, in the trainer's order; data parallel
(reference/programs/distributed.py) sums gradients over it, and with `zero_stage` 1 rank r owns the slice
`shard_bounds(P, N)[r]` of it. `ZeroAdamW` is AdamW on that slice alone: m and v for 1/N of the
parameters, the update reference.optim.AdamW's, operation for operation (docs/data-parallel.md, "ZeRO-1").
"""

from __future__ import annotations

import numpy as np

from ..optim import adam_update

__all__ = ["FlatParams", "ZeroAdamW"]


class FlatParams:
    """The model's parameters seen as one vector, in `params` order: copy gradients and values in and out."""

    def __init__(self, params):
        self.params = list(params)
        self.dtype = self.params[0].data.dtype
        self.bounds, a = [], 0
        for p in self.params:
            self.bounds.append((a, a + p.data.size))
            a += p.data.size
        self.size = a

    def grads(self) -> np.ndarray:
        return np.concatenate([p.grad.ravel() for p in self.params])

    def set_grads(self, flat: np.ndarray) -> None:
        for p, (a, b) in zip(self.params, self.bounds):
            p.grad[...] = flat[a:b].reshape(p.grad.shape)

    def values(self) -> np.ndarray:
        return np.concatenate([p.data.ravel() for p in self.params])

    def set_values(self, flat: np.ndarray) -> None:
        for p, (a, b) in zip(self.params, self.bounds):
            p.data[...] = flat[a:b].reshape(p.data.shape)


class ZeroAdamW:
    """AdamW (reference.optim.AdamW's update, operation for operation) on one contiguous slice [lo, hi) of the
    flattened parameters: m and v for that slice only, so each rank holds 1/N of the optimizer state. The
    per-element weight-decay factor comes from the parameter's group; lr, betas and eps are the groups'
    (equal in every group the trainer builds)."""

    def __init__(self, optimizer, flat: FlatParams, bounds: tuple[int, int]):
        from ..optim import AdamW
        if not isinstance(optimizer, AdamW):
            raise ValueError(f"zero_stage 1 splits AdamW's moments; the optimizer is {type(optimizer).__name__}")
        self.optimizer, self.flat = optimizer, flat
        self.lo, self.hi = bounds
        n = self.hi - self.lo
        self.exp_avg = np.zeros(n, flat.dtype)
        self.exp_avg_sq = np.zeros(n, flat.dtype)
        self.t = 0
        self.grad = np.zeros(n, flat.dtype)
        self.group_of = np.empty(flat.size, np.int64)               # which param group each element is in
        index = {id(p): i for i, p in enumerate(flat.params)}
        for gi, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                a, b = flat.bounds[index[id(p)]]
                self.group_of[a:b] = gi
        self.group_of = self.group_of[self.lo:self.hi]

    def nbytes(self) -> int:
        return self.exp_avg.nbytes + self.exp_avg_sq.nbytes

    def step(self, p: np.ndarray) -> None:
        """One AdamW step of the slice `p` (a view, updated in place) with gradient self.grad."""
        self.t += 1
        t = self.t
        g, m, v = self.grad, self.exp_avg, self.exp_avg_sq
        groups = self.optimizer.param_groups
        lr, (b1, b2), eps = groups[0]["lr"], groups[0]["betas"], groups[0]["eps"]
        for gi, group in enumerate(groups):
            if group["lr"] != lr or tuple(group["betas"]) != (b1, b2) or group["eps"] != eps:
                raise ValueError("zero_stage 1 needs the same lr, betas and eps in every param group")
            wd = group["weight_decay"]
            if wd != 0:
                sel = self.group_of == gi
                p[sel] *= 1.0 - lr * wd                          # AdamW: decay the weights, apart from g
        adam_update(p, g, m, v, lr, b1, b2, eps, t)              # AdamW on this rank's slice, operation for operation

    def gather_into(self, optimizer, comm, chunks) -> None:
        counts = [b - a for a, b in chunks]
        m = comm.gather_array(self.exp_avg, counts)
        v = comm.gather_array(self.exp_avg_sq, counts)
        if comm.rank != 0 or self.t == 0:
            return
        for p, (a, b) in zip(self.flat.params, self.flat.bounds):
            optimizer.state[id(p)] = {"step": self.t, "exp_avg": m[a:b].reshape(p.data.shape).copy(),
                                      "exp_avg_sq": v[a:b].reshape(p.data.shape).copy()}

    def take_slice(self, optimizer) -> None:
        states = [optimizer.state.get(id(p)) for p in self.flat.params]
        if all(s is None for s in states):
            return
        steps = {int(s["step"]) for s in states if s is not None}
        if None in states or len(steps) != 1:
            raise ValueError("zero_stage 1 resumes only a run whose every parameter took the same number of "
                             f"steps; this checkpoint holds steps {sorted(steps)}")
        self.t = steps.pop()
        self.exp_avg[:] = np.concatenate([s["exp_avg"].ravel() for s in states])[self.lo:self.hi]
        self.exp_avg_sq[:] = np.concatenate([s["exp_avg_sq"].ravel() for s in states])[self.lo:self.hi]
