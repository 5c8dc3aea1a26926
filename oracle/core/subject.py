"""The NumPy code under test as every check sees it: `make_subject` validates and bundles the arguments
that `check`, `consistency_check` and `oracle.core.fd` share, and `Subject` runs the forward and the
backward and reads the gradients back. NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .masks import MaskTape, mask_tape
from .params import Param, as_param
from .report import CheckError


@dataclass
class Subject:
    """The NumPy code under test, as `check`, `consistency_check` and fd.py see it.

    forward(*inputs[, masks=...]) -> output array; backward(dout) -> the gradient of each input in
    `grad_inputs` (one array, or a tuple in that order; anything when no input carries a gradient).
    """

    forward: Callable
    backward: Callable
    inputs: tuple
    params: dict[str, Param]
    grad_inputs: tuple[int, ...]
    input_names: tuple[str, ...]
    masks: MaskTape | None = None
    zero_grad: Callable | None = None

    def run_forward(self, inputs=None) -> np.ndarray:
        inputs = self.inputs if inputs is None else inputs
        if self.masks is None:
            return one_output(self.forward(*inputs))
        self.masks.start()
        with self.masks.context():
            out = self.forward(*inputs, **self.masks.forward_kwargs())
        self.masks.finish()
        return one_output(out)

    def zero(self) -> None:
        if self.zero_grad is not None:
            self.zero_grad()
        for p in self.params.values():
            p.zero()

    def run_backward(self, dout: np.ndarray) -> tuple[list[np.ndarray | None], dict[str, np.ndarray | None]]:
        """(gradient of each grad input, {param: gradient}), copied out of the code's buffers."""
        result = self.backward(dout)
        n = len(self.grad_inputs)
        if n == 0:
            got = []
        elif n == 1 and not isinstance(result, (tuple, list)):
            got = [result]
        else:
            got = list(result) if isinstance(result, (tuple, list)) else [result]
            if len(got) != n:
                names = [self.input_names[i] for i in self.grad_inputs]
                raise CheckError(f"backward returned {len(got)} gradient(s), expected {n}: one per input that "
                                 f"carries a gradient ({', '.join(names)}), in that order")
        for i, g in zip(self.grad_inputs, got):
            if g is not None and np.shape(g) != np.shape(self.inputs[i]):
                raise CheckError(f"gradient of input {self.input_names[i]!r}: backward returned shape {np.shape(g)}, "
                                 f"the input has shape {np.shape(self.inputs[i])}")
        grads = {}
        for name, p in self.params.items():
            g = p.read_grad()
            if g is not None and np.shape(g) != np.shape(p.value):
                raise CheckError(f"gradient of parameter {name!r} has shape {np.shape(g)}, the parameter {np.shape(p.value)}")
            grads[name] = None if g is None else np.array(g, copy=True)
        return [None if g is None else np.array(g, copy=True) for g in got], grads

    def leaves(self) -> list[tuple[str, str, np.ndarray]]:
        """(name, kind, array) of everything that carries a gradient: grad inputs, then parameters."""
        out = [(self.input_names[i], "input", self.inputs[i]) for i in self.grad_inputs]
        return out + [(n, "param", p.value) for n, p in self.params.items()]


def grad_name(name: str, kind: str) -> str:
    """The report's name for a gradient: "x grad" for an input, "weight.grad" for a parameter."""
    return f"{name} grad" if kind == "input" else f"{name}.grad"


def one_output(out) -> np.ndarray:
    """The forward's one output array; a tuple (this project's `forward -> (y, cache)` protocol, or several
    outputs) is a CheckError that says what to do, not numpy's "inhomogeneous shape" error."""
    if isinstance(out, tuple):
        raise CheckError(f"forward returned a tuple of {len(out)}; check() takes a forward that returns one array "
                         "(for a layer with forward(x) -> (y, cache), use oracle.compare, or wrap it: "
                         "lambda x: layer.forward(x)[0])")
    return np.asarray(out)


def make_subject(forward, backward, inputs, *, params=None, grad_inputs=None, input_names=None, masks=None,
                 zero_grad=None) -> Subject:
    """Validate and bundle the arguments `check`, `consistency_check` and fd.py share (see `check`)."""
    if isinstance(inputs, np.ndarray):                         # one array given bare, not as (x,): not its rows
        raise CheckError(f"inputs is one array of shape {inputs.shape}; give a tuple of the forward's inputs, "
                         "e.g. (x,)")
    inputs = tuple(inputs)
    arrays = tuple(np.asarray(x) for x in inputs)
    if input_names is None:
        input_names = ("input",) if len(inputs) == 1 else tuple(f"input{i}" for i in range(len(inputs)))
    input_names = tuple(input_names)
    if len(input_names) != len(inputs):
        raise CheckError(f"input_names has {len(input_names)} names for {len(inputs)} inputs")
    if grad_inputs is None:
        grad_inputs = tuple(i for i, x in enumerate(arrays) if x.dtype.kind == "f")
    resolved = []
    for g in grad_inputs:
        if isinstance(g, str):
            if g not in input_names:
                raise CheckError(f"grad_inputs names {g!r}, which is not an input; inputs: {list(input_names)}")
            g = input_names.index(g)
        if not 0 <= g < len(inputs):
            raise CheckError(f"grad_inputs: index {g} is out of range for {len(inputs)} inputs")
        if arrays[g].dtype.kind != "f":
            raise CheckError(f"input {input_names[g]!r} has dtype {arrays[g].dtype}: only floating inputs carry gradients")
        resolved.append(g)
    params = {name: as_param(name, spec) for name, spec in (params or {}).items()}
    return Subject(forward, backward, inputs, params, tuple(resolved), input_names, mask_tape(masks), zero_grad)


def random_dout(out: np.ndarray, seed: int) -> np.ndarray:
    """The upstream gradient of a check: N(0, 1) of `out`'s shape and dtype, from default_rng(seed)."""
    rng = np.random.default_rng(seed)
    return np.asarray(rng.standard_normal(np.shape(out))).astype(np.asarray(out).dtype)
