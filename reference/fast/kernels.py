"""The one switch between the two paths: `use_kernels(module, "fast" | "textbook")`.

The textbook path (reference/layers.py, attention.py, model.py) is each layer written as its docs
page derives it, and `GPT(config)` builds it. The fast path (this package) subclasses those classes
and rewrites only their forward and backward, so both share __init__, parameters, state_dict and the
cache contract. A module switches path by changing the class of each of its layers in place: no
weight is touched, and the choice is not part of any saved state. The textbook never imports this
package; the programs (train, sample) call `use_kernels(model, "fast")` on the model they build.
Why a class swap rather than a second model class: docs/performance.md, "Choosing the path".
"""

from __future__ import annotations

from ..module import Module
from . import attention, layers, lora, loss, model

KERNELS = ("fast", "textbook")

# {textbook class: its fast subclass}, for every layer that has a fast version.
FAST_CLASSES: dict[type, type] = {
    cls.__mro__[1]: cls for cls in (layers.Embedding, layers.Linear, layers.LayerNorm, layers.GELU,
                                     layers.MLP, attention.CausalSelfAttention, model.Block,
                                     lora.LoRALinear, loss.CrossEntropyLoss)}


def use_kernels(root: Module, kernels: str = "fast") -> Module:
    """Put every layer of `root` (itself included) on the chosen path, in place; returns `root`.

    kernels: "fast" (this package) or "textbook" (the layers as docs/ derives them); the same weights
    and the same numbers to round-off either way (tests/test_paths.py). Raises ValueError for any
    other value."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    textbook = {f: t for t, f in FAST_CLASSES.items()}
    for _, module in root.named_modules():
        cls = type(module)
        base = textbook.get(cls, cls)                          # the textbook class of either path
        module.__class__ = FAST_CLASSES.get(base, base) if kernels == "fast" else base
    return root

