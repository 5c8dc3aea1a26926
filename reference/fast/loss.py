"""The fast path's cross-entropy: reference/loss.py::CrossEntropyLoss with one (N, V) array instead of three.

The textbook forward makes the shifted logits, their exponentials and the softmax as three new (N, V)
arrays, all alive at once beside the logits: at GPT-2's vocabulary (V = 50257) and 4 x 1024 tokens,
3 x 823 MB in float32, the largest arrays of a step (docs/checkpointing.md). This version writes all
three into one array from recycled memory, in place, block by block over the rows on the pool; each
row is computed with the same operations as the textbook's, so the loss and the softmax (the
backward's gradient) are the same bit for bit.
"""

from __future__ import annotations

import numpy as np

from .. import loss
from .pool import empty, for_blocks


class CrossEntropyLoss(loss.CrossEntropyLoss):
    """Mean cross-entropy, the softmax computed in place. Textbook: reference/loss.py::CrossEntropyLoss,
    derived in docs/cross_entropy.md; the same checks, errors, cache and backward."""

    def forward(self, logits: np.ndarray, targets: np.ndarray):
        z, y, valid = self.rows(logits, targets)               # (N, V), (N,), (N,): the textbook's checks
        rows = np.nonzero(valid)[0]
        n = rows.size
        probs = empty(z.shape, z.dtype)                        # shifted, then exp, then softmax: one array
        sum_e = np.empty((z.shape[0], 1), z.dtype)
        picked = np.zeros(z.shape[0], z.dtype)                 # the shifted logit of each row's target

        def block(lo: int, hi: int) -> None:
            p, r = probs[lo:hi], rows[np.searchsorted(rows, lo):np.searchsorted(rows, hi)]
            np.subtract(z[lo:hi], z[lo:hi].max(-1, keepdims=True), out=p)   # largest logit becomes 0
            picked[r] = p[r - lo, y[r]]
            np.exp(p, out=p)
            np.sum(p, axis=-1, keepdims=True, out=sum_e[lo:hi])
            p /= sum_e[lo:hi]                                  # softmax, kept for the backward
        for_blocks(block, z.shape[0], z.shape[1])
        logprob = picked[rows] - np.log(sum_e[rows, 0])
        loss_value = -logprob.sum() / n if n else np.array(np.nan, dtype=z.dtype)
        return z.dtype.type(loss_value), [probs, y, valid, rows, logits.shape]
