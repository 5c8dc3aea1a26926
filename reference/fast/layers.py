"""The fast path's layers: the same classes as reference/layers.py (each subclasses its textbook
twin: same __init__, parameters, state_dict and cache contract), with forward and backward rewritten
for speed. What each change buys, and what proves it equal to the textbook: docs/performance.md.

- Embedding: the lookup writes into recycled memory; the backward sorts the ids once and adds each
  run of equal ids with one reduceat, instead of np.add.at's element-by-element loop.
- Linear: 2-d products into recycled memory, split over the pool by rows (for_products).
- LayerNorm: both passes block by block on the pool, in place, the row sums as einsum/matvec.
- GELU and the MLP: GELU and its derivative in one blocked pass (they share the erf and exp); the
  MLP caches GELU'(h) instead of h, so its backward is one multiplication, on the pool, with c_fc's
  bias gradient summed block by block while each block is in cache.
"""

from __future__ import annotations

import numpy as np

from .. import layers
from ..layers import MaskSource, _flat2d
from .functional import gelu, gelu_and_grad, gelu_grad
from .pool import column_sums, empty, for_blocks, for_products


class Embedding(layers.Embedding):
    """y = weight[idx], with a sort-and-reduceat backward. Textbook: reference/layers.py::Embedding,
    derived in docs/embedding.md; this version: docs/performance.md."""

    def forward(self, idx: np.ndarray):                        # idx (...) int, 0 <= id < num_embeddings
        w = self.weight.data
        return np.take(w, idx, axis=0, out=empty((*np.shape(idx), w.shape[1]), w.dtype)), idx   # (..., C)

    def backward(self, dy: np.ndarray, idx: np.ndarray) -> None:
        # Rows used several times receive the sum of their gradients. np.add.at does that, but
        # element by element (5x slower); instead sort the ids (stably, so each row's sum runs in
        # the same order as add.at's) and add each run of equal ids with one reduceat.
        if self.weight.grad is None:                           # frozen: nothing to add
            return None
        ids = idx.reshape(-1)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])   # first of each run
        self.weight.grad[sorted_ids[starts]] += np.add.reduceat(_flat2d(dy)[order], starts, axis=0)
        return None                                            # integer input: no gradient


class Linear(layers.Linear):
    """y = x @ weight.T + bias, products on the pool. Textbook: reference/layers.py::Linear, derived in
    docs/linear.md; this version: docs/performance.md."""

    # All products are 2-d: (..., in) is flattened to (N, in) first. NumPy runs a 3-d @ 2-d product
    # as one small GEMM per leading index, which is several times slower than one (N, in) GEMM.
    # The transposed weight is a view: BLAS reads it transposed, nothing is copied. Outputs go into
    # recycled memory (pool.Recycler): a GEMM writing fresh pages runs at half speed. With the
    # products on the pool (pool.for_products) each thread computes a block of rows (of the
    # output, the input gradient, the weight gradient), and adds the bias to its rows.
    def forward(self, x: np.ndarray):                          # x (..., in)
        x2, w = _flat2d(x), self.weight.data
        y = empty((x2.shape[0], w.shape[0]), x.dtype)          # (N, out)

        def rows(lo: int, hi: int) -> None:                    # rows lo:hi of the output
            np.matmul(x2[lo:hi], w.T, out=y[lo:hi])
            if self.bias is not None:
                y[lo:hi] += self.bias.data
        for_products(rows, x2.shape[0])
        return y.reshape(*x.shape[:-1], -1), x                 # (..., out)

    def backward(self, dy: np.ndarray, x: np.ndarray, dbias: np.ndarray | None = None) -> np.ndarray:
        """dL/dx; adds dL/dweight and dL/dbias to the grads, skipping a frozen one's (grad None). `dbias`
        (optional): dy's column sums, when the caller has already taken them (the fast MLP does, while
        dy's blocks are in cache)."""
        dy2, x2, w = _flat2d(dy), _flat2d(x), self.weight.data  # (N, out), (N, in), (out, in)
        dx = empty(x2.shape, dy.dtype)

        def weight_rows(lo: int, hi: int) -> None:             # rows lo:hi of the weight (output features)
            self.weight.grad[lo:hi] += dy2[:, lo:hi].T @ x2

        def input_rows(lo: int, hi: int) -> None:
            np.matmul(dy2[lo:hi], w, out=dx[lo:hi])
        if self.weight.grad is not None:                       # None: frozen, no (out, in) product
            for_products(weight_rows, w.shape[0])
        for_products(input_rows, dy2.shape[0])
        if self.bias is not None and self.bias.grad is not None:
            self.bias.grad += column_sums(dy2) if dbias is None else dbias
        return dx.reshape(x.shape)                             # (..., in)


class LayerNorm(layers.LayerNorm):
    """LayerNorm block by block on the pool, in place. Textbook: reference/layers.py::LayerNorm, derived
    in docs/layernorm.md; this version: docs/performance.md."""

    # Both passes run block by block over the rows (pool.for_blocks: cache-sized blocks, several
    # threads), with every intermediate written in place into the outputs. The backward's two row
    # means of g = dy * weight are matrix-vector products with the weight
    # (mean(dy * w) = dy . w / C), so no (..., C) temporary is made for them.
    def forward(self, x: np.ndarray):                          # x (..., C)
        C = x.shape[-1]
        x2 = x.reshape(-1, C)                                  # (N, C)
        xhat, y = empty(x2.shape, x.dtype), empty(x2.shape, x.dtype)
        rstd = np.empty((x2.shape[0], 1), x.dtype)             # (N, 1)
        w, b = self.weight.data, (self.bias.data if self.bias is not None else None)

        def block(lo: int, hi: int) -> None:
            xh, r = xhat[lo:hi], rstd[lo:hi]
            mean = np.einsum("ij->i", x2[lo:hi])[:, None] / C    # einsum: faster than mean(-1) on short rows
            np.subtract(x2[lo:hi], mean, out=xh)                # x - mean
            np.einsum("ij,ij->i", xh, xh, out=r[:, 0])         # sum of squares, then in place:
            r /= C                                             # biased variance, as torch
            r += self.eps
            np.sqrt(r, out=r)
            np.divide(1.0, r, out=r)                           # rstd
            xh *= r                                            # xhat
            np.multiply(xh, w, out=y[lo:hi])
            if b is not None:
                y[lo:hi] += b
        for_blocks(block, x2.shape[0], C)
        lead = x.shape[:-1]
        return y.reshape(x.shape), (xhat.reshape(x.shape), rstd.reshape(*lead, 1))

    def backward(self, dy: np.ndarray, cache) -> np.ndarray:
        xhat, rstd = cache
        C = xhat.shape[-1]
        dy2, xh2, r2 = dy.reshape(-1, C), xhat.reshape(-1, C), rstd.reshape(-1, 1)   # (N, C), (N, 1)
        dx = empty(dy2.shape, dy.dtype)
        w = self.weight.data
        dw_wanted = self.weight.grad is not None                # a frozen weight or bias (grad None): skipped
        db_wanted = self.bias is not None and self.bias.grad is not None

        def block(lo: int, hi: int):
            d, xh, out = dy2[lo:hi], xh2[lo:hi], dx[lo:hi]
            dy_xhat = d * xh
            partial = (dy_xhat.sum(0) if dw_wanted else None,   # this block's share of dweight, dbias
                       d.sum(0) if db_wanted else None)
            mean_g = (d @ w)[:, None] / C                      # mean(g), g = dL/dxhat = dy * w
            mean_gx = (dy_xhat @ w)[:, None] / C               # mean(g * xhat)
            np.multiply(d, w, out=out)                         # g, then in place:
            out -= mean_g
            out -= np.multiply(xh, mean_gx, out=dy_xhat)       # reuse the buffer
            out *= r2[lo:hi]                                   # rstd (g - mean(g) - xhat mean(g xhat))
            return partial
        partials = for_blocks(block, dy2.shape[0], C)
        for dw, db in partials:                                # in block order: deterministic
            if dw_wanted:
                self.weight.grad += dw
            if db_wanted:
                self.bias.grad += db
        return dx.reshape(dy.shape)


class GELU(layers.GELU):
    """GELU with the fast path's blocked kernels. Textbook: reference/layers.py::GELU, derived in
    docs/gelu.md; this version: docs/performance.md."""

    def forward(self, x: np.ndarray):
        return gelu(x, self.approximate), x

    def backward(self, dy: np.ndarray, x: np.ndarray) -> np.ndarray:
        return dy * gelu_grad(x, self.approximate)


class MLP(layers.MLP):
    """The GELU MLP with GELU' computed in the forward. Textbook: reference/layers.py::MLP, derived in
    docs/mlp.md; this version: docs/performance.md."""

    # GELU's derivative is computed in the forward, together with GELU (they share the erf and
    # exp), and cached instead of GELU's input h: the backward is then one multiplication, with
    # the same memory (two (B, T, 4C) arrays: a for c_proj's weight gradient, and GELU'(h)).
    def forward(self, x: np.ndarray, masks: MaskSource | None = None):
        h, c1 = self.c_fc.forward(x)                           # (B, T, 4C)
        a, dgelu = gelu_and_grad(h, self.gelu.approximate)     # a = GELU(h), dgelu = GELU'(h)
        del h                                                  # not needed by the backward
        y, c3 = self.c_proj.forward(a)                         # (B, T, C)
        y, c4 = self.dropout.forward(y, masks)
        return y, (c1, dgelu, c3, c4)

    def backward(self, dy: np.ndarray, cache) -> np.ndarray:
        c1, dgelu, c3, c4 = cache
        dy = self.dropout.backward(dy, c4)
        da = self.c_proj.backward(dy, c3)                      # (B, T, 4C), ours: multiplied in place
        da2, dgelu2 = _flat2d(da), _flat2d(dgelu)

        def gelu_backward(lo: int, hi: int) -> None:           # dh = da * GELU'(h), in place, on the pool
            np.multiply(da2[lo:hi], dgelu2[lo:hi], out=da2[lo:hi])
        if self.c_fc.bias is None or self.c_fc.bias.grad is None:   # no bias, or a frozen one
            for_blocks(gelu_backward, *da2.shape)
            return self.c_fc.backward(da2, c1)
        # c_fc's bias gradient is dh's column sums: each block is summed right after it is computed,
        # while it is in cache, instead of in a second pass over dh inside c_fc.backward.
        return self.c_fc.backward(da2, c1, dbias=column_sums(da2, before=gelu_backward))
