"""Every layer of the reference, registered once. Importing this module fills the registry."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import nn

from reference import layers as L
from reference.attention import CausalSelfAttention
from reference.positions import Rotary
from reference.config import GPTConfig
from reference.loss import CrossEntropyLoss
from reference.model import GPT, Block
from reference.module import Module

from . import twins
from .registry import Dims, hidden, register, token_ids


def config_of(d: Dims, dtype, **changes) -> GPTConfig:
    """A small GPT configuration from case dimensions."""
    return GPTConfig(vocab_size=d.V, block_size=d.L, n_layer=2, n_head=d.H, n_kv_head=d.Hkv, n_embd=d.C,
                     dtype=str(np.dtype(dtype)), **changes)


def logits_and_targets(d: Dims, dtype, rng):
    logits = (rng.standard_normal((d.B, d.T, d.V)) * 3.0).astype(dtype)
    return logits, rng.integers(0, d.V, (d.B, d.T))


def ids_and_targets(d: Dims, dtype, rng):
    return rng.integers(0, d.V, (d.B, d.T)), rng.integers(0, d.V, (d.B, d.T))


class GPTWithLoss(Module):
    """Reference side of the whole-model-and-loss case: (idx, targets) -> mean cross-entropy."""

    def __init__(self, config: GPTConfig):
        self.model = GPT(config)

    def forward(self, idx, targets, masks=None):
        logits, cache = self.model.forward(idx, masks)
        loss, c_loss = self.model.criterion.forward(logits, targets)
        return loss, (cache, c_loss)

    def backward(self, dloss, cache):
        cache, c_loss = cache
        self.model.backward(self.model.criterion.backward(dloss, c_loss), cache)


class LossTwin(nn.Module):
    def forward(self, logits, targets):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def attention(pos="learned", dropout=0.0, heads=None):
    """Builders for an attention case: (reference, twin)."""
    def ref(d, dtype, rng):
        hkv = d.H if heads == "mha" else d.Hkv
        rotary = Rotary(d.hd, d.L, 10000.0, dtype) if pos == "rope" else None
        return CausalSelfAttention(d.C, d.H, hkv, bias=True, dropout=dropout, rng=rng, dtype=dtype,
                                   proj_std=0.02, rotary=rotary, alibi=pos == "alibi")

    def twin(d):
        return twins.CausalSelfAttention(d.C, d.H, d.H if heads == "mha" else d.Hkv, True, dropout, pos)
    return ref, twin


# name, reference builder, twin builder, inputs, options: one line per case.
register("embedding", lambda d, dt, rng: L.Embedding(d.V, d.C, rng=rng, dtype=dt), lambda d: nn.Embedding(d.V, d.C), token_ids)
register("linear", lambda d, dt, rng: L.Linear(d.C, 3 * d.C, rng=rng, dtype=dt), lambda d: nn.Linear(d.C, 3 * d.C))
register("linear_nobias", lambda d, dt, rng: L.Linear(d.C, 5, bias=False, rng=rng, dtype=dt), lambda d: nn.Linear(d.C, 5, bias=False))
register("layernorm", lambda d, dt, rng: L.LayerNorm(d.C, dtype=dt), lambda d: nn.LayerNorm(d.C))
register("layernorm_nobias", lambda d, dt, rng: L.LayerNorm(d.C, eps=1e-3, bias=False, dtype=dt), lambda d: nn.LayerNorm(d.C, eps=1e-3, bias=False))
register("rmsnorm", lambda d, dt, rng: L.RMSNorm(d.C, eps=1e-5, dtype=dt), lambda d: nn.RMSNorm(d.C, eps=1e-5))
register("gelu", lambda d, dt, rng: L.GELU("none"), lambda d: nn.GELU("none"))
register("gelu_tanh", lambda d, dt, rng: L.GELU("tanh"), lambda d: nn.GELU("tanh"))
register("dropout", lambda d, dt, rng: L.Dropout(0.3), lambda d: twins.Dropout(0.3), dropout=True)
register("mlp", lambda d, dt, rng: L.MLP(d.C, 4 * d.C, bias=True, approximate="none", dropout=0.0, rng=rng, dtype=dt, proj_std=0.02),
         lambda d: twins.MLP(d.C, 4 * d.C, True, "none", 0.0))
register("swiglu", lambda d, dt, rng: L.SwiGLU(d.C, 3 * d.C, bias=False, dropout=0.0, rng=rng, dtype=dt, proj_std=0.02),
         lambda d: twins.SwiGLU(d.C, 3 * d.C, False, 0.0))
register("attention", *attention(heads="mha"))
register("attention_gqa", *attention(), dims=Dims(H=4, Hkv=2))
register("attention_mqa", *attention(), dims=Dims(H=3, Hkv=1))
register("attention_rope", *attention(pos="rope", heads="mha"))
register("attention_alibi", *attention(pos="alibi"), dims=Dims(H=6, Hkv=3))
register("attention_dropout", *attention(dropout=0.2, heads="mha"), dropout=True)
register("cross_entropy", lambda d, dt, rng: CrossEntropyLoss(), lambda d: LossTwin(), logits_and_targets)
register("block", lambda d, dt, rng: Block(config_of(d, dt), rng=rng), lambda d: twins.Block(config_of(d, "float64")))
register("gpt", lambda d, dt, rng: GPT(config_of(d, dt)), lambda d: twins.GPT(config_of(d, "float64")), token_ids)
register("gpt_sinusoidal", lambda d, dt, rng: GPT(config_of(d, dt, pos="sinusoidal")),
         lambda d: twins.GPT(config_of(d, "float64", pos="sinusoidal")), token_ids)
register("gpt_dropout", lambda d, dt, rng: GPT(config_of(d, dt, dropout=0.1)),
         lambda d: twins.GPT(config_of(d, "float64", dropout=0.1)), token_ids, dropout=True)
register("gpt_loss", lambda d, dt, rng: GPTWithLoss(config_of(d, dt)), lambda d: twins.GPTLoss(config_of(d, "float64")), ids_and_targets)

__all__ = ["GPTWithLoss", "config_of", "hidden"]
