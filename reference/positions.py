"""Positions: rotary embeddings (RoPE), ALiBi's slopes, and the fixed sinusoidal table.

- `Rotary`: rotate each query and key by an angle that grows with its position (Su et al. 2021);
  derived in docs/rope.md.
- `alibi_slopes`: the per-head slopes of ALiBi's linear distance penalty (Press et al. 2022);
  derived in docs/alibi.md. The penalty itself is added to the scores in reference/attention.py.
- `sinusoidal_positions`: the fixed table of "Attention Is All You Need" (Vaswani et al. 2017, sec. 3.5),

    PE(pos, 2i)     = sin(pos / 10000^(2i / C))
    PE(pos, 2i + 1) = cos(pos / 10000^(2i / C))

The table is added to the token embeddings (`GPTConfig(pos="sinusoidal")`). It has no parameters, so
its backward is the identity on the embeddings' gradient: nothing is learned and nothing is stored.
Derived in docs/sinusoidal.md.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Rotary", "alibi_slopes", "sinusoidal_positions"]


def alibi_slopes(n_head: int) -> list[float]:
    """Per-head ALiBi slopes (Press et al. 2022): 2^(-8i/n) for i = 1..n when n is a power of two;
    otherwise those of the nearest lower power of two m, then every other slope of 2m.
    Derived in docs/alibi.md."""
    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
    m = 2 ** math.floor(math.log2(n_head))
    return geometric(m) + geometric(2 * m)[0::2][: n_head - m]


class Rotary:
    """Rotary position embedding tables and rotation (rotate-half convention, as GPT-NeoX/LLaMA).

    Channel i pairs with channel i + hd/2 and both turn by the angle t * base^(-2i/hd).
    The cos/sin tables are computed in float64 and stored in the model's dtype, up to the furthest
    position used so far (growing by doubling, at most max_len): building a model allocates
    nothing sized by its block_size, so a checkpoint header cannot make it. Derived in docs/rope.md.
    """

    def __init__(self, head_dim: int, max_len: int, base: float, dtype):
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
        self.max_len, self.dtype = max_len, np.dtype(dtype)
        self.inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)   # (hd/2,)
        self.cos = self.sin = np.empty((0, head_dim), self.dtype)                     # (n, hd), grown by tables()

    def tables(self, start: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin for positions start .. start + t - 1, each (t, hd)."""
        end = start + t
        if end > self.max_len:
            raise ValueError(f"position {end - 1} is beyond the RoPE tables' {self.max_len} positions "
                             f"(0..{self.max_len - 1})")
        if end > len(self.cos):
            n = min(self.max_len, max(end, 2 * len(self.cos)))
            angles = np.outer(np.arange(n, dtype=np.float64), self.inv_freq)           # (n, hd/2)
            angles = np.concatenate([angles, angles], axis=-1)                          # (n, hd)
            self.cos, self.sin = np.cos(angles).astype(self.dtype), np.sin(angles).astype(self.dtype)
        return self.cos[start:end], self.sin[start:end]

    @staticmethod
    def _rotate_half(x: np.ndarray) -> np.ndarray:             # (x1, x2) -> (-x2, x1)
        h = x.shape[-1] // 2
        return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)

    @staticmethod
    def _rotate_half_t(x: np.ndarray) -> np.ndarray:           # the transpose: (y1, y2) -> (y2, -y1)
        h = x.shape[-1] // 2
        return np.concatenate([x[..., h:], -x[..., :h]], axis=-1)

    def apply(self, x: np.ndarray, start: int) -> np.ndarray:   # x (..., T, hd)
        cos, sin = self.tables(start, x.shape[-2])
        return x * cos + self._rotate_half(x) * sin

    def backward(self, dy: np.ndarray, start: int) -> np.ndarray:
        cos, sin = self.tables(start, dy.shape[-2])
        return dy * cos + self._rotate_half_t(dy * sin)


def sinusoidal_positions(start: int, T: int, C: int, dtype) -> np.ndarray:
    """The encodings of positions start, ..., start + T - 1: a (T, C) array of `dtype`.

    Column j uses the pair index i = j // 2: sine in even columns, cosine in odd ones (the paper's
    interleaving; an odd C ends on a sine). Computed in float64, then cast, so a float32 model adds
    the correctly rounded table. Derived in docs/sinusoidal.md.
    """
    pos = np.arange(start, start + T, dtype=np.float64)[:, None]    # (T, 1)
    i = np.arange(C) // 2                                            # (C,) the pair each column belongs to
    angle = pos / 10000.0 ** (2 * i / C)                             # (T, C)
    pe = np.where(np.arange(C) % 2 == 0, np.sin(angle), np.cos(angle))
    return pe.astype(dtype)
