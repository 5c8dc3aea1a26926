"""The NumPy code under test as every check sees it: `make_subject` validates and bundles the arguments
that `check`, `consistency_check` and `oracle.core.fd` share, and `Subject` runs the forward and the
backward and reads the gradients back. NumPy only.
"""

from __future__ import annotations

import linecache
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .masks import MaskTape, NumpyRandomReplay, _put, mask_tape
from .params import Param, as_param, tie
from .report import CheckError

ORACLE_STREAM = 0x0AC1E                 # the upstream gradient's own stream: never default_rng(seed)'s
_HERE = str(Path(__file__).resolve().parents[1])


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
            return one_output(call_code("forward", self.forward, inputs, {}))
        self.masks.start()
        with self.masks.context():
            out = call_code("forward", self.forward, inputs, self.masks.forward_kwargs())
        self.masks.finish()
        return one_output(out)

    def touch_order(self) -> list[str] | None:
        """The order in which one forward first touches each input that carries a gradient and each
        parameter, recorded by lending the code watched views of them; None when some parameter's home
        is unknown (a bare array or a closure: no ordering claim) or the code refuses the views."""
        if any(p.home is None for p in self.params.values()):
            return None
        log: list[str] = []
        homes = [(p.home, p.value) for p in self.params.values()]
        homes += [(t.home, t.value) for p in self.params.values() for t in p.tied.values() if t.home is not None]
        inputs = list(self.inputs)
        for i in self.grad_inputs:
            inputs[i] = watched(np.asarray(inputs[i]), self.input_names[i])
        _WATCH.append(log)
        try:
            for (holder, key), value in homes:
                _put(holder, key, watched(value, self._name_of(value)))
            self.run_forward(tuple(inputs))
        except Exception:                                      # noqa: BLE001 - the code refused the views
            return None
        finally:
            _WATCH.pop()
            for (holder, key), value in homes:
                _put(holder, key, value)
        order = list(dict.fromkeys(log))
        rest = [n for n, *_ in self.leaves() if n not in order]
        return order + rest

    def _name_of(self, value) -> str:
        return next(n for n, p in self.params.items() if p.value is value)

    def zero(self) -> None:
        if self.zero_grad is not None:
            self.zero_grad()
        for p in self.params.values():
            p.zero()

    def run_backward(self, dout: np.ndarray, strict: bool = True
                     ) -> tuple[list[np.ndarray | None], dict[str, np.ndarray | None]]:
        """(gradient of each grad input, {param: gradient}), copied out of the code's buffers. With
        `strict` a gradient of the wrong shape raises CheckError; without, it is returned as it is
        (check reports it as a failing row)."""
        result = call_code("backward", self.backward, (dout,), {})
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
            if strict and g is not None and np.shape(g) != np.shape(self.inputs[i]):
                raise CheckError(f"gradient of input {self.input_names[i]!r}: backward returned shape {np.shape(g)}, "
                                 f"the input has shape {np.shape(self.inputs[i])}")
        grads = {}
        for name, p in self.params.items():
            g = p.read_grad(name)
            if strict and g is not None and np.shape(g) != np.shape(p.value):
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
                         "lambda x: layer.forward(x)[0]; for a loss that returns (loss, dlogits), use oracle.check_loss)")
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
    params = tie({name: as_param(name, spec) for name, spec in (params or {}).items()})
    tape = mask_tape(masks)
    if isinstance(tape, NumpyRandomReplay) and tape.within is None:       # layer.forward: its Generators too
        tape.within = getattr(forward, "__self__", None)
    return Subject(forward, backward, inputs, params, tuple(resolved), input_names, tape, zero_grad)


def random_dout(out: np.ndarray, seed: int, avoid=()) -> np.ndarray:
    """The upstream gradient of a check: 1 for a scalar output (a loss); otherwise N(0, 1) of `out`'s shape
    and dtype from the oracle's own stream, SeedSequence(seed, spawn_key=(ORACLE_STREAM,)), never the
    default_rng(seed) stream users draw their inputs from; drawn again (the next spawn key) while it is
    nearly parallel (|cosine| > 0.9) to any array of `avoid` of the same size (the inputs and the
    parameters), so that a backward that returns its input, or confuses dout with x, cannot pass."""
    out = np.asarray(out)
    if out.ndim == 0:
        return np.ones((), out.dtype if out.dtype.kind == "f" else np.float64)
    candidates = [np.asarray(a, np.float64).reshape(-1) for a in avoid if np.size(a) == out.size and np.size(a) > 1]
    for k in range(16):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ORACLE_STREAM, k)))
        dout = np.asarray(rng.standard_normal(out.shape)).astype(out.dtype)
        flat = dout.astype(np.float64).reshape(-1)
        if all(abs(cosine(flat, a)) <= 0.9 for a in candidates):
            return dout
    raise CheckError("could not draw an upstream gradient unlike every input in 16 tries")


def seeded_dout(out: np.ndarray, seed: int) -> np.ndarray:
    """N(0, 1) of `out`'s shape and dtype from default_rng(seed) itself: for a caller that chooses that
    stream knowingly (the bridge's registered cases, whose examples were found with it), as
    `check(..., dout=lambda out: seeded_dout(out, seed))`."""
    return np.asarray(np.random.default_rng(seed).standard_normal(np.shape(out))).astype(np.asarray(out).dtype)


def upstream(out: np.ndarray, seed: int, dout=None, avoid=()) -> np.ndarray:
    """The upstream gradient a check uses, by `dout`: None, `random_dout` (1 for a scalar output); "random",
    the oracle's stream even for a scalar; a callable out -> array; or the array (or number) itself."""
    out = np.asarray(out)
    if dout is None:
        return random_dout(out, seed, avoid)
    if isinstance(dout, str):
        if dout != "random":
            raise CheckError(f"dout={dout!r}: give None, 'random', an array or a callable out -> array")
        return random_dout(out.reshape(out.shape or (1,)), seed, avoid).reshape(out.shape)
    value = np.asarray(dout(out) if callable(dout) else dout)
    if value.shape != out.shape and value.size == 1:
        value = np.full(out.shape, value.item())
    if value.shape != out.shape:
        raise CheckError(f"dout has shape {value.shape}, the output {out.shape}")
    return value.astype(out.dtype if out.dtype.kind == "f" else np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 and np.isfinite(na * nb) else 0.0


def call_code(what: str, fn, args, kwargs):
    """Run the code under test; an exception becomes one CheckError naming the call, the argument shapes,
    the line that raised and the original message."""
    try:
        return fn(*args, **kwargs)
    except CheckError:
        raise
    except Exception as e:
        shapes = ", ".join(str(np.shape(a)) if isinstance(a, np.ndarray) or np.ndim(a) else repr(a) for a in args)
        raise CheckError(f"the NumPy {what} raised {type(e).__name__}{raised_at(e)} during "
                         f"{what}({shapes}): {e}") from e


def raised_at(e: BaseException) -> str:
    """' at file:line (`source`)' for the innermost frame of the traceback outside numpy and the oracle."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith(_HERE) and f"{os.sep}numpy{os.sep}" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    line = (f.line or linecache.getline(f.filename, f.lineno)).strip()
    return f" at {Path(f.filename).name}:{f.lineno} (`{line}`)" if line else f" at {Path(f.filename).name}:{f.lineno}"


# ------------------------------------------------------------------ the order a forward first touches its arrays

_WATCH: list[list[str]] = []


def _plain(x):
    if isinstance(x, Watched):
        if _WATCH and x.watch_name is not None:
            _WATCH[-1].append(x.watch_name)
        return x.view(np.ndarray)
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    return x


class Watched(np.ndarray):
    """A view that logs its name the first time the code computes with it (ufuncs, numpy functions,
    indexing), and hands plain arrays to the computation."""

    watch_name: str | None = None

    def __array_finalize__(self, obj):
        self.watch_name = getattr(obj, "watch_name", None)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if "out" in kwargs:
            kwargs["out"] = _plain(kwargs["out"])
        return getattr(ufunc, method)(*_plain(inputs), **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        return func(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()})

    def __getitem__(self, index):
        return _plain(self)[_plain(index)]


def watched(a: np.ndarray, name: str) -> Watched:
    view = a.view(Watched)
    view.watch_name = name
    return view
