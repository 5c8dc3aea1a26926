"""The model's configuration: one frozen dataclass handed to every layer that needs it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

CHOICES = {
    "norm": ("layernorm", "rmsnorm"),
    "mlp": ("gelu", "swiglu"),
    "pos": ("learned", "rope", "alibi"),
    "gelu_approximate": ("none", "tanh"),
    "dtype": ("float32", "float64"),
}


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 64            # the context length
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_kv_head: int | None = None    # None: as many as n_head; 1: multi-query; between: grouped-query
    dropout: float = 0.0
    bias: bool = True               # biases in Linear layers and LayerNorm
    tie_weights: bool = True        # lm_head.weight is transformer.wte.weight
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"
    mlp_hidden: int | None = None   # None: 4C for GELU, 8C/3 rounded up to a multiple of 8 for SwiGLU
    gelu_approximate: str = "none"
    pos: str = "learned"
    rope_base: float = 10000.0
    dtype: str = "float64"

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.kv_heads < 1 or self.n_head % self.kv_heads:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got n_embd/n_head = {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps}")

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "gelu":
            return 4 * self.n_embd
        return -(-8 * self.n_embd // 3 // 8) * 8

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**d)

    def replace(self, **changes) -> GPTConfig:
        return dataclasses.replace(self, **changes)
