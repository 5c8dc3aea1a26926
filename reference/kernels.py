"""The one switch between the two paths: `use_kernels(module, "fast" | "textbook")`.

The textbook path (reference/layers.py, attention.py, model.py) is each layer written as its docs
page derives it. The fast path (reference/fast/) subclasses those classes and rewrites only their
forward and backward, so both share __init__, parameters, state_dict and the cache contract. A
module switches path by changing the class of each of its layers in place: no weight is touched,
and the choice is not part of any saved state. `GPT(config, kernels=...)` calls this.
"""

from __future__ import annotations

import argparse

from .module import Module

KERNELS = ("fast", "textbook")


def fast_classes() -> dict[type, type]:
    """{textbook class: its fast subclass}, for every layer that has a fast version."""
    from .fast import attention, layers, model               # imported here: fast/ subclasses the textbook

    return {cls.__mro__[1]: cls for cls in (layers.Embedding, layers.Linear, layers.LayerNorm, layers.GELU,
                                            layers.MLP, attention.CausalSelfAttention, model.Block)}


def use_kernels(root: Module, kernels: str) -> str:
    """Put every layer of `root` (itself included) on the chosen path, in place; returns `kernels`."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    fast = fast_classes()
    textbook = {f: t for t, f in fast.items()}
    for _, module in root.named_modules():
        cls = type(module)
        base = textbook.get(cls, cls)                          # the textbook class of either path
        module.__class__ = fast.get(base, base) if kernels == "fast" else base
    return kernels


def add_kernels_argument(parser: argparse.ArgumentParser) -> None:
    """`--kernels {fast,textbook}` for train, sample and bench (default fast)."""
    parser.add_argument("--kernels", choices=KERNELS, default="fast",
                        help="which implementation of the layers runs: fast (default) or textbook, the code the "
                             "docs derive (the same numbers to round-off; docs/performance.md)")
