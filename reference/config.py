"""The model's configuration: one frozen dataclass handed to every layer that needs it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

CHOICES = {
    "norm": ("layernorm", "rmsnorm"),
    "mlp": ("gelu", "swiglu"),
    "pos": ("learned", "rope", "alibi", "sinusoidal"),
    "gelu_approximate": ("none", "tanh"),
    "dtype": ("float32", "float64"),
}


# The predicates of GPTConfig's checks: Python's own types only, since a config is saved as JSON. The
# programs' validators (reference/programs/options.py) are built on them.

def _is_int(value) -> bool:
    """An int that is not a bool (True is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """An int or a float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
    """A number (not a bool) that is finite as a float: no NaN, no infinity, no int too large for a float."""
    if not _is_number(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:           # an int beyond the float range (JSON allows any size)
        return False


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
    pos: str = "learned"              # learned (wpe), rope, alibi, or sinusoidal (fixed, no parameters)
    rope_base: float = 10000.0
    dtype: str = "float64"

    def __post_init__(self):
        """Every field's type and range, checked before any arithmetic on it (a config may come from a
        checkpoint header: JSON of any shape). ValueError names the field and what it must be."""
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("n_kv_head", "mlp_hidden"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{name} must be None or a positive integer, got {value!r}")
        for name in ("bias", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean (true or false), got {getattr(self, name)!r}")
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if not _is_number(self.dropout):
            raise ValueError(f"dropout must be a number in [0, 1), "
                             f"got {self.dropout!r} ({type(self.dropout).__name__})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not _is_finite_number(self.norm_eps) or self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be positive (a finite number > 0), got {self.norm_eps!r}")
        if not _is_finite_number(self.rope_base) or self.rope_base <= 0:
            raise ValueError(f"rope_base must be a positive finite number, got {self.rope_base!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got n_embd/n_head = {self.head_dim}")

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
        if not isinstance(d, dict):
            raise TypeError(f"a GPTConfig is built from a dict (JSON object) of its fields, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**d)

    def replace(self, **changes) -> GPTConfig:
        return dataclasses.replace(self, **changes)
