"""Causal self-attention with multi-, grouped- and multi-query heads, RoPE or ALiBi, and a KV cache.

The textbook path. Heads are kept as a 5-d array (B, n_kv_head, group, T, hd), where group =
n_head / n_kv_head is the number of query heads sharing one key/value head (query head
h = kv * group + j, as torch's `repeat_interleave` and SDPA's `enable_gqa` order them). Plain
multi-head attention is group 1. Keys and values carry a size-1 group axis and broadcast in the
batched matmuls, so there is no Python loop over batch or heads, and no copy of the shared keys.
Derived in docs/attention.md; the fast path's version is reference/fast/attention.py.
"""

from __future__ import annotations

import math

import numpy as np

from .functional import softmax, softmax_backward
from .layers import Dropout, Linear, MaskSource
from .module import Module
from .positions import Rotary, alibi_slopes


class LayerKV:
    """One layer's key/value cache: preallocated (B, n_kv_head, 1, max_len, hd) arrays and a fill length."""

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int, dtype):
        self.k = np.zeros((batch, n_kv_head, 1, max_len, head_dim), dtype)
        self.v = np.zeros_like(self.k)
        self.length = 0

    def append(self, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = k.shape[-2]
        end = self.length + t
        if end > self.k.shape[-2]:
            raise ValueError(f"KV cache overflow: {end} positions, capacity {self.k.shape[-2]}")
        self.k[..., self.length:end, :] = k
        self.v[..., self.length:end, :] = v
        self.length = end
        return self.k[..., :end, :], self.v[..., :end, :]


class CausalSelfAttention(Module):
    """softmax(q k^T / sqrt(hd) + causal mask [+ ALiBi]) v over heads, then c_proj and dropout.

    c_attn is one fused projection to [q (n_head*hd) | k (n_kv_head*hd) | v (n_kv_head*hd)].
    Derived in docs/attention.md.
    """

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int, *, bias: bool, dropout: float,
                 rng: np.random.Generator, dtype, proj_std: float, rotary: Rotary | None = None,
                 alibi: bool = False):
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        if n_kv_head < 1 or n_head % n_kv_head:
            raise ValueError(f"n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head})")
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, n_embd // n_head
        self.c_attn = Linear(n_embd, (n_head + 2 * n_kv_head) * self.head_dim, bias=bias, rng=rng, dtype=dtype)
        self.c_proj = Linear(n_embd, n_embd, bias=bias, rng=rng, dtype=dtype, std=proj_std)
        self.attn_dropout = Dropout(dropout)
        self.resid_dropout = Dropout(dropout)
        self.rotary = rotary
        self.slopes = np.array(alibi_slopes(n_head), dtype=dtype).reshape(n_kv_head, -1, 1, 1) if alibi else None

    def _bias(self, t: int, s: int, start: int, dtype) -> np.ndarray:
        """Additive score bias: -inf above the causal diagonal, plus ALiBi's -slope * distance."""
        qpos = np.arange(start, start + t)[:, None]            # (T, 1) absolute query positions
        kpos = np.arange(s)[None, :]                           # (1, S)
        bias = np.where(kpos <= qpos, 0.0, -np.inf).astype(dtype)   # (T, S)
        if self.slopes is not None:
            dist = (qpos - kpos).astype(dtype)                 # >= 0 where allowed
            bias = bias - self.slopes * dist                   # (n_kv_head, group, T, S)
        return bias

    def split_heads(self, qkv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, T, (H + 2 Hkv) hd) -> q (B, Hkv, g, T, hd), k and v (B, Hkv, 1, T, hd).
        Query head h = kv * g + j sits at [:, kv, j]: torch's repeat_interleave order."""
        B, T, _ = qkv.shape
        H, Hkv, hd = self.n_head, self.n_kv_head, self.head_dim
        heads = qkv.reshape(B, T, H + 2 * Hkv, hd)
        q = heads[:, :, :H].reshape(B, T, Hkv, H // Hkv, hd).transpose(0, 2, 3, 1, 4)
        k = heads[:, :, H:H + Hkv].reshape(B, T, Hkv, 1, hd).transpose(0, 2, 3, 1, 4)
        v = heads[:, :, H + Hkv:].reshape(B, T, Hkv, 1, hd).transpose(0, 2, 3, 1, 4)
        return q, k, v

    @staticmethod
    def merge_heads(*heads: np.ndarray) -> np.ndarray:
        """The inverse of split_heads (and of the head split of y): arrays (B, n, g, T, hd) side by side
        as (B, T, sum of n g hd)."""
        B, T = heads[0].shape[0], heads[0].shape[3]
        return np.concatenate([h.transpose(0, 3, 1, 2, 4).reshape(B, T, -1) for h in heads], axis=-1)

    def forward(self, x: np.ndarray, masks: MaskSource | None = None, kv_cache: LayerKV | None = None):
        B, T, C = x.shape
        H, Hkv, hd = self.n_head, self.n_kv_head, self.head_dim
        g = H // Hkv                                           # query heads per key/value head
        qkv, c_lin = self.c_attn.forward(x)                    # (B, T, (H + 2 Hkv) hd)
        q, k, v = self.split_heads(qkv)                        # (B, Hkv, g, T, hd), (B, Hkv, 1, T, hd) x 2
        start = kv_cache.length if kv_cache is not None else 0
        if self.rotary is not None:
            q, k = self.rotary.apply(q, start), self.rotary.apply(k, start)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)                       # (B, Hkv, 1, S, hd), S = start + T
        S = k.shape[-2]
        scores = q @ k.swapaxes(-1, -2) / math.sqrt(hd)        # (B, Hkv, g, T, S): k broadcasts over g
        scores = scores + self._bias(T, S, start, x.dtype)     # causal mask (-inf above the diagonal) [+ ALiBi]
        p = softmax(scores)                                    # (B, Hkv, g, T, S); masked entries are 0
        drop = self.attn_dropout.draw((B, H, T, S), x.dtype, masks)
        if drop is not None:
            drop = drop.reshape(B, Hkv, g, T, S)
        pd = p if drop is None else p * drop                   # attention dropout
        y = pd @ v                                             # (B, Hkv, g, T, hd)
        out, c_out = self.c_proj.forward(self.merge_heads(y))  # (B, T, C): heads side by side
        out, c_rd = self.resid_dropout.forward(out, masks)
        return out, (c_lin, q, k, v, p, pd, drop, c_out, c_rd, start)

    @staticmethod
    def attention_probs(cache) -> np.ndarray:
        """The attention probabilities of the forward that made `cache`: (B, n_head, T, S), S the keys seen
        (start + T with a KV cache), row t of head h the softmax over keys of query t (before dropout);
        masked entries are 0. Head h = kv * group + j, transformers' order (`output_attentions=True`)."""
        p = cache[4]                                           # (B, Hkv, g, T, S)
        B, Hkv, g, T, S = p.shape
        return p.reshape(B, Hkv * g, T, S)

    def backward(self, dout: np.ndarray, cache) -> np.ndarray:
        c_lin, q, k, v, p, pd, drop, c_out, c_rd, start = cache
        B, Hkv, g, T, hd = q.shape
        if k.shape[-2] != T:
            raise RuntimeError("backward through a KV-cached forward is not supported (the cache is for inference)")
        dy = self.c_proj.backward(self.resid_dropout.backward(dout, c_rd), c_out)   # (B, T, C)
        dy = dy.reshape(B, T, Hkv, g, hd).transpose(0, 2, 3, 1, 4)                   # (B, Hkv, g, T, hd)
        dpd = dy @ v.swapaxes(-1, -2)                          # (B, Hkv, g, T, T)
        dv = (pd.swapaxes(-1, -2) @ dy).sum(2, keepdims=True)  # (B, Hkv, 1, T, hd): summed over the group
        dp = dpd if drop is None else dpd * drop               # the attention dropout's backward
        ds = softmax_backward(dp, p)                           # (B, Hkv, g, T, T)
        dq = ds @ k / math.sqrt(hd)                            # (B, Hkv, g, T, hd)
        dk = (ds.swapaxes(-1, -2) @ q).sum(2, keepdims=True) / math.sqrt(hd)   # (B, Hkv, 1, T, hd)
        if self.rotary is not None:                            # q and k were rotated: rotate their gradients back
            dq, dk = self.rotary.backward(dq, start), self.rotary.backward(dk, start)
        dqkv = self.merge_heads(dq, dk, dv)                    # (B, T, (H + 2 Hkv) hd)
        return self.c_attn.backward(dqkv, c_lin)
