"""How much memory a training step needs, estimated from the settings before anything is allocated,
and the refusal of a run that cannot fit (`train` exits 2 with one line naming what to lower)."""

from __future__ import annotations

import math
import os

import numpy as np

from ...model import parameter_shapes
from .settings import TrainConfig


def estimate_memory(config: TrainConfig, vocab_size: int) -> dict[str, int]:
    """Bytes a training step of `config` needs, estimated from the config before anything is allocated:
    {"weights": parameters + gradients + AdamW's two moments, "activations": what forward keeps for
    backward at batch_size x block_size (DPO: 2 batch_size rows, a pair's chosen and rejected), "total"}.

    The parameters are `reference.model.parameter_shapes` (the model's own list). Per layer forward keeps
    about 8 (B, T, C)-sized arrays, the q/k/v projection, 2 (B, T, hidden)-sized arrays and one
    (B, n_head, T, T) attention map; then the logits and their gradient (B, T, V). Calibrated against
    tracemalloc's peak of real steps (tests/test_cli_failures.py holds it between 0.75 and 1.33 times the
    peak); NumPy's short-lived temporaries are not counted."""
    gc = config.model_config(vocab_size)
    item = np.dtype(gc.dtype).itemsize
    rows = config.batch_size * (2 if config.objective == "dpo" else 1)   # DPO: a pair is two rows
    C, L, H, T, B, V = gc.n_embd, gc.n_layer, gc.n_head, gc.block_size, rows, vocab_size
    params = sum(math.prod(shape) for shape in parameter_shapes(gc).values())
    qkv = (gc.n_head + 2 * gc.kv_heads) * gc.head_dim
    per_layer = B * T * (8 * C + qkv + 2 * gc.hidden) + B * H * T * T
    activations = (L * B * T * C + per_layer if config.recompute else L * per_layer) + 2 * B * T * V
    out = {"weights": 4 * params * item, "activations": activations * item}
    out["total"] = out["weights"] + out["activations"]
    return out


def available_memory() -> int | None:
    """Bytes of memory available now (Linux: MemAvailable; else free physical pages), None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class InsufficientMemory(ValueError):
    """A run whose estimated memory exceeds what is available: refused before allocating."""


def check_memory(config: TrainConfig, vocab_size: int, available: int | None = None) -> dict[str, int]:
    """`estimate_memory`'s dict, or InsufficientMemory if its total exceeds `available` bytes (default:
    `available_memory()`; unknown: not checked)."""
    est = estimate_memory(config, vocab_size)
    available = available_memory() if available is None else available
    if available is not None and est["total"] > available:
        gib = 2.0 ** 30
        raise InsufficientMemory(
            f"this run needs about {est['total'] / gib:.1f} GiB of memory (weights, gradients and AdamW moments "
            f"{est['weights'] / gib:.2f} GiB; activations at batch_size {config.batch_size}, block_size "
            f"{config.block_size}, n_layer {config.n_layer}: {est['activations'] / gib:.1f} GiB), but only "
            f"{available / gib:.1f} GiB is available; lower batch_size, block_size, n_layer or n_embd")
    return est
