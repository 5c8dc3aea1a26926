"""PyTorch twins of the reference layers, built from torch's own functions.

Each twin has the reference layer's parameter names, so `twin.load_state_dict(ref.state_dict())`
works with no mapping, and its forward takes the same arguments. Only RoPE (which torch does not
provide), the ALiBi slopes and the replay of a given dropout mask are written out here, from their
papers and not from `reference/` (tests/test_oracle_api.py::test_oracle_core_imports_nothing_from_reference
holds this module, like oracle/core, to importing nothing from `reference`); they are cross-checked by
finite differences (oracle/core/fd.py), independently of torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Dropout(nn.Module):
    """Replays the reference's mask: y = x * masks[name] (the mask already holds the 1/(1-p) scale)."""

    def __init__(self, p: float, name: str = "dropout"):
        super().__init__()
        self.p, self.name = p, name

    def forward(self, x: torch.Tensor, masks: dict | None = None) -> torch.Tensor:
        if masks is None or self.p == 0.0:
            return x
        return x * torch.as_tensor(masks[self.name], dtype=x.dtype).reshape(x.shape)


def name_dropouts(root: nn.Module) -> None:
    """Name every Dropout by its module path, exactly as reference.layers.name_dropouts does."""
    for name, module in root.named_modules():
        if isinstance(module, Dropout):
            module.name = name or "dropout"


class MLP(nn.Module):
    def __init__(self, n_embd: int, hidden: int, bias: bool, approximate: str, dropout: float):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
        self.gelu = nn.GELU(approximate=approximate)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = Dropout(dropout)

    def forward(self, x, masks=None):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))), masks)


class SwiGLU(nn.Module):
    def __init__(self, n_embd: int, hidden: int, bias: bool, dropout: float):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
        self.c_gate = nn.Linear(n_embd, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = Dropout(dropout)

    def forward(self, x, masks=None):
        return self.dropout(self.c_proj(F.silu(self.c_fc(x)) * self.c_gate(x)), masks)


def alibi_head_slopes(n_head: int) -> list[float]:
    """ALiBi's head-specific slopes, from the paper (Press, Smith and Lewis, "Train Short, Test Long",
    ICLR 2022, section 3 and its reference code's get_slopes): for n heads, n a power of two, the
    geometric sequence that starts at 2^(-8/n) with ratio 2^(-8/n), i.e. 2^(-8/n), 2^(-16/n), ..., 2^(-8)
    (n = 8: 1/2, 1/4, ..., 1/256). For other n, with p the largest power of two below n: the p slopes
    of p heads, then the first n - p slopes of 2p heads taken at odd positions (1st, 3rd, 5th, ...)."""
    def power_of_two_slopes(n: int) -> list[float]:     # start * ratio^i with start = ratio = 2^(-8/n),
        exponent = -8.0 / n                             # as one power each (a running product drifts by ulps)
        return [2.0 ** (exponent * (i + 1)) for i in range(n)]
    if math.log2(n_head).is_integer():
        return power_of_two_slopes(n_head)
    closest = 2 ** math.floor(math.log2(n_head))
    return power_of_two_slopes(closest) + alibi_head_slopes(2 * closest)[0::2][: n_head - closest]


def rope(x: torch.Tensor, start: int, base: float) -> torch.Tensor:
    """RoPE (Su et al., RoFormer, 2021, eq. 34) in GPT-NeoX's rotate-half layout, on (..., T, hd):
    channel i < hd/2 pairs with channel i + hd/2, and the pair at position m turns by the angle
    m * theta_i, theta_i = base^(-2i/hd). The rotation is written per pair, as the paper's 2x2 block
    [[cos, -sin], [sin, cos]], with the angles computed in float64."""
    t, hd = x.shape[-2], x.shape[-1]
    half = hd // 2
    theta = torch.tensor([base ** (-2.0 * i / hd) for i in range(half)], dtype=torch.float64)    # (hd/2,)
    m = torch.arange(start, start + t, dtype=torch.float64)[:, None]                            # (T, 1)
    cos, sin = torch.cos(m * theta).to(x.dtype), torch.sin(m * theta).to(x.dtype)               # (T, hd/2)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


def sinusoidal(T: int, C: int) -> torch.Tensor:
    """The encodings of "Attention Is All You Need" (sec. 3.5) for positions 0..T-1, (T, C) float64, from
    the paper's formula in torch: PE(pos, 2i) = sin(pos / 10000^(2i/C)), PE(pos, 2i+1) = cos(same)."""
    pe = torch.zeros(T, C, dtype=torch.float64)
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    even = torch.arange(0, C, 2, dtype=torch.float64)                  # 2i
    div = torch.pow(torch.tensor(10000.0, dtype=torch.float64), even / C)
    pe[:, 0::2] = torch.sin(pos / div)
    pe[:, 1::2] = torch.cos(pos / div[: C // 2])
    return pe


class CausalSelfAttention(nn.Module):
    """F.scaled_dot_product_attention (enable_gqa for grouped heads); with dropout masks, the same
    attention written as an explicitly masked F.softmax so the reference's mask can be replayed."""

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int, bias: bool, dropout: float,
                 pos: str = "learned", rope_base: float = 10000.0):
        super().__init__()
        self.n_head, self.n_kv_head, self.hd = n_head, n_kv_head, n_embd // n_head
        self.c_attn = nn.Linear(n_embd, (n_head + 2 * n_kv_head) * self.hd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.attn_dropout = Dropout(dropout)
        self.resid_dropout = Dropout(dropout)
        self.pos, self.rope_base = pos, rope_base

    def forward(self, x: torch.Tensor, masks: dict | None = None) -> torch.Tensor:
        B, T, C = x.shape
        H, Hkv, hd = self.n_head, self.n_kv_head, self.hd
        q, k, v = self.c_attn(x).split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
        q = q.view(B, T, H, hd).transpose(1, 2)                # (B, H, T, hd)
        k = k.view(B, T, Hkv, hd).transpose(1, 2)              # (B, Hkv, T, hd)
        v = v.view(B, T, Hkv, hd).transpose(1, 2)
        if self.pos == "rope":
            q, k = rope(q, 0, self.rope_base), rope(k, 0, self.rope_base)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        bias = torch.zeros(T, T, dtype=x.dtype).masked_fill(~causal, float("-inf"))
        if self.pos == "alibi":
            slopes = torch.tensor(alibi_head_slopes(H), dtype=x.dtype).view(H, 1, 1)
            dist = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).to(x.dtype)
            bias = bias - slopes * dist                        # (H, T, T)
        if masks is not None and self.attn_dropout.p > 0:
            g = H // Hkv
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
            att = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd) + bias, dim=-1)
            y = self.attn_dropout(att, masks) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=Hkv != H)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y), masks)


# `config` below is any object with GPTConfig's fields (reference/config.py): read by name, not imported.

def make_norm(config) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config.n_embd, config.n_head, config.kv_heads, config.bias,
                                        config.dropout, config.pos, config.rope_base)
        self.ln_2 = make_norm(config)
        if config.mlp == "swiglu":
            self.mlp = SwiGLU(config.n_embd, config.hidden, config.bias, config.dropout)
        else:
            self.mlp = MLP(config.n_embd, config.hidden, config.bias, config.gelu_approximate, config.dropout)

    def forward(self, x, masks=None):
        x = x + self.attn(self.ln_1(x), masks)
        return x + self.mlp(self.ln_2(x), masks)


class GPT(nn.Module):
    """nanoGPT's model with the reference's options; same parameter names, same tying."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        parts = {"wte": nn.Embedding(config.vocab_size, config.n_embd)}
        if config.pos == "learned":
            parts["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        parts["drop"] = Dropout(config.dropout)
        parts["h"] = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        parts["ln_f"] = make_norm(config)
        self.transformer = nn.ModuleDict(parts)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        name_dropouts(self)

    def forward(self, idx: torch.Tensor, masks: dict | None = None) -> torch.Tensor:
        T = idx.shape[1]
        x = self.transformer.wte(idx)
        if self.config.pos == "learned":
            x = x + self.transformer.wpe(torch.arange(T))
        elif self.config.pos == "sinusoidal":
            x = x + sinusoidal(T, self.config.n_embd).to(x.dtype)
        x = self.transformer.drop(x, masks)
        for block in self.transformer.h:
            x = block(x, masks)
        return self.lm_head(self.transformer.ln_f(x))


class GPTLoss(nn.Module):
    """The whole model and its loss: (idx, targets) -> F.cross_entropy(GPT(idx), targets)."""

    def __init__(self, config):
        super().__init__()
        self.model = GPT(config)

    def forward(self, idx, targets, masks=None):
        logits = self.model(idx, masks)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def twin_of(config) -> GPT:
    """A torch GPT with `config`'s structure (float64); load weights with load_reference_state."""
    return GPT(config).double()


def load_reference_state(twin: nn.Module, state: dict, dtype: torch.dtype | None = None) -> None:
    """Load a reference state dict (name -> numpy array) into a twin, strictly, keys and shapes checked."""
    tensors = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    twin.load_state_dict(tensors, strict=True)
