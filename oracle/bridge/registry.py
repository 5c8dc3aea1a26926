"""The registry of cases: adding a layer to the proof is one `register(...)` line.

A case says how to build the reference layer and its twin for given dimensions, and what inputs
to feed them. Every generic check (the twin comparison in float64 and float32, hypothesis-drawn
shapes, finite differences, the verify table) runs over every registered case.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from reference.fast import use_kernels
from reference.module import Module


@dataclass(frozen=True)
class Dims:
    """The sizes a case may use. C = H * hd; Hkv divides H; T <= L (the context length)."""

    B: int = 2
    T: int = 5
    H: int = 2
    Hkv: int = 1
    hd: int = 4
    V: int = 11
    L: int = 8

    @property
    def C(self) -> int:
        return self.H * self.hd

    def replace(self, **changes) -> Dims:
        return replace(self, **changes)


def hidden(d: Dims, dtype, rng: np.random.Generator) -> tuple:
    """One float input of shape (B, T, C): the hidden states most layers take."""
    return (rng.standard_normal((d.B, d.T, d.C)).astype(dtype),)


def token_ids(d: Dims, dtype, rng: np.random.Generator) -> tuple:
    return (rng.integers(0, d.V, (d.B, d.T)),)


def perturb(module: Module, rng: np.random.Generator) -> None:
    """Replace initial weights by random ones of a useful scale, so that no gradient hides behind a
    weight of exactly 1 or a bias of exactly 0: matrices N(0, 1/fan_in) * 2, vectors 1 + N(0, 0.25)."""
    for _, p in module.named_parameters():
        shape = p.data.shape
        if len(shape) >= 2:
            p.data[...] = rng.standard_normal(shape) * (2.0 / np.sqrt(shape[-1]))
        else:
            p.data[...] = 1.0 + 0.5 * rng.standard_normal(shape)


@dataclass(frozen=True)
class Case:
    name: str
    ref: Callable[[Dims, np.dtype, np.random.Generator], Module]  # builds the reference layer
    twin: Callable[[Dims], object]                               # builds the torch twin (any dtype)
    inputs: Callable[[Dims, np.dtype, np.random.Generator], tuple] = hidden
    dropout: bool = False                                        # draw and share dropout masks
    fd: bool = True                                              # run the finite-difference oracle
    dims: Dims = Dims()                                          # the default sizes for this case
    small: Dims | None = None                                    # sizes for the full Jacobian (default: tiny(dims))

    def build(self, dtype, seed: int = 0, dims: Dims | None = None, kernels: str = "fast"):
        """(reference layer with perturbed weights, twin, inputs) for one run, the reference on the
        `kernels` path ("fast" or "textbook", reference/fast/kernels.py): the same weights either way."""
        d = dims or self.dims
        rng = np.random.default_rng(seed)
        ref = self.ref(d, np.dtype(dtype), rng)
        use_kernels(ref, kernels)
        perturb(ref, rng)
        return ref, self.twin(d), self.inputs(d, np.dtype(dtype), rng)


def tiny(d: Dims) -> Dims:
    """The smallest useful sizes of a case, for the full-Jacobian check: one sequence of 2 tokens, heads
    kept (the head layout is what GQA, MQA and ALiBi cases test), n_embd 4 per head pair, 5 classes."""
    return d.replace(B=1, T=2, hd=2 if d.H >= 2 else 4, V=5, L=3)


def small_dims(case: Case) -> Dims:
    """The sizes the full-Jacobian check runs a case at."""
    return case.small or tiny(case.dims)


REGISTRY: dict[str, Case] = {}


def register(name: str, ref, twin, inputs=hidden, **options) -> Case:
    """Add a case to the proof. `ref(d, dtype, rng)` and `twin(d)` build the two layers."""
    if name in REGISTRY:
        raise ValueError(f"a case named {name!r} is already registered")
    case = REGISTRY[name] = Case(name, ref, twin, inputs, **options)
    return case


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)
