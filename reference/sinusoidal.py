"""Sinusoidal position encodings: the fixed table of "Attention Is All You Need" (Vaswani et al. 2017, sec. 3.5).

    PE(pos, 2i)     = sin(pos / 10000^(2i / C))
    PE(pos, 2i + 1) = cos(pos / 10000^(2i / C))

The table is added to the token embeddings (`GPTConfig(pos="sinusoidal")`). It has no parameters, so
its backward is the identity on the embeddings' gradient: nothing is learned and nothing is stored.
Derived in docs/sinusoidal.md.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sinusoidal_positions"]


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
