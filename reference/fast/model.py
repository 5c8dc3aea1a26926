"""The fast path's transformer block: reference/model.py::Block with the residual sums taken in place."""

from __future__ import annotations

import numpy as np

from .. import model
from ..attention import LayerKV
from ..layers import MaskSource


class Block(model.Block):
    """x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)). Textbook: reference/model.py::Block, derived in
    docs/block.md; this version: docs/performance.md."""

    # The residual sums are taken in place, in the sublayer's output (a new array of this call's
    # own) rather than in another new (B, T, C) array; the same in the backward.
    def forward(self, x: np.ndarray, masks: MaskSource | None = None, kv_cache: LayerKV | None = None):
        h, c1 = self.ln_1.forward(x)
        a, c2 = self.attn.forward(h, masks, kv_cache)
        a += x
        x = a                                                  # residual 1: x + attn(ln_1(x))
        h, c3 = self.ln_2.forward(x)
        m, c4 = self.mlp.forward(h, masks)
        m += x
        return m, (c1, c2, c3, c4)                             # residual 2: x + mlp(ln_2(x))

    def backward(self, dout: np.ndarray, cache) -> np.ndarray:
        c1, c2, c3, c4 = cache
        dx = self.ln_2.backward(self.mlp.backward(dout, c4), c3)
        dx += dout                                             # the residual passes dout through
        dx_in = self.ln_1.backward(self.attn.backward(dx, c2), c1)
        dx_in += dx
        return dx_in
