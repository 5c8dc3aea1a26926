"""Cross-entropy from logits, mean over the positions whose target is not `ignore_index`.

loss = mean_i [ logsumexp(z_i) - z_i[y_i] ]; dL/dz_i = (softmax(z_i) - onehot(y_i)) / N.
Stable for any logit size: the row max is subtracted before exp. Derived in docs/cross_entropy.md.
"""

from __future__ import annotations

import numpy as np

from .module import Module


class CrossEntropyLoss(Module):
    """Mean cross-entropy of logits (..., V) against integer targets (...), like F.cross_entropy.
    Derived in docs/cross_entropy.md."""

    def __init__(self, ignore_index: int = -100):
        self.ignore_index = ignore_index

    def rows(self, logits: np.ndarray, targets: np.ndarray):
        """logits (..., V) and targets (...) as rows: z (N, V), y (N,) and `valid` (N,), False where the
        target is ignore_index. TypeError for non-integer targets, ValueError for shapes that differ,
        IndexError for a target outside 0 <= target < V (GPT.loss checks its targets before the forward;
        the layer checks too, as F.cross_entropy does, because it is used on its own and NumPy's indexing
        would turn a negative target into a wrong loss)."""
        V = logits.shape[-1]
        z = logits.reshape(-1, V)                              # (N, V)
        y = np.asarray(targets).reshape(-1)                    # (N,)
        if not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"targets must be integers, got dtype {y.dtype}")
        if y.shape[0] != z.shape[0]:
            raise ValueError(f"targets shape {np.shape(targets)} does not match logits shape {logits.shape[:-1]}")
        valid = y != self.ignore_index
        bad = valid & ((y < 0) | (y >= V))
        if bad.any():
            raise IndexError(f"target {y[bad][0]} is out of range for {V} classes (expected 0 <= target < {V}"
                             f" or ignore_index {self.ignore_index})")
        return z, y, valid

    def forward(self, logits: np.ndarray, targets: np.ndarray):
        z, y, valid = self.rows(logits, targets)               # (N, V), (N,), (N,)
        shifted = z - z.max(-1, keepdims=True)                 # largest logit becomes 0: exp cannot overflow
        e = np.exp(shifted)
        sum_e = e.sum(-1, keepdims=True)
        rows = np.nonzero(valid)[0]
        n = rows.size                                          # 0 valid targets: nan, as torch
        logprob = shifted[rows, y[rows]] - np.log(sum_e[rows, 0])
        loss = -logprob.sum() / n if n else np.array(np.nan, dtype=z.dtype)
        probs = e / sum_e                                      # softmax, kept for the backward
        return z.dtype.type(loss), [probs, y, valid, rows, logits.shape]

    def backward(self, dloss, cache) -> np.ndarray:
        probs, y, valid, rows, shape = cache
        if probs is None:
            raise RuntimeError("this cross-entropy cache was already used by a backward; run forward again")
        cache[0] = None                                        # the softmax buffer becomes the gradient, in place:
        dz = probs                                             # a cache serves one backward
        dz[rows, y[rows]] -= 1.0
        dz *= np.asarray(dloss, dz.dtype) / max(rows.size, 1)
        dz[~valid] = 0.0                                       # ignored positions get no gradient
        return dz.reshape(shape)
