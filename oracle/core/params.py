"""The parameters of the code under test, as `check` and `oracle.core.fd` take them: `Param(value, grad)`,
where `grad` is the gradient array, a callable returning it, or an attribute name; `params_of(obj, names)`
for parameters stored as attributes. NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .report import CheckError


@dataclass
class Param:
    """One parameter of the code under test.

    `value` is the array the code reads (the very object: finite differences perturb it in place).
    `grad` says where its gradient is after a backward: the gradient array itself (an accumulation
    buffer such as `Parameter.grad`, zeroed by the harness before each run), a callable returning
    it (`lambda: layer.grad_W`), or the name of an attribute of `owner` (`"grad_W"`)."""

    value: np.ndarray
    grad: np.ndarray | Callable[[], np.ndarray] | str
    owner: Any = None

    def read_grad(self) -> np.ndarray | None:
        if isinstance(self.grad, np.ndarray):
            return self.grad
        if isinstance(self.grad, str):
            return getattr(self.owner, self.grad)
        return self.grad()

    def zero(self) -> None:
        if isinstance(self.grad, np.ndarray):
            self.grad[...] = 0


def params_of(obj, names: Sequence[str], grad: str = "grad_{}") -> dict[str, Param]:
    """Parameters stored as attributes of `obj`, their gradients in attributes named by `grad`:
    params_of(layer, ["W_q", "b_q"]) reads layer.W_q and, after a backward, layer.grad_W_q."""
    missing = [n for n in names if not hasattr(obj, n)]
    if missing:
        raise CheckError(f"{type(obj).__name__} has no attribute(s) {missing}: no such parameter")
    return {n: Param(getattr(obj, n), grad.format(n), obj) for n in names}


def as_param(name: str, spec) -> Param:
    """A Param from what `check` accepts for one parameter: a Param or a (value, grad) pair."""
    if isinstance(spec, Param):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        return Param(np.asarray(spec[0]) if not isinstance(spec[0], np.ndarray) else spec[0], spec[1])
    raise CheckError(f"parameter {name!r}: give a Param or a (value, grad) pair, got {type(spec).__name__}")
