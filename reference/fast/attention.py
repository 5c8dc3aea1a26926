"""The fast path's causal self-attention: the same class as reference/attention.py (a subclass: same
__init__, parameters and cache contract), with forward and backward rewritten for speed.

What changes (docs/performance.md, next to the textbook version): the 1/sqrt(hd) scale goes on q,
in place; the queries are taken in tiles so that the scores above the causal diagonal are never
computed; blocks of the batch run on the pool (pool.for_products), each keeping its scores in its
core's cache; q, k and v are read in place as strided views of c_attn's output, and their gradients
are written straight into the array c_attn's backward takes; outputs go into recycled memory.
"""

from __future__ import annotations

import math

import numpy as np

from .. import attention
from ..attention import LayerKV
from ..layers import MaskSource
from .functional import softmax, softmax_backward
from .pool import empty, for_products

# Causal attention computes only the scores a query can see. The queries are taken in tiles of
# QUERY_TILE rows: rows a:e see keys :e (plus the cached ones), so each tile's products, softmax and
# backward stop at column e, and the tiles above the diagonal are never computed. At T = 256 that
# is 2 tiles and 3/4 of the full products and softmax (docs/performance.md, "Causal tiles in attention"). Tiles of 64
# rows would skip more (5/8), and do on one thread, but with both cores busy their twice as many
# NumPy calls cost float32 the gain. The numbers do not depend on the tiling beyond rounding: a
# masked probability is exactly 0, and so is its gradient. The entries of `p` (and of the backward's
# `ds`) above the tiles are never written: they are not part of the result.
QUERY_TILE = 128


def query_tiles(t: int) -> list[tuple[int, int]]:
    """[(a, e), ...]: consecutive tiles of QUERY_TILE query rows covering range(t)."""
    return [(a, min(a + QUERY_TILE, t)) for a in range(0, t, QUERY_TILE)]


class CausalSelfAttention(attention.CausalSelfAttention):
    """Tiled, pooled, in-place attention. Textbook: reference/attention.py::CausalSelfAttention, derived in
    docs/attention.md (its sections on tiles and blocks describe this version; docs/performance.md)."""

    def forward(self, x: np.ndarray, masks: MaskSource | None = None, kv_cache: LayerKV | None = None):
        B, T, C = x.shape
        H, Hkv, hd = self.n_head, self.n_kv_head, self.head_dim
        g = H // Hkv
        qkv, c_lin = self.c_attn.forward(x)                    # (B, T, (H + 2 Hkv) hd)
        # q, k, v are strided views of qkv, not copies: each (T, hd) matrix has a row stride of
        # (H + 2 Hkv) hd, which BLAS takes as its leading dimension, so the products read them in place.
        heads = qkv.reshape(B, T, H + 2 * Hkv, hd)
        q = heads[:, :, :H].reshape(B, T, Hkv, g, hd).transpose(0, 2, 3, 1, 4)             # (B, Hkv, g, T, hd)
        k = heads[:, :, H:H + Hkv].reshape(B, T, Hkv, 1, hd).transpose(0, 2, 3, 1, 4)      # (B, Hkv, 1, T, hd)
        v = heads[:, :, H + Hkv:].reshape(B, T, Hkv, 1, hd).transpose(0, 2, 3, 1, 4)       # (B, Hkv, 1, T, hd)
        start = kv_cache.length if kv_cache is not None else 0
        if self.rotary is not None:
            q, k = self.rotary.apply(q, start), self.rotary.apply(k, start)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)                       # (B, Hkv, 1, S, hd), S = start + T
        # The 1/sqrt(hd) scale goes on q (T hd numbers per head) instead of the scores (T S per head),
        # in place: qkv is this call's own array (c_attn caches its input, not its output).
        q *= 1.0 / math.sqrt(hd)
        S = k.shape[-2]
        bias = self._bias(T, S, start, x.dtype)                # (T, S), or (Hkv, g, T, S) with ALiBi
        drop = self.attn_dropout.draw((B, H, T, S), x.dtype, masks)
        drop = None if drop is None else drop.reshape(B, Hkv, g, T, S)
        p = empty((B, Hkv, g, T, S), x.dtype)
        pd = p if drop is None else empty(p.shape, x.dtype)
        # p @ v writes straight into a (B, T, H, hd) array: the heads come out side by side, (B, T, C),
        # without the copy a transpose-then-reshape would make.
        y = empty((B, T, Hkv, g, hd), x.dtype)
        yh = y.transpose(0, 2, 3, 1, 4)                        # (B, Hkv, g, T, hd) view of y

        tiles = query_tiles(T)

        def attend(lo: int, hi: int) -> None:                  # batch rows lo:hi, every head at once
            for a, e in tiles:                                 # query rows a:e see keys :start + e only
                n = start + e
                s = np.matmul(q[lo:hi, ..., a:e, :], k[lo:hi, ..., :n, :].swapaxes(-1, -2),
                              out=p[lo:hi, ..., a:e, :n])     # (b, Hkv, g, e - a, n)
                s += bias[..., a:e, :n]
                softmax(s, out=s)                              # in place; masked entries are exactly 0
                if drop is not None:
                    np.multiply(s, drop[lo:hi, ..., a:e, :n], out=pd[lo:hi, ..., a:e, :n])
                np.matmul(pd[lo:hi, ..., a:e, :n], v[lo:hi, ..., :n, :], out=yh[lo:hi, ..., a:e, :])
        # With single-threaded BLAS, blocks of the batch run on the pool, each one's scores staying
        # in its core's cache from the first product to the last (pool.for_products).
        for_products(attend, B, item_size=H * T * S)
        out, c_out = self.c_proj.forward(y.reshape(B, T, C))
        out, c_rd = self.resid_dropout.forward(out, masks)
        return out, (c_lin, q, k, v, p, pd, drop, c_out, c_rd, start)

    @staticmethod
    def attention_probs(cache) -> np.ndarray:
        """As the textbook's (B, n_head, T, S), in a new array: `p` lives in recycled memory, and its
        entries above the query tiles were never written (masked, so 0 in the result)."""
        p, start = cache[4], cache[9]                          # (B, Hkv, g, T, S)
        B, Hkv, g, T, S = p.shape
        seen = np.arange(S)[None, :] <= np.arange(start, start + T)[:, None]   # (T, S): the causal mask
        return np.where(seen, p, 0.0).reshape(B, Hkv * g, T, S)

    def backward(self, dout: np.ndarray, cache) -> np.ndarray:
        c_lin, q, k, v, p, pd, drop, c_out, c_rd, start = cache   # q is scaled by 1/sqrt(hd)
        B, Hkv, g, T, hd = q.shape
        H = Hkv * g
        if k.shape[-2] != T:
            raise RuntimeError("backward through a KV-cached forward is not supported (the cache is for inference)")
        dy = self.c_proj.backward(self.resid_dropout.backward(dout, c_rd), c_out)   # (B, T, C)
        dy = dy.reshape(B, T, Hkv, g, hd).transpose(0, 2, 3, 1, 4)                   # (B, Hkv, g, T, hd) view
        # The gradients of q, k and v are written straight into the (B, T, H + 2 Hkv, hd) array that
        # c_attn's backward takes (as in the forward, through transposed views): no concatenation.
        dqkv = empty((B, T, H + 2 * Hkv, hd), dy.dtype)
        dq = dqkv[:, :, :H].reshape(B, T, Hkv, g, hd).transpose(0, 2, 3, 1, 4)         # (B, Hkv, g, T, hd)
        dk = dqkv[:, :, H:H + Hkv].reshape(B, T, Hkv, 1, hd).transpose(0, 2, 3, 1, 4)  # (B, Hkv, 1, S, hd)
        dv = dqkv[:, :, H + Hkv:].reshape(B, T, Hkv, 1, hd).transpose(0, 2, 3, 1, 4)   # (B, Hkv, 1, S, hd)
        scale = 1.0 / math.sqrt(hd)

        tiles = query_tiles(T)

        def attend_backward(lo: int, hi: int) -> None:         # batch rows lo:hi, as in the forward
            ds = empty(p[lo:hi].shape, dy.dtype)              # (b, Hkv, g, T, T); only the tiles are written
            for a, e in tiles:                                 # query rows a:e, keys :e
                d = np.matmul(dy[lo:hi, ..., a:e, :], v[lo:hi, ..., :e, :].swapaxes(-1, -2),
                              out=ds[:, ..., a:e, :e])         # dL/dpd
                if drop is not None:
                    d *= drop[lo:hi, ..., a:e, :e]             # dL/dp: the dropout backward, in place
                softmax_backward(d, p[lo:hi, ..., a:e, :e], out=d)   # dL/ds, in place
                np.matmul(d, k[lo:hi, ..., :e, :], out=dq[lo:hi, ..., a:e, :])
            dq[lo:hi] *= scale                                 # s = (scale q) k^T
            for a, e in tiles:                                 # keys a:e are seen by query rows a: only
                _matmul_sum_heads(pd[lo:hi, ..., a:, a:e].swapaxes(-1, -2), dy[lo:hi, ..., a:, :], dv[lo:hi, ..., a:e, :])
                _matmul_sum_heads(ds[:, ..., a:, a:e].swapaxes(-1, -2), q[lo:hi, ..., a:, :], dk[lo:hi, ..., a:e, :])
            if self.rotary is not None:                        # q and k were rotated: rotate their gradients back
                dq[lo:hi] = self.rotary.backward(dq[lo:hi], start)
                dk[lo:hi] = self.rotary.backward(dk[lo:hi], start)
        for_products(attend_backward, B, item_size=H * T * T)
        return self.c_attn.backward(dqkv.reshape(B, T, -1), c_lin)


def _matmul_sum_heads(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = (a @ b) summed over the group axis 2 (the query heads sharing one key/value head).

    With one query head per key/value head (plain multi-head attention) there is nothing to sum,
    and the product is written into `out` directly."""
    if a.shape[2] == 1 and b.shape[2] == 1:
        np.matmul(a, b, out=out)
    else:
        np.sum(a @ b, axis=2, keepdims=True, out=out)
