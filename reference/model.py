"""The GPT: embeddings, N pre-norm transformer blocks, a final norm and the language-model head.

Parameter names are GPT-2's as in nanoGPT (`transformer.wte.weight`, `transformer.h.0.attn.c_attn.weight`,
`lm_head.weight`), so `state_dict()` equals the PyTorch twin's key for key.
Derived in docs/block.md (residual gradient flow) and docs/model.md.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from .attention import CausalSelfAttention, LayerKV
from .config import GPTConfig
from .layers import (MLP, Dropout, DropoutMasks, Embedding, LayerNorm, Linear, MaskSource, RMSNorm, SwiGLU,
                     name_dropouts)
from .loss import CrossEntropyLoss
from .module import Module, ModuleDict, as_dtype
from .positions import Rotary, sinusoidal_positions


def make_norm(config: GPTConfig, dtype) -> Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, eps=config.norm_eps, dtype=dtype)
    return LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias, dtype=dtype)


def parameter_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter `GPT(config)` has: GPT-2's name -> shape, in `named_parameters()` order, a tied
    head once (under `transformer.wte.weight`).

    The one list of the model's parameters, computed from the config alone: checkpoints check a file's
    tensors against it, train's memory estimate counts it, and the Hugging Face key maps are built
    over it, all without building the model (a header may claim any size). tests/test_model.py holds
    it equal to the built model's parameters for every variant."""
    C = config.n_embd
    shapes: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (config.vocab_size, C)}
    if config.pos == "learned":
        shapes["transformer.wpe.weight"] = (config.block_size, C)

    def linear(name: str, n_in: int, n_out: int) -> None:      # Linear: weight (out, in), bias (out,)
        shapes[f"{name}.weight"] = (n_out, n_in)
        if config.bias:
            shapes[f"{name}.bias"] = (n_out,)

    def norm(name: str) -> None:                               # LayerNorm: weight, bias; RMSNorm: weight
        shapes[f"{name}.weight"] = (C,)
        if config.norm == "layernorm" and config.bias:
            shapes[f"{name}.bias"] = (C,)

    for i in range(config.n_layer):
        h = f"transformer.h.{i}"
        norm(f"{h}.ln_1")
        linear(f"{h}.attn.c_attn", C, (config.n_head + 2 * config.kv_heads) * config.head_dim)
        linear(f"{h}.attn.c_proj", C, C)
        norm(f"{h}.ln_2")
        linear(f"{h}.mlp.c_fc", C, config.hidden)
        if config.mlp == "swiglu":
            linear(f"{h}.mlp.c_gate", C, config.hidden)
        linear(f"{h}.mlp.c_proj", config.hidden, C)
    norm("transformer.ln_f")
    if not config.tie_weights:
        shapes["lm_head.weight"] = (config.vocab_size, C)
    return shapes


def parameter_count(config: GPTConfig) -> int:
    """len(parameter_shapes(config)), in constant time: a checkpoint header claiming a billion layers is
    refused by counting, before a billion names are listed."""
    per_linear = 2 if config.bias else 1
    per_norm = 2 if config.norm == "layernorm" and config.bias else 1
    linears = 5 if config.mlp == "swiglu" else 4              # c_attn, c_proj, c_fc, (c_gate,) c_proj
    per_layer = 2 * per_norm + linears * per_linear
    return 1 + (config.pos == "learned") + config.n_layer * per_layer + per_norm + (not config.tie_weights)


def check_token_ids(idx, vocab_size: int, what: str = "token id") -> None:
    """Raise ValueError naming the first id outside 0 <= id < vocab_size (negative or too large).

    The one range check of token ids: `GPT.forward` calls it at the model's boundary (layers behind it
    may assume valid ids), and the programs call it on data files before training starts."""
    idx = np.asarray(idx)
    if idx.size == 0:
        return
    outside = (idx < 0) | (idx >= vocab_size)
    if outside.any():
        bad = idx[outside].flat[0]
        raise ValueError(f"{what} {int(bad)} is out of range for vocab_size {vocab_size} "
                         f"(expected 0 <= id < {vocab_size})")


class Block(Module):
    """x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)). Derived in docs/block.md."""

    def __init__(self, config: GPTConfig, *, rng: np.random.Generator, rotary: Rotary | None = None):
        dtype = as_dtype(config.dtype)
        proj_std = 0.02 / math.sqrt(2 * config.n_layer)        # GPT-2's scaled init of residual projections
        self.ln_1 = make_norm(config, dtype)
        self.attn = CausalSelfAttention(
            config.n_embd, config.n_head, config.kv_heads, bias=config.bias, dropout=config.dropout,
            rng=rng, dtype=dtype, proj_std=proj_std, rotary=rotary, alibi=config.pos == "alibi")
        self.ln_2 = make_norm(config, dtype)
        if config.mlp == "swiglu":
            self.mlp = SwiGLU(config.n_embd, config.hidden, bias=config.bias, dropout=config.dropout,
                              rng=rng, dtype=dtype, proj_std=proj_std)
        else:
            self.mlp = MLP(config.n_embd, config.hidden, bias=config.bias, approximate=config.gelu_approximate,
                           dropout=config.dropout, rng=rng, dtype=dtype, proj_std=proj_std)

    def forward(self, x: np.ndarray, masks: MaskSource | None = None, kv_cache: LayerKV | None = None):
        h, c1 = self.ln_1.forward(x)                           # (B, T, C)
        a, c2 = self.attn.forward(h, masks, kv_cache)
        x = x + a                                              # residual 1: x + attn(ln_1(x))
        h, c3 = self.ln_2.forward(x)
        m, c4 = self.mlp.forward(h, masks)
        return x + m, (c1, c2, c3, c4)                         # residual 2: x + mlp(ln_2(x))

    def backward(self, dout: np.ndarray, cache) -> np.ndarray:
        c1, c2, c3, c4 = cache
        dx = dout + self.ln_2.backward(self.mlp.backward(dout, c4), c3)    # the residual passes dout through
        return dx + self.ln_1.backward(self.attn.backward(dx, c2), c1)


class BlockCheckpoint:
    """What a recomputed block keeps of its forward: its input x (B, T, C) and the means to draw its dropout
    masks again. GPT.backward runs the block's forward again from it (docs/checkpointing.md).

    The masks: from a DropoutMasks, a copy of its generator taken before the block drew (a few hundred
    bytes: torch.utils.checkpoint's preserve_rng_state); the recomputed forward draws from the copy, the
    same uniforms in the same order, so the same masks. From any other MaskSource (the oracle's replays,
    which may not draw at all), the masks it hands out, kept by layer name."""

    def __init__(self, x: np.ndarray, masks: MaskSource | None):
        self.x, self.source = x, masks
        self.rng = copy.deepcopy(masks.rng) if type(masks) is DropoutMasks else None
        self.kept: dict[str, np.ndarray] = {}

    def masks(self) -> MaskSource | None:
        """The first forward's mask source: the block's own, passed through (and kept, if not replayable)."""
        if self.source is None or self.rng is not None:
            return self.source

        def keep(name: str, shape: tuple, p: float, dtype) -> np.ndarray:
            self.kept[name] = self.source(name, shape, p, dtype)
            return self.kept[name]
        return keep

    def replay(self) -> MaskSource | None:
        """The recomputed forward's mask source: it hands out exactly the first forward's masks."""
        if self.source is None:
            return None
        if self.rng is not None:
            return DropoutMasks(copy.deepcopy(self.rng))
        return lambda name, shape, p, dtype: self.kept[name]


class KVCache:
    """Keys and values of every layer for incremental decoding; `length` tokens are cached so far."""

    def __init__(self, config: GPTConfig, batch: int, max_len: int | None = None):
        """Room for max_len positions (at most, and by default, the context: block_size)."""
        dtype = as_dtype(config.dtype)
        max_len = config.block_size if max_len is None else min(max_len, config.block_size)
        self.layers = [LayerKV(batch, config.kv_heads, max_len, config.head_dim, dtype)
                       for _ in range(config.n_layer)]

    @property
    def length(self) -> int:
        return self.layers[0].length

    def reorder(self, index) -> None:
        """Keep, for each new batch row i, the keys and values of old row index[i] (any length, repeats
        allowed): beam search's reordering after each step (transformers' `Cache.reorder_cache`).
        The capacity and fill length stay; the batch becomes len(index)."""
        index = np.asarray(index)
        for layer in self.layers:                              # k, v: (B, n_kv_head, 1, max_len, hd)
            layer.k, layer.v = layer.k[index], layer.v[index]


class GPT(Module):
    """Token ids (B, T) -> logits (B, T, vocab_size). Derived in docs/model.md."""

    def __init__(self, config: GPTConfig, *, seed: int | None = 0, recompute: bool = False):
        """Weights drawn from `seed`; with seed None nothing is drawn and every matrix starts at zero, for
        weights about to be loaded (reference/programs/hf.py: GPT-2 small's 124M draws would cost time and
        memory). This is the textbook model, the code docs/ derives; `reference.fast.use_kernels(model,
        "fast")` moves it onto the fast path (docs/performance.md).

        `recompute` (activation checkpointing, a settable attribute): a forward keeps each block's input
        only, and the backward runs each block's forward again, with the same dropout masks, before its
        backward: the same loss and gradients bit for bit, less memory, one more forward of the blocks
        (docs/checkpointing.md)."""
        self.config = config
        self.recompute = bool(recompute)
        dtype = as_dtype(config.dtype)
        rng = None if seed is None else np.random.default_rng(seed)
        rotary = Rotary(config.head_dim, config.block_size, config.rope_base, dtype) if config.pos == "rope" else None
        parts = {"wte": Embedding(config.vocab_size, config.n_embd, rng=rng, dtype=dtype)}
        if config.pos == "learned":
            parts["wpe"] = Embedding(config.block_size, config.n_embd, rng=rng, dtype=dtype)
        parts["drop"] = Dropout(config.dropout)
        parts["h"] = [Block(config, rng=rng, rotary=rotary) for _ in range(config.n_layer)]
        parts["ln_f"] = make_norm(config, dtype)
        self.transformer = ModuleDict(**parts)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False, rng=rng, dtype=dtype)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight   # one Parameter: gradients from both uses add up
        self.criterion = CrossEntropyLoss()
        name_dropouts(self)                                    # dropout masks are keyed by module path

    def check_input(self, idx: np.ndarray, start: int = 0) -> np.ndarray:
        idx = np.asarray(idx)
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"token ids must be integers, got dtype {idx.dtype}")
        if idx.ndim != 2:
            raise ValueError(f"token ids must have shape (batch, time), got shape {idx.shape}")
        if idx.shape[0] == 0 or idx.shape[1] == 0:
            raise ValueError(f"token ids of shape {idx.shape} are empty: expected (batch, time) with batch >= 1 "
                             "and time >= 1")
        if start + idx.shape[1] > self.config.block_size:
            raise ValueError(f"sequence of length {start + idx.shape[1]} is longer than the context "
                             f"(block_size {self.config.block_size})")
        check_token_ids(idx, self.config.vocab_size)
        return idx

    def forward(self, idx: np.ndarray, masks: MaskSource | None = None, kv_cache: KVCache | None = None,
                return_attentions: bool = False):
        """Logits (B, T, V) and the cache for backward. `masks` enables dropout; `kv_cache` decodes
        incrementally (positions continue from the cache's length; inference only).

        With `return_attentions`, a third value: each layer's attention probabilities, a list of n_layer
        arrays (B, n_head, T, S) with S = the keys seen (the cache's length + T), as transformers'
        `output_attentions=True` returns them (CausalSelfAttention.attention_probs; docs/attention-maps.md).

        With `self.recompute`, each block's entry of the cache is a BlockCheckpoint (its input), not its
        cache; except with `kv_cache` (inference: a recomputed forward would append its keys twice) or
        `return_attentions` (it reads every block's cache), where every block keeps its cache as without."""
        recompute = self.recompute and kv_cache is None and not return_attentions
        start = kv_cache.length if kv_cache is not None else 0
        idx = self.check_input(idx, start)
        tr = self.transformer
        x, c_wte = tr.wte.forward(idx)                         # (B, T, C)
        c_wpe = None
        if self.config.pos == "learned":
            pe, c_wpe = tr.wpe.forward(np.arange(start, start + idx.shape[1]))   # (T, C)
            x = x + pe                                         # (B, T, C) + (T, C): broadcast over the batch
        elif self.config.pos == "sinusoidal":                  # a fixed table, no parameters (docs/sinusoidal.md)
            x = x + sinusoidal_positions(start, idx.shape[1], self.config.n_embd, x.dtype)   # (T, C)
        x, c_drop = tr.drop.forward(x, masks)
        c_blocks = []
        for i, block in enumerate(tr.h):
            if recompute:                                      # keep the block's input, drop its cache
                kept = BlockCheckpoint(x, masks)
                x = block.forward(x, kept.masks())[0]
                c_blocks.append(kept)
                continue
            x, c = block.forward(x, masks, kv_cache.layers[i] if kv_cache is not None else None)
            c_blocks.append(c)
        x, c_ln = tr.ln_f.forward(x)
        logits, c_head = self.lm_head.forward(x)               # (B, T, V)
        cache = (c_wte, c_wpe, c_drop, c_blocks, c_ln, c_head)
        if return_attentions:                                  # c[1]: each block's attention cache
            return logits, cache, [block.attn.attention_probs(c[1]) for block, c in zip(tr.h, c_blocks)]
        return logits, cache

    def backward(self, dlogits: np.ndarray, cache) -> None:
        c_wte, c_wpe, c_drop, c_blocks, c_ln, c_head = cache
        tr = self.transformer
        dx = tr.ln_f.backward(self.lm_head.backward(dlogits, c_head), c_ln)
        del dlogits                                            # (B, T, V), the largest array: freed before the blocks
        for block, c in zip(reversed(tr.h), reversed(c_blocks)):
            if isinstance(c, BlockCheckpoint):                 # recompute: the block's forward again,
                c = block.forward(c.x, c.replay())[1]          # from its input, with the same masks
            dx = block.backward(dx, c)
        dx = tr.drop.backward(dx, c_drop)
        if c_wpe is not None:
            tr.wpe.backward(dx.sum(0), c_wpe)                  # positions are shared across the batch
        tr.wte.backward(dx, c_wte)                             # (sinusoidal positions: nothing to learn)

    def loss(self, idx: np.ndarray, targets: np.ndarray, masks: MaskSource | None = None):
        """Forward and mean cross-entropy: (loss, logits, cache). idx and targets: (B, T) token ids; a target
        equal to the criterion's ignore_index (-100) is left out of the mean. ValueError names a target
        outside 0 <= id < vocab_size, checked here, at the model's boundary, before the forward runs."""
        if np.shape(targets) != np.shape(idx):
            raise ValueError(f"targets of shape {np.shape(targets)} do not match token ids of shape {np.shape(idx)}: "
                             "expected one target per token, the same (batch, time) shape")
        t = np.asarray(targets)
        if np.issubdtype(t.dtype, np.integer):                 # (other dtypes: the criterion's TypeError)
            check_token_ids(t[t != self.criterion.ignore_index], self.config.vocab_size, "target")
        logits, cache = self.forward(idx, masks)
        loss, c_loss = self.criterion.forward(logits, targets)
        return loss, logits, (cache, c_loss)

    def loss_and_backward(self, idx: np.ndarray, targets: np.ndarray, masks: MaskSource | None = None) -> float:
        """One training pass: forward, loss, and backward accumulating every parameter's gradient."""
        loss, logits, (cache, c_loss) = self.loss(idx, targets, masks)
        del logits                                             # the backward needs the softmax (in c_loss) only
        self.backward(self.criterion.backward(1.0, c_loss), cache)
        return float(loss)
