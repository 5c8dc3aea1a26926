"""The fast path's LoRA layer: reference/lora.py::LoRALinear (derived in docs/lora.md) with the input
gradient through the frozen weight, dy W, split over the pool by rows as the fast Linear's is. The base
Linear is itself on the fast path (use_kernels swaps it), so its forward runs on the pool too; the
adapter's products are (N, in) x (in, r) and (N, r) x (r, out), small next to it."""

from __future__ import annotations

import numpy as np

from .. import lora
from .pool import empty, for_products


class LoRALinear(lora.LoRALinear):
    """y = base_layer(x) + (alpha / r) dropout(x) A^T B^T with dy W on the pool. Textbook:
    reference/lora.py::LoRALinear, derived in docs/lora.md."""

    def input_grad(self, dy2: np.ndarray) -> np.ndarray:
        w = self.base_layer.weight.data                        # (out, in)
        dx = empty((dy2.shape[0], w.shape[1]), dy2.dtype)      # (N, in)

        def rows(lo: int, hi: int) -> None:
            np.matmul(dy2[lo:hi], w, out=dx[lo:hi])
        for_products(rows, dy2.shape[0])
        return dx
