"""The small layers: embedding, linear, norms, activations, MLPs and dropout.

Each layer: `forward(x) -> (y, cache)`, `backward(dy, cache) -> dx`, parameter gradients
accumulated into `Parameter.grad`. Shapes use B batch, T time, C channels (n_embd).
Derivations: docs/<layer>.md, named in each docstring.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .functional import column_sums, empty, for_blocks, for_products, gelu, gelu_and_grad, gelu_grad
from .module import Module, Parameter, as_dtype


def normal_init(rng: np.random.Generator, shape: tuple[int, ...], std: float, dtype) -> np.ndarray:
    """N(0, std^2) drawn in float64 then cast, so float32 and float64 models start from the same numbers."""
    return (rng.standard_normal(shape) * std).astype(dtype)


def _flat2d(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1])


class Embedding(Module):
    """y = weight[idx]: a lookup table of `num_embeddings` rows. Derived in docs/embedding.md."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, rng: np.random.Generator, dtype="float64", std: float = 0.02):
        self.weight = Parameter(normal_init(rng, (num_embeddings, embedding_dim), std, as_dtype(dtype)))

    def forward(self, idx: np.ndarray):                        # idx (...) int
        n = self.weight.data.shape[0]
        if not np.issubdtype(np.asarray(idx).dtype, np.integer):
            raise TypeError(f"embedding indices must be integers, got dtype {np.asarray(idx).dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            bad = idx[(idx < 0) | (idx >= n)].flat[0]
            raise IndexError(f"index {bad} is out of range for an embedding of {n} rows (expected 0 <= id < {n})")
        w = self.weight.data
        return np.take(w, idx, axis=0, out=empty((*np.shape(idx), w.shape[1]), w.dtype)), idx   # (..., C)

    def backward(self, dy: np.ndarray, idx: np.ndarray) -> None:
        # Rows used several times receive the sum of their gradients. np.add.at does that, but
        # element by element (5x slower); instead sort the ids (stably, so each row's sum runs in
        # the same order as add.at's) and add each run of equal ids with one reduceat.
        ids = idx.reshape(-1)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])   # first of each run
        self.weight.grad[sorted_ids[starts]] += np.add.reduceat(_flat2d(dy)[order], starts, axis=0)
        return None                                            # integer input: no gradient


class Linear(Module):
    """y = x @ weight.T + bias, with torch's layout: weight (out, in). Derived in docs/linear.md."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, rng: np.random.Generator,
                 dtype="float64", std: float = 0.02):
        dtype = as_dtype(dtype)
        self.weight = Parameter(normal_init(rng, (out_features, in_features), std, dtype))
        self.bias = Parameter(np.zeros(out_features, dtype)) if bias else None

    # All products are 2-d: (..., in) is flattened to (N, in) first. NumPy runs a 3-d @ 2-d product
    # as one small GEMM per leading index, which is several times slower than one (N, in) GEMM.
    # The transposed weight is a view: BLAS reads it transposed, nothing is copied. Outputs go into
    # recycled memory (functional.Recycler): a GEMM writing fresh pages runs at half speed. With the
    # products on the pool (functional.for_products) each thread computes a block of rows (of the
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
        """dL/dx; adds dL/dweight and dL/dbias to the grads. `dbias` (optional): dy's column sums, when
        the caller has already taken them (the MLP does, while dy's blocks are in cache)."""
        dy2, x2, w = _flat2d(dy), _flat2d(x), self.weight.data  # (N, out), (N, in), (out, in)
        dx = empty(x2.shape, dy.dtype)

        def weight_rows(lo: int, hi: int) -> None:             # rows lo:hi of the weight (output features)
            self.weight.grad[lo:hi] += dy2[:, lo:hi].T @ x2

        def input_rows(lo: int, hi: int) -> None:
            np.matmul(dy2[lo:hi], w, out=dx[lo:hi])
        for_products(weight_rows, w.shape[0])
        for_products(input_rows, dy2.shape[0])
        if self.bias is not None:
            self.bias.grad += column_sums(dy2) if dbias is None else dbias
        return dx.reshape(x.shape)                             # (..., in)


class LayerNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis. Derived in docs/layernorm.md."""

    def __init__(self, dim: int, *, eps: float = 1e-5, bias: bool = True, dtype="float64"):
        dtype = as_dtype(dtype)
        self.eps = float(eps)
        self.weight = Parameter(np.ones(dim, dtype))
        self.bias = Parameter(np.zeros(dim, dtype)) if bias else None

    # Speed: both passes run block by block over the rows (functional.for_blocks: cache-sized blocks,
    # several threads), with every intermediate written in place into the outputs. The backward's
    # two row means of g = dy * weight are matrix-vector products with the weight
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

        def block(lo: int, hi: int):
            d, xh, out = dy2[lo:hi], xh2[lo:hi], dx[lo:hi]
            dy_xhat = d * xh
            partial = (dy_xhat.sum(0), d.sum(0))               # this block's share of dweight, dbias
            mean_g = (d @ w)[:, None] / C                      # mean(g), g = dL/dxhat = dy * w
            mean_gx = (dy_xhat @ w)[:, None] / C               # mean(g * xhat)
            np.multiply(d, w, out=out)                         # g, then in place:
            out -= mean_g
            out -= np.multiply(xh, mean_gx, out=dy_xhat)       # reuse the buffer
            out *= r2[lo:hi]                                   # rstd (g - mean(g) - xhat mean(g xhat))
            return partial
        partials = for_blocks(block, dy2.shape[0], C)
        for dw, db in partials:                                # in block order: deterministic
            self.weight.grad += dw
            if self.bias is not None:
                self.bias.grad += db
        return dx.reshape(dy.shape)


class RMSNorm(Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last axis. Derived in docs/rmsnorm.md."""

    def __init__(self, dim: int, *, eps: float = 1e-5, dtype="float64"):
        self.eps = float(eps)
        self.weight = Parameter(np.ones(dim, as_dtype(dtype)))

    def forward(self, x: np.ndarray):                          # x (..., C)
        rrms = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps)
        xhat = x * rrms
        return xhat * self.weight.data, (xhat, rrms)

    def backward(self, dy: np.ndarray, cache) -> np.ndarray:
        xhat, rrms = cache
        self.weight.grad += (_flat2d(dy) * _flat2d(xhat)).sum(0)
        g = dy * self.weight.data
        return rrms * (g - xhat * (g * xhat).mean(-1, keepdims=True))


class GELU(Module):
    """y = x * Phi(x) (approximate='none', erf) or its tanh approximation. Derived in docs/gelu.md."""

    def __init__(self, approximate: str = "none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: np.ndarray):
        return gelu(x, self.approximate), x

    def backward(self, dy: np.ndarray, x: np.ndarray) -> np.ndarray:
        return dy * gelu_grad(x, self.approximate)


# A source of dropout masks: called with (layer name, shape, p, dtype), returns the scaled keep-mask.
MaskSource = Callable[[str, tuple, float, np.dtype], np.ndarray]


class DropoutMasks:
    """Draws inverted-dropout masks from a seeded Generator and records them by layer name.

    The mask is keep / (1 - p), so y = x * mask keeps the expectation of x. Recording lets the
    PyTorch twin replay exactly the same masks (`oracle` reads `.drawn`); training passes
    `record=False` to keep no references. Draws are float32 uniforms whatever the model's dtype,
    so float32 and float64 runs with one seed drop the same units.
    """

    def __init__(self, rng: np.random.Generator, record: bool = False):
        self.rng = rng
        self.record = record
        self.drawn: dict[str, np.ndarray] = {}

    def __call__(self, name: str, shape: tuple, p: float, dtype) -> np.ndarray:
        keep = self.rng.random(shape, dtype=np.float32) >= p
        mask = keep.astype(dtype) * (1.0 / (1.0 - p))
        if self.record:
            if name in self.drawn:
                raise ValueError(f"dropout layer {name!r} drew twice in one forward; use a fresh DropoutMasks")
            self.drawn[name] = mask
        return mask


class Dropout(Module):
    """y = x * mask, mask from a MaskSource (identity when masks is None or p == 0). Derived in docs/dropout.md."""

    def __init__(self, p: float = 0.0, name: str = "dropout"):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.name = name                                       # set to the full module path by GPT

    def draw(self, shape: tuple, dtype, masks: MaskSource | None) -> np.ndarray | None:
        """The scaled keep-mask for an input of this shape, or None when dropout is off.
        Attention draws its mask with this and applies it block by block itself."""
        if masks is None or self.p == 0.0:
            return None
        return masks(self.name, shape, self.p, dtype)

    def forward(self, x: np.ndarray, masks: MaskSource | None = None):
        mask = self.draw(x.shape, x.dtype, masks)
        return (x, None) if mask is None else (x * mask, mask)

    def backward(self, dy: np.ndarray, mask) -> np.ndarray:
        return dy if mask is None else dy * mask


def name_dropouts(root: Module) -> None:
    """Name every Dropout by its module path (`transformer.h.0.attn.attn_dropout`): masks are keyed by it."""
    for name, module in root.named_modules():
        if isinstance(module, Dropout):
            module.name = name or "dropout"


class MLP(Module):
    """y = c_proj(GELU(c_fc(x))), hidden width 4C; then dropout. Derived in docs/mlp.md."""

    def __init__(self, n_embd: int, hidden: int, *, bias: bool, approximate: str, dropout: float,
                 rng: np.random.Generator, dtype, proj_std: float):
        self.c_fc = Linear(n_embd, hidden, bias=bias, rng=rng, dtype=dtype)
        self.gelu = GELU(approximate)
        self.c_proj = Linear(hidden, n_embd, bias=bias, rng=rng, dtype=dtype, std=proj_std)
        self.dropout = Dropout(dropout)

    # Speed: GELU's derivative is computed in the forward, together with GELU (they share the erf
    # and exp), and cached instead of GELU's input h: the backward is then one multiplication, with
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
        if self.c_fc.bias is None:
            for_blocks(gelu_backward, *da2.shape)
            return self.c_fc.backward(da2, c1)
        # c_fc's bias gradient is dh's column sums: each block is summed right after it is computed,
        # while it is in cache, instead of in a second pass over dh inside c_fc.backward.
        return self.c_fc.backward(da2, c1, dbias=column_sums(da2, before=gelu_backward))


class SwiGLU(Module):
    """y = c_proj(SiLU(c_fc(x)) * c_gate(x)); then dropout. Derived in docs/swiglu.md."""

    def __init__(self, n_embd: int, hidden: int, *, bias: bool, dropout: float,
                 rng: np.random.Generator, dtype, proj_std: float):
        self.c_fc = Linear(n_embd, hidden, bias=bias, rng=rng, dtype=dtype)
        self.c_gate = Linear(n_embd, hidden, bias=bias, rng=rng, dtype=dtype)
        self.c_proj = Linear(hidden, n_embd, bias=bias, rng=rng, dtype=dtype, std=proj_std)
        self.dropout = Dropout(dropout)

    def forward(self, x: np.ndarray, masks: MaskSource | None = None):
        a, c1 = self.c_fc.forward(x)                           # (B, T, F), F the hidden width
        b, c2 = self.c_gate.forward(x)                         # (B, T, F)
        e = np.exp(-np.abs(a))                                 # sigmoid(a) from exp(-|a|) <= 1: no overflow,
        sig = np.where(a >= 0, 1.0, e) / (1.0 + e)             # and accurate in both tails
        h = a * sig * b                                        # SiLU(a) * b
        y, c3 = self.c_proj.forward(h)
        y, c4 = self.dropout.forward(y, masks)
        return y, (c1, c2, c3, c4, a, sig, b)

    def backward(self, dy: np.ndarray, cache) -> np.ndarray:
        c1, c2, c3, c4, a, sig, b = cache
        dh = self.c_proj.backward(self.dropout.backward(dy, c4), c3)
        silu = a * sig
        db = dh * silu
        da = dh * b * sig * (1.0 + a * (1.0 - sig))            # d SiLU(a)/da = sig (1 + a (1 - sig))
        return self.c_fc.backward(da, c1) + self.c_gate.backward(db, c2)
