"""The small layers: embedding, linear, norms, activations, MLPs and dropout. The textbook path.

Each layer: `forward(x) -> (y, cache)`, `backward(dy, cache) -> dx`, parameter gradients
accumulated into `Parameter.grad` with `+=`. A frozen parameter (grad None, reference/lora.py's
`freeze`) gets none: its layer's backward skips that gradient's work and still returns dx. Shapes use B batch, T time, C channels (n_embd),
N = B * T rows. Each forward and backward is written as its page derives it: docs/<layer>.md,
named in each docstring. The fast path (reference/fast/layers.py) subclasses these classes and
rewrites only forward and backward for speed; docs/performance.md compares the two.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .functional import gelu, gelu_grad
from .module import Module, Parameter, as_dtype


def normal_init(rng: np.random.Generator | None, shape: tuple[int, ...], std: float, dtype) -> np.ndarray:
    """N(0, std^2) drawn in float64 then cast, so float32 and float64 models start from the same numbers.
    With rng None nothing is drawn: zeros (calloc'ed, resident only once written), for weights that are
    about to be loaded (reference/programs/hf.py)."""
    if rng is None:
        return np.zeros(shape, dtype)
    return (rng.standard_normal(shape) * std).astype(dtype)


def _flat2d(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1])


class Embedding(Module):
    """y = weight[idx]: a lookup table of `num_embeddings` rows. Derived in docs/embedding.md.

    idx: integer ids, any shape (...); they must be 0 <= id < num_embeddings, which GPT.forward checks
    at the model's boundary (reference.model.check_token_ids). The layer does not check them again: NumPy
    would wrap a negative id to a row from the end, and raise IndexError for one too large."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, rng: np.random.Generator, dtype="float64", std: float = 0.02):
        self.weight = Parameter(normal_init(rng, (num_embeddings, embedding_dim), std, as_dtype(dtype)))

    def forward(self, idx: np.ndarray):                        # idx (...) int, 0 <= id < num_embeddings
        y = self.weight.data[idx]                              # (..., C)
        return y, idx

    def backward(self, dy: np.ndarray, idx: np.ndarray) -> None:
        # A row used several times receives the sum of its gradients: np.add.at adds every
        # (id, row of dy) pair, repeated ids included (plain fancy-index += would keep only one).
        if self.weight.grad is not None:                       # None: frozen, nothing to add
            np.add.at(self.weight.grad, idx.reshape(-1), _flat2d(dy))   # (V, C) += (N, C) by id
        return None                                            # integer input: no gradient


class Linear(Module):
    """y = x @ weight.T + bias, with torch's layout: weight (out, in). Derived in docs/linear.md."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, rng: np.random.Generator,
                 dtype="float64", std: float = 0.02):
        dtype = as_dtype(dtype)
        self.weight = Parameter(normal_init(rng, (out_features, in_features), std, dtype))
        self.bias = Parameter(np.zeros(out_features, dtype)) if bias else None

    # The rows are flattened first: (..., in) -> (N, in). The formulas are the same, and NumPy runs
    # a 3-d @ 2-d product as one small product per leading index (up to 15x slower than one).
    def forward(self, x: np.ndarray):                          # x (..., in)
        x2 = _flat2d(x)                                        # (N, in)
        y = x2 @ self.weight.data.T                            # (N, out)
        if self.bias is not None:
            y += self.bias.data
        return y.reshape(*x.shape[:-1], -1), x                 # (..., out)

    def backward(self, dy: np.ndarray, x: np.ndarray) -> np.ndarray:
        """dL/dx; adds dL/dweight and dL/dbias to the grads (a frozen one's product is skipped)."""
        dy2, x2 = _flat2d(dy), _flat2d(x)                      # (N, out), (N, in)
        if self.weight.grad is not None:                       # None: frozen, no (out, in) product
            self.weight.grad += dy2.T @ x2                     # (out, in)
        if self.bias is not None and self.bias.grad is not None:
            self.bias.grad += dy2.sum(0)                       # (out,)
        return (dy2 @ self.weight.data).reshape(x.shape)       # (..., in)


class LayerNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis. Derived in docs/layernorm.md."""

    def __init__(self, dim: int, *, eps: float = 1e-5, bias: bool = True, dtype="float64"):
        dtype = as_dtype(dtype)
        self.eps = float(eps)
        self.weight = Parameter(np.ones(dim, dtype))
        self.bias = Parameter(np.zeros(dim, dtype)) if bias else None

    def forward(self, x: np.ndarray):                          # x (..., C)
        mean = x.mean(-1, keepdims=True)                       # (..., 1)
        xc = x - mean
        rstd = 1.0 / np.sqrt((xc * xc).mean(-1, keepdims=True) + self.eps)   # (..., 1), biased variance
        xhat = xc * rstd                                       # (..., C)
        y = xhat * self.weight.data
        if self.bias is not None:
            y = y + self.bias.data
        return y, (xhat, rstd)

    def backward(self, dy: np.ndarray, cache) -> np.ndarray:
        xhat, rstd = cache                                     # (..., C), (..., 1)
        if self.weight.grad is not None:                       # None: frozen, skipped
            self.weight.grad += (_flat2d(dy) * _flat2d(xhat)).sum(0)
        if self.bias is not None and self.bias.grad is not None:
            self.bias.grad += _flat2d(dy).sum(0)
        g = dy * self.weight.data                              # dL/dxhat
        return rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))


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
        if self.weight.grad is not None:                       # None: frozen, skipped
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
        Attention draws its mask with this and applies it to its probabilities itself."""
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

    def forward(self, x: np.ndarray, masks: MaskSource | None = None):
        h, c1 = self.c_fc.forward(x)                           # (B, T, 4C)
        a, c2 = self.gelu.forward(h)                           # (B, T, 4C)
        y, c3 = self.c_proj.forward(a)                         # (B, T, C)
        y, c4 = self.dropout.forward(y, masks)
        return y, (c1, c2, c3, c4)

    def backward(self, dy: np.ndarray, cache) -> np.ndarray:
        c1, c2, c3, c4 = cache
        dy = self.dropout.backward(dy, c4)
        da = self.c_proj.backward(dy, c3)                      # (B, T, 4C)
        dh = self.gelu.backward(da, c2)                        # (B, T, 4C)
        return self.c_fc.backward(dh, c1)                      # (B, T, C)


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
