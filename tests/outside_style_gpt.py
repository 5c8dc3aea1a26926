"""A small NumPy GPT written the way many public NumPy transformers are, not the way this project is:
the code under test of docs/verifying-your-own-code.md, with its planted bugs at the end.

The style: every weight on a sub-object (`attn.W_q.weight`), its gradient beside it in a `grad_`
attribute (`attn.W_q.grad_weight`), assigned (not accumulated) by each backward; Linear weights stored
(in, out) (`x @ W`); LayerNorm's `gamma` and `beta`; dropout drawn with `np.random.rand` inside each
forward (keep where rand > p, scale 1/(1-p)), several times per forward; the output head tied to the
token embedding (the same array); the loss a function returning (loss, dlogits). Each layer keeps what
its backward needs on itself (`self.x`), so backward follows the last forward.
"""

from __future__ import annotations

import numpy as np


class Linear:
    def __init__(self, n_in, n_out, rng):
        self.weight = rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)     # (in, out): y = x @ W + b
        self.bias = np.zeros(n_out)

    def forward(self, x):
        self.x = x
        return x @ self.weight + self.bias

    def backward(self, dout):
        C_in = self.weight.shape[0]
        self.grad_weight = self.x.reshape(-1, C_in).T @ dout.reshape(-1, dout.shape[-1])
        self.grad_bias = dout.reshape(-1, dout.shape[-1]).sum(0)
        return dout @ self.weight.T


class LayerNorm:
    def __init__(self, n, eps=1e-5):
        self.gamma, self.beta, self.eps = np.ones(n), np.zeros(n), eps

    def forward(self, x):
        self.xhat = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + self.eps)
        self.rstd = 1 / np.sqrt(x.var(-1, keepdims=True) + self.eps)
        return self.xhat * self.gamma + self.beta

    def backward(self, dout):
        self.grad_gamma = (dout * self.xhat).reshape(-1, dout.shape[-1]).sum(0)
        self.grad_beta = dout.reshape(-1, dout.shape[-1]).sum(0)
        g = dout * self.gamma
        return self.rstd * (g - g.mean(-1, keepdims=True) - self.xhat * (g * self.xhat).mean(-1, keepdims=True))


class GELU:
    """The tanh approximation (GPT-2's)."""

    def forward(self, x):
        self.x = x
        self.t = np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))
        return 0.5 * x * (1 + self.t)

    def backward(self, dout):
        x, t = self.x, self.t
        return dout * (0.5 * (1 + t) + 0.5 * x * (1 - t**2) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * x**2))


class Embedding:
    def __init__(self, n, dim, rng):
        self.weight = rng.standard_normal((n, dim)) * 0.5

    def forward(self, idx):
        self.idx = idx
        return self.weight[idx]

    def backward(self, dout):
        self.grad_weight = np.zeros_like(self.weight)
        np.add.at(self.grad_weight, self.idx, dout)


class Dropout:
    def __init__(self, p):
        self.p = p

    def forward(self, x):
        if self.p == 0:
            self.mask = 1.0
            return x
        self.mask = (np.random.rand(*x.shape) > self.p) / (1 - self.p)
        return x * self.mask

    def backward(self, dout):
        return dout * self.mask


class Attention:
    def __init__(self, n_embd, n_head, p, rng):
        self.n_head = n_head
        self.W_q, self.W_k, self.W_v, self.W_o = (Linear(n_embd, n_embd, rng) for _ in range(4))
        self.attn_drop, self.resid_drop = Dropout(p), Dropout(p)

    def forward(self, x):                                             # x (B, T, C)
        B, T, C = x.shape
        heads = lambda a: a.reshape(B, T, self.n_head, -1).transpose(0, 2, 1, 3)   # noqa: E731 (B, H, T, hd)
        q, k, v = heads(self.W_q.forward(x)), heads(self.W_k.forward(x)), heads(self.W_v.forward(x))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(C // self.n_head)  # (B, H, T, T)
        s = np.where(np.tri(T, dtype=bool), s, -np.inf)
        e = np.exp(s - s.max(-1, keepdims=True))
        self.att = e / e.sum(-1, keepdims=True)
        self.q, self.k, self.v = q, k, v
        y = (self.attn_drop.forward(self.att) @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        return self.resid_drop.forward(self.W_o.forward(y))

    def backward(self, dout):
        B, T, C = dout.shape
        heads = lambda a: a.reshape(B, T, self.n_head, -1).transpose(0, 2, 1, 3)   # noqa: E731
        merge = lambda a: a.transpose(0, 2, 1, 3).reshape(B, T, C)                   # noqa: E731
        dy = heads(self.W_o.backward(self.resid_drop.backward(dout)))
        att_drop = self.att * self.attn_drop.mask
        dv = att_drop.transpose(0, 1, 3, 2) @ dy
        datt = self.attn_drop.backward(dy @ self.v.transpose(0, 1, 3, 2))
        ds = self.att * (datt - (datt * self.att).sum(-1, keepdims=True)) / np.sqrt(C // self.n_head)
        dq, dk = ds @ self.k, ds.transpose(0, 1, 3, 2) @ self.q
        return (self.W_q.backward(merge(dq)) + self.W_k.backward(merge(dk)) + self.W_v.backward(merge(dv)))


class FeedForward:
    def __init__(self, n_embd, p, rng):
        self.fc, self.gelu, self.proj, self.drop = Linear(n_embd, 4 * n_embd, rng), GELU(), \
            Linear(4 * n_embd, n_embd, rng), Dropout(p)

    def forward(self, x):
        return self.drop.forward(self.proj.forward(self.gelu.forward(self.fc.forward(x))))

    def backward(self, dout):
        return self.fc.backward(self.gelu.backward(self.proj.backward(self.drop.backward(dout))))


class Block:
    def __init__(self, n_embd, n_head, p, rng):
        self.ln1, self.attn = LayerNorm(n_embd), Attention(n_embd, n_head, p, rng)
        self.ln2, self.ffwd = LayerNorm(n_embd), FeedForward(n_embd, p, rng)

    def forward(self, x):
        x = x + self.attn.forward(self.ln1.forward(x))
        return x + self.ffwd.forward(self.ln2.forward(x))

    def backward(self, dout):
        dx = dout + self.ln2.backward(self.ffwd.backward(dout))
        return dx + self.ln1.backward(self.attn.backward(dx))


class TiedHead:
    """logits = x @ wte.T: the head reads the token embedding's very array."""

    def __init__(self, embedding):
        self.weight = embedding.weight

    def forward(self, x):
        self.x = x
        return x @ self.weight.T

    def backward(self, dout):
        self.grad_weight = dout.reshape(-1, dout.shape[-1]).T @ self.x.reshape(-1, self.x.shape[-1])
        return dout @ self.weight


class GPT:
    def __init__(self, vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, p=0.1, seed=0):
        rng = np.random.default_rng(seed)
        self.wte, self.wpe = Embedding(vocab_size, n_embd, rng), Embedding(block_size, n_embd, rng)
        self.drop = Dropout(p)
        self.blocks = [Block(n_embd, n_head, p, rng) for _ in range(n_layer)]
        self.ln_f = LayerNorm(n_embd)
        self.head = TiedHead(self.wte)

    def forward(self, idx):                                           # idx (B, T) -> logits (B, T, V)
        x = self.drop.forward(self.wte.forward(idx) + self.wpe.forward(np.arange(idx.shape[1])))
        for block in self.blocks:
            x = block.forward(x)
        return self.head.forward(self.ln_f.forward(x))

    def backward(self, dlogits):
        dx = self.ln_f.backward(self.head.backward(dlogits))
        for block in reversed(self.blocks):
            dx = block.backward(dx)
        dx = self.drop.backward(dx)
        self.wpe.backward(dx.sum(0))
        self.wte.backward(dx)
        self.sum_tied_shares()

    def sum_tied_shares(self):
        self.wte.grad_weight += self.head.grad_weight                 # the tied weight: both shares


def cross_entropy(logits, targets):
    """(mean loss, dlogits) over every position."""
    z = logits - logits.max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    n = targets.size
    flat = probs.reshape(n, -1)
    loss = -np.log(flat[np.arange(n), targets.reshape(-1)]).mean()
    dlogits = flat.copy()
    dlogits[np.arange(n), targets.reshape(-1)] -= 1
    return loss, (dlogits / n).reshape(logits.shape)


# ---------------------------------------------------------------------------------------------- planted bugs

class NoTransposeLinear(Linear):
    """The input gradient through a square weight without its transpose: shapes fit, numbers do not."""

    def backward(self, dout):
        super().backward(dout)
        return dout @ self.weight


class UnsummedGPT(GPT):
    """The tied weight keeps only the embedding's share: the head's is never added."""

    def sum_tied_shares(self):
        pass


class InvertedDropout(Dropout):
    """The mask misapplied: keeps where rand < p, i.e. drops the 1 - p it should keep."""

    def forward(self, x):
        if self.p == 0:
            self.mask = 1.0
            return x
        self.mask = (np.random.rand(*x.shape) < self.p) / (1 - self.p)
        return x * self.mask
