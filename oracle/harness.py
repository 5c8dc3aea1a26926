"""The comparison harness: `check` verifies any NumPy forward and backward against any torch function
or module, number by number, under the policy in `tolerance.py`. How to use it on your own code:
docs/verifying-your-own-code.md.

    report = check(forward, backward, reference, inputs, params={"weight": (w, lambda: layer.grad_w)})

It runs our forward on `inputs`, backpropagates one random upstream gradient `dout`, and does the same
in torch; then it compares the output, the gradient of every input that carries one and every
parameter gradient (by name, through an optional name map and named slices). A check that cannot
fail is a defect, so it also refuses what it cannot judge: a parameter of the reference that none
of ours covers, a result in the wrong dtype, a dropout run in which no mask was drawn. Misuse (an
unknown parameter name, shapes that differ between the two sides, a backward that returns the wrong
number of gradients) raises `CheckError`, naming the tensor.

`consistency_check` adds the checks the best gradient checkers make (torch's gradcheck and OpInfo
tests): backward run twice from one forward is bit-identical (or exactly doubles an accumulated
gradient), and non-contiguous inputs and upstream gradients give the same results.

This module imports nothing from `reference`: the project's own layers reach it through
`oracle/adapters.py` (`compare`). tests/test_harness.py feeds it wrong gradients and wrong forwards
and asserts they are reported.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from . import tolerance as tol_policy

TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


class CheckError(ValueError):
    """The check was called wrongly: the message names the tensor and says what was expected."""


# ---------------------------------------------------------------------------------------------- errors

def rel_error(ours: np.ndarray, theirs: np.ndarray, floor: float = 0.0) -> tuple[float, float, tuple]:
    """(err, max_abs, index of the worst element): err = max|a - b| / max(max|b|, floor).

    `floor` is the absolute floor of docs/tolerance.md: the scale of the computation, below which a
    tensor's own scale is not trusted (a gradient that is exactly zero in truth). Shapes that differ
    give an infinite error; NaN on one side only is a failure; NaN on both sides, or the same
    infinity, agree."""
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(theirs, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf"), float("inf"), ()
    if a.size == 0:
        return 0.0, 0.0, ()
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - b)
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    diff = np.where(both_nan | same_inf, 0.0, diff)
    diff = np.where(np.isnan(diff), np.inf, diff)              # nan on one side only is a failure
    where = np.unravel_index(int(np.argmax(diff)), diff.shape)
    max_abs = float(diff[where])
    finite = np.abs(b[np.isfinite(b)])
    scale = max(float(finite.max()) if finite.size else 0.0, float(floor))
    return (max_abs / scale if scale > 0 else max_abs), max_abs, tuple(int(i) for i in where)


@dataclass
class TensorCheck:
    """One compared tensor: its error, where the worst element is, the tolerance it met or missed,
    and both full arrays (`ours_array`, `expected_array`; None for checks without arrays)."""

    name: str
    kind: str                   # "forward", "input", "param", "accumulate", "repeat", "noncontiguous", "fd", ...
    err: float
    max_abs: float
    where: tuple
    ours: float                 # our value at `where`
    theirs: float               # the expected value at `where`
    tol: float
    ours_array: np.ndarray | None = field(default=None, repr=False)
    expected_array: np.ndarray | None = field(default=None, repr=False)
    floor: float = 0.0          # the absolute floor the error was measured with

    @property
    def passed(self) -> bool:
        return bool(self.err <= self.tol)

    def line(self) -> str:
        mark = "ok  " if self.passed else "FAIL"
        return (f"  {mark} {self.name:<44} err {self.err:9.2e} (tol {self.tol:8.1e})  max|diff| {self.max_abs:9.2e}"
                f"  at {self.where}: ours {self.ours:+.10g} theirs {self.theirs:+.10g}")


@dataclass
class Report:
    """Everything one comparison found; `passed` only when every tensor passed and nothing was left out.

    `checks` are in forward order: the output first, then the gradients in the order their tensors
    are first used by the reference's forward (inputs and parameters), then any extra checks."""

    case: str
    dtype: str
    checks: list[TensorCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    dout: np.ndarray | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return not self.problems and bool(self.checks) and all(c.passed for c in self.checks)

    def worst(self, kind: str) -> TensorCheck | None:
        of_kind = [c for c in self.checks if c.kind == kind]
        return max(of_kind, key=lambda c: c.err / c.tol) if of_kind else None

    @property
    def first_failure(self) -> TensorCheck | None:
        """The first failing tensor in forward order (None when every tensor passed)."""
        return next((c for c in self.checks if not c.passed), None)

    @property
    def last_failure(self) -> TensorCheck | None:
        """The failing gradient latest in forward order. A wrong backward corrupts every gradient computed
        after it, i.e. of every tensor used before it in the forward: the bug is usually in the backward
        of the step that comes right after this tensor in the forward."""
        grads = [c for c in self.checks if c.kind in ("input", "param") and not c.passed]
        return grads[-1] if grads else None

    def __getitem__(self, name: str) -> TensorCheck:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r} in this report; it has {[c.name for c in self.checks]}")

    def failures(self) -> list[str]:
        return self.problems + [c.line() for c in self.checks if not c.passed]

    def __str__(self) -> str:
        head = f"{self.case} [{self.dtype}]: {'PASS' if self.passed else 'FAIL'}"
        first, last = self.first_failure, self.last_failure
        tail = [f"  first failure in forward order: {first.name}"] if first is not None and not self.problems else []
        if tail and last is not None and last is not first:
            tail.append(f"  last failing gradient in forward order: {last.name} (a backward bug usually sits just after it)")
        return "\n".join([head, *(f"  PROBLEM {p}" for p in self.problems), *(c.line() for c in self.checks), *tail])


def _at(a: np.ndarray, where: tuple) -> float:
    a = np.asarray(a, np.float64)
    return float(a[where]) if a.ndim == len(where) and a.size else float("nan")


def tensor_check(name: str, kind: str, ours, expected, tol: float, floor: float = 0.0) -> TensorCheck:
    """Measure `ours` against `expected` (rel_error with `floor`) as one line of a report."""
    err, max_abs, where = rel_error(ours, expected, floor)
    return TensorCheck(name, kind, err, max_abs, where, _at(ours, where), _at(expected, where), tol,
                       None if ours is None else np.asarray(ours), None if expected is None else np.asarray(expected),
                       floor)


# ---------------------------------------------------------------------------------------------- parameters

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


def _as_param(name: str, spec) -> Param:
    if isinstance(spec, Param):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        return Param(np.asarray(spec[0]) if not isinstance(spec[0], np.ndarray) else spec[0], spec[1])
    raise CheckError(f"parameter {name!r}: give a Param or a (value, grad) pair, got {type(spec).__name__}")


# ---------------------------------------------------------------------------------------------- dropout masks

class MaskTape:
    """Makes the NumPy side's random draws repeatable and hands the same draws to torch.

    The first forward records; every later forward (finite differences, repeated runs) replays the
    recording. Subclasses say how the NumPy side receives masks (`forward_kwargs`, `context`) and
    what the torch side gets (`for_torch`): `reference(*tensors, masks=tape.for_torch())`."""

    def __init__(self):
        self.replaying = False

    def forward_kwargs(self) -> dict:
        return {}

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        yield

    def start(self) -> None:
        """Called before every forward: the first records, the rest replay."""

    def finish(self) -> None:
        """Called after every forward."""
        self.replaying = True

    def for_torch(self):
        raise NotImplementedError

    def empty(self) -> bool:
        raise NotImplementedError


class SourceMasks(MaskTape):
    """A mask source `source(name, shape, p, dtype) -> mask`, passed to the forward as `masks=`.
    Masks are recorded by name; torch gets the dict {name: mask}."""

    def __init__(self, source: Callable):
        super().__init__()
        self.source, self.drawn = source, {}

    def __call__(self, name, shape, p, dtype):
        if self.replaying:
            if name not in self.drawn:
                raise CheckError(f"dropout {name!r} drew a mask on a repeated forward but not on the first")
            return self.drawn[name]
        if name in self.drawn:
            raise CheckError(f"dropout {name!r} drew twice in one forward: masks are keyed by name, give each "
                             f"dropout its own name")
        self.drawn[name] = np.asarray(self.source(name, shape, p, dtype))
        return self.drawn[name]

    def forward_kwargs(self) -> dict:
        return {"masks": self}

    def for_torch(self):
        return dict(self.drawn)

    def empty(self) -> bool:
        return not self.drawn


class ListMasks(MaskTape):
    """Masks given as a list in draw order: the forward's `masks=` source hands them out one per draw
    (whatever name it asks by); torch gets the list."""

    def __init__(self, masks: Sequence[np.ndarray]):
        super().__init__()
        self.masks, self.next = [np.asarray(m) for m in masks], 0

    def start(self) -> None:
        self.next = 0

    def __call__(self, name=None, shape=None, p=None, dtype=None):
        if self.next >= len(self.masks):
            raise CheckError(f"the forward drew mask {self.next} ({name!r}) but only {len(self.masks)} were given")
        mask = self.masks[self.next]
        if shape is not None and tuple(mask.shape) != tuple(shape):
            raise CheckError(f"mask {self.next} ({name!r}): given shape {mask.shape}, the forward asked for {tuple(shape)}")
        self.next += 1
        return mask if dtype is None else mask.astype(dtype)

    def forward_kwargs(self) -> dict:
        return {"masks": self}

    def for_torch(self):
        return list(self.masks)

    def empty(self) -> bool:
        return not self.masks


_NP_RANDOM = ("rand", "random", "random_sample", "uniform", "binomial", "randn", "standard_normal", "normal",
              "randint", "choice", "permutation")


class NumpyRandomReplay(MaskTape):
    """Records the draws the NumPy code makes through `np.random.<fn>` (rand, random, uniform, binomial,
    randn, normal, randint, choice, ...) during the first forward, seeded with `seed`, and replays
    them, in draw order, on every later forward. torch gets the list of draws, in order.

    The code must call the functions through the module (`np.random.rand(...)`), not through names it
    imported before the check, and must not use a `Generator` of its own. The global NumPy random
    state is restored afterwards."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed, self.draws, self.next = seed, [], 0

    def start(self) -> None:
        self.next = 0

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        saved = {name: getattr(np.random, name) for name in _NP_RANDOM}
        state = np.random.get_state()
        if not self.replaying:
            np.random.seed(self.seed)

        def wrap(name, real):
            def drawn(*args, **kwargs):
                if not self.replaying:
                    out = real(*args, **kwargs)
                    self.draws.append((name, np.array(out, copy=True)))
                    return out
                if self.next >= len(self.draws):
                    raise CheckError(f"np.random.{name} was called on a repeated forward after all "
                                     f"{len(self.draws)} recorded draws were used: the forward must draw the same "
                                     f"way every time")
                recorded, value = self.draws[self.next]
                if recorded != name:
                    raise CheckError(f"draw {self.next}: the first forward called np.random.{recorded}, this one "
                                     f"np.random.{name}")
                self.next += 1
                return value.copy() if value.ndim else value[()]
            return drawn

        try:
            for name, real in saved.items():
                setattr(np.random, name, wrap(name, real))
            yield
        finally:
            for name, real in saved.items():
                setattr(np.random, name, real)
            np.random.set_state(state)

    def for_torch(self):
        return [value for _, value in self.draws]

    def empty(self) -> bool:
        return not self.draws


def mask_tape(masks) -> MaskTape | None:
    """A MaskTape from what `check` accepts: None, a MaskTape, a callable mask source or a list."""
    if masks is None or isinstance(masks, MaskTape):
        return masks
    if callable(masks):
        return SourceMasks(masks)
    if isinstance(masks, (list, tuple)):
        return ListMasks(masks)
    raise CheckError(f"masks: give a callable (name, shape, p, dtype) -> mask, a list in draw order or "
                     f"NumpyRandomReplay(seed), got {type(masks).__name__}")


# ---------------------------------------------------------------------------------------------- the code under test

@dataclass
class Subject:
    """The NumPy code under test, as `check` and `oracle.fd` see it.

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
            return _one_output(self.forward(*inputs))
        self.masks.start()
        with self.masks.context():
            out = self.forward(*inputs, **self.masks.forward_kwargs())
        self.masks.finish()
        return _one_output(out)

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
    return f"{name} grad" if kind == "input" else f"{name}.grad"


def _one_output(out) -> np.ndarray:
    """The forward's one output array; a tuple (this project's `forward -> (y, cache)` protocol, or several
    outputs) is a CheckError that says what to do, not numpy's "inhomogeneous shape" error."""
    if isinstance(out, tuple):
        raise CheckError(f"forward returned a tuple of {len(out)}; check() takes a forward that returns one array "
                         "(for a layer with forward(x) -> (y, cache), use oracle.compare, or wrap it: "
                         "lambda x: layer.forward(x)[0])")
    return np.asarray(out)


def make_subject(forward, backward, inputs, *, params=None, grad_inputs=None, input_names=None, masks=None,
                 zero_grad=None) -> Subject:
    """Validate and bundle the arguments `check` and `oracle.fd` share (see `check`)."""
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
    params = {name: _as_param(name, spec) for name, spec in (params or {}).items()}
    return Subject(forward, backward, inputs, params, tuple(resolved), input_names, mask_tape(masks), zero_grad)


def random_dout(out: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asarray(rng.standard_normal(np.shape(out))).astype(np.asarray(out).dtype)


# ---------------------------------------------------------------------------------------------- the torch side

class _FirstUse(TorchFunctionMode):
    """Records the order in which given tensors are first used by torch functions: forward order."""

    def __init__(self, watched: dict[int, str]):
        super().__init__()
        self.watched, self.order = watched, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in (*args, *kwargs.values()):
            for t in (a if isinstance(a, (list, tuple)) else (a,)):
                name = self.watched.get(id(t))
                if name is not None and name not in self.order:
                    self.order.append(name)
        return func(*args, **kwargs)


@dataclass
class _Mapping:
    """Where each of our parameters lives in the reference: (their name, index or None, transposed)."""

    targets: dict[str, tuple[str, Any, bool]]
    theirs: dict[str, tuple]                   # their parameter names and shapes


def _resolve_mapping(reference, params: dict[str, Param], name_map: Mapping | None) -> _Mapping:
    name_map = dict(name_map or {})
    unknown = sorted(set(name_map) - set(params))
    if unknown:
        raise CheckError(f"name_map names {unknown}, which are not among the params {sorted(params)}")
    if not params:
        return _Mapping({}, {n: tuple(p.shape) for n, p in reference.named_parameters()}
                        if isinstance(reference, torch.nn.Module) else {})
    if not isinstance(reference, torch.nn.Module):
        raise CheckError("params were given but the reference is a plain function, not a torch.nn.Module: "
                         "pass the parameters as inputs instead")
    theirs = {n: tuple(p.shape) for n, p in reference.named_parameters()}
    targets = {}
    for name, p in params.items():
        target = name_map.get(name, name)
        target = (target,) if isinstance(target, str) else tuple(target)
        if not 1 <= len(target) <= 3 or not isinstance(target[0], str) or (len(target) == 3 and target[2] != "T"):
            raise CheckError(f"name_map[{name!r}]: expected 'their name', (their name, index) or "
                             f"(their name, index, 'T'), got {target!r}")
        their_name, index, transpose = (*target, None, None)[:3]
        if their_name not in theirs:
            raise CheckError(f"parameter {name!r} maps to {their_name!r}, which the reference module does not have; "
                             f"it has {sorted(theirs)}")
        shape = tuple(torch.empty(theirs[their_name], device="meta")[index].shape) if index is not None \
            else theirs[their_name]
        shape = shape[::-1] if transpose else shape
        if tuple(np.shape(p.value)) != shape:
            where = their_name if index is None else f"{their_name}[{_index_text(index)}]"
            raise CheckError(f"parameter {name!r}: shape {tuple(np.shape(p.value))} here, {shape} in the reference "
                             f"({where}{', transposed' if transpose else ''})")
        targets[name] = (their_name, index, bool(transpose))
    return _Mapping(targets, theirs)


def _index_text(index) -> str:
    parts = index if isinstance(index, tuple) else (index,)
    text = []
    for s in parts:
        if isinstance(s, slice):
            text.append(f"{'' if s.start is None else s.start}:{'' if s.stop is None else s.stop}"
                        + (f":{s.step}" if s.step not in (None, 1) else ""))
        else:
            text.append(str(s))
    return ", ".join(text)


def _uncovered(mapping: _Mapping) -> list[str]:
    """Their parameters, or parts of them, that none of ours is loaded into (a gradient left uncompared)."""
    covered = {n: np.zeros(shape, bool) for n, shape in mapping.theirs.items()}
    for their_name, index, _ in mapping.targets.values():
        if index is None:
            covered[their_name][...] = True
        else:
            covered[their_name][index] = True
    return [n if not c.any() else f"{n} ({int((~c).sum())} of {c.size} elements)"
            for n, c in covered.items() if not c.all()]


def _run_reference(reference, subject: Subject, mapping: _Mapping, values: dict[str, np.ndarray],
                   dout: np.ndarray, dtype: torch.dtype, masks, order: list | None = None, inputs=None):
    """The reference on our inputs (or `inputs`) and parameter values, in `dtype`: (output, [input grads],
    {our name: grad})."""
    module = isinstance(reference, torch.nn.Module)
    fn = copy.deepcopy(reference).to(dtype) if module else reference
    theirs = dict(fn.named_parameters()) if module else {}
    with torch.no_grad():
        for name, (their_name, index, transpose) in mapping.targets.items():
            target = theirs[their_name] if index is None else theirs[their_name][index]
            value = torch.from_numpy(np.array(values[name])).to(dtype)
            target.copy_(value.T if transpose else value)
    tin = []
    for i, x in enumerate(subject.inputs if inputs is None else inputs):
        t = torch.from_numpy(np.array(x))
        if t.is_floating_point():
            t = t.to(dtype).requires_grad_(i in subject.grad_inputs)
        tin.append(t)
    kwargs = {} if masks is None else {"masks": masks}
    if order is not None:
        watched = {id(p): n for n, p in theirs.items()}
        watched.update({id(tin[i]): subject.input_names[i] for i in subject.grad_inputs})
        with _FirstUse(watched) as mode:
            out = fn(*tin, **kwargs)
        order.extend(mode.order)
    else:
        out = fn(*tin, **kwargs)
    if not isinstance(out, torch.Tensor):
        raise CheckError(f"the reference returned {type(out).__name__}, expected one torch.Tensor")
    if tuple(out.shape) != tuple(np.shape(dout)):
        raise CheckError(f"output: shape {tuple(np.shape(dout))} here, {tuple(out.shape)} in the reference")
    if out.requires_grad:
        (out * torch.from_numpy(np.array(dout)).to(dtype)).sum().backward()
    dx = [None if tin[i].grad is None else tin[i].grad.numpy() for i in subject.grad_inputs]
    grads = {}
    for name, (their_name, index, transpose) in mapping.targets.items():
        g = theirs[their_name].grad
        g = torch.zeros(theirs[their_name].shape, dtype=dtype) if g is None else g
        g = g if index is None else g[index]
        grads[name] = (g.T if transpose else g).detach().numpy()
    return out.detach().numpy(), dx, grads


# ---------------------------------------------------------------------------------------------- check

def check(forward: Callable, backward: Callable, reference, inputs: Sequence, *,
          params: Mapping[str, Any] | None = None, grad_inputs: Sequence[int | str] | None = None,
          input_names: Sequence[str] | None = None, name_map: Mapping[str, Any] | None = None,
          slices: Mapping[str, Mapping[str, Any]] | None = None, masks=None, accumulates: bool = False,
          zero_grad: Callable | None = None, seed: int = 0, case: str = "check",
          ill_conditioned: bool = False) -> Report:
    """Verify NumPy code against a torch function or module: forward, input gradients, parameter gradients.

    forward(*inputs) -> output: our forward, NumPy arrays in and out (one output array). With `masks`
        given as a callable or a list, it is called as forward(*inputs, masks=source), where
        source(name, shape, p, dtype) -> mask hands out the masks (recorded, then replayed).
    backward(dout) -> gradient(s): our backward for the last forward: the gradient of each input in
        `grad_inputs`, one array or a tuple in that order. Parameter gradients are read from `params`.
    reference: the torch side, called as reference(*tensors[, masks=...]) -> tensor: a function or a
        torch.nn.Module (copied and cast to the dtype; our parameter values are loaded into it).
    inputs: NumPy arrays; floating ones are cast to the run's dtype on the torch side.
    params: {our name: Param(value, grad) or (value, grad)}; grad is the gradient array, a callable
        returning it, or an attribute name of Param.owner (see `Param`, `params_of`).
    grad_inputs: which inputs carry gradients, by index or by name (default: every floating input).
    input_names: names for the inputs in the report (default "input", or "input0", "input1", ...).
    name_map: {our name: their name, or (their name, index), or (their name, index, "T")}: index
        selects part of their tensor (None for all of it), e.g. ("c_attn.weight", np.s_[0:C]) for our
        separate q_proj.weight; "T" says ours is its transpose, e.g. a (in, out) W_q against torch's
        (out, in) nn.Linear weight (default: the same name, the whole tensor).
    slices: {our name: {slice name: index}}: compare a parameter's gradient in named parts, e.g.
        {"c_attn.weight": {"q": np.s_[:C], "k": np.s_[C:2*C], "v": np.s_[2*C:]}}.
    masks: dropout masks: a callable mask source, a list of masks in draw order, or
        NumpyRandomReplay(seed) for code that draws with np.random; torch receives masks= the dict
        (by name) or the list (in draw order) that our forward drew.
    accumulates: our parameter gradients accumulate (+=): two backwards from one forward must give
        exactly twice the gradient (an extra report line, the worst tensor's).
    zero_grad: called before each forward/backward, for gradients the harness cannot zero itself
        (array gradients are zeroed in place).
    seed: the upstream gradient dout ~ N(0, 1) is drawn from default_rng(seed).
    ill_conditioned: for inputs known to be ill-conditioned only (docs/tolerance.md, "Ill-conditioned
        cases"): in float32, each tensor's yardstick also counts how far the float64 truth moves when
        every input, parameter and dout element is moved by one float32 rounding (the worst of
        tolerance.ROUNDING_DRAWS random draws, seeded by `seed`). No effect in float64.

    The run's dtype is that of the parameters and floating inputs (one of float32, float64). float64
    is judged against torch float64; float32 against torch float64 on the same values, relative to
    torch float32's own error (docs/tolerance.md). Raises CheckError on misuse, naming the tensor.
    """
    subject = make_subject(forward, backward, inputs, params=params, grad_inputs=grad_inputs,
                           input_names=input_names, masks=masks, zero_grad=zero_grad)
    mapping = _resolve_mapping(reference, subject.params, name_map)
    for name, parts in (slices or {}).items():
        if name not in subject.params:
            raise CheckError(f"slices names {name!r}, which is not among the params {sorted(subject.params)}")
        for part, index in parts.items():
            try:
                np.empty(np.shape(subject.params[name].value))[index]
            except IndexError as e:
                raise CheckError(f"slice {part!r} of {name!r} does not fit its shape {np.shape(subject.params[name].value)}: {e}") from None

    floats = [np.asarray(x) for x in subject.inputs if np.asarray(x).dtype.kind == "f"]
    dtypes = {np.asarray(p.value).dtype for p in subject.params.values()} | {x.dtype for x in floats}
    report = Report(case, "/".join(sorted(str(d) for d in dtypes)) or "float64")
    if len(dtypes) > 1:
        report.problems.append(f"mixed dtypes in parameters and inputs: {sorted(map(str, dtypes))}")
        return report
    dtype = dtypes.pop() if dtypes else np.dtype(np.float64)
    if dtype not in TORCH_DTYPES:
        raise CheckError(f"inputs and parameters are {dtype}; the check runs in float32 or float64")
    uncovered = _uncovered(mapping)
    if uncovered:
        report.problems.append(f"parameters not compared: only in twin {uncovered}")

    subject.zero()
    out = subject.run_forward()
    dout = random_dout(out, seed)
    report.dout = dout
    dx, grads = subject.run_backward(dout.copy())
    if masks is not None and subject.masks.empty():
        report.problems.append("dropout masks were requested but no mask was drawn: the dropout path went untested")
    drawn = subject.masks.for_torch() if subject.masks is not None else None
    values = {n: np.asarray(p.value) for n, p in subject.params.items()}
    order: list[str] = []
    t_out, t_dx, t_grads = _run_reference(reference, subject, mapping, values, dout, TORCH_DTYPES[dtype], drawn, order)
    truth = (_run_reference(reference, subject, mapping, values, dout, torch.float64, drawn)
             if dtype == np.float32 else None)
    rounded = []                         # ill-conditioned: the truth, every input moved by one float32 rounding
    rng = np.random.default_rng(seed)
    for _ in range(tol_policy.ROUNDING_DRAWS if truth is not None and ill_conditioned else 0):
        nudge = functools.partial(tol_policy.one_rounding_off, rng=rng)
        rounded.append(_run_reference(reference, subject, mapping, {n: nudge(v) for n, v in values.items()}, nudge(dout),
                                      torch.float64, drawn, inputs=[nudge(x) for x in subject.inputs]))

    named_dx = {subject.input_names[i]: g for i, g in zip(subject.grad_inputs, dx)}
    for name, arr in [("output", out), *((grad_name(n, "input"), g) for n, g in named_dx.items()),
                      *((f"{n}.grad", g) for n, g in grads.items())]:
        if arr is not None and arr.dtype != dtype:
            report.problems.append(f"{name} has dtype {arr.dtype}, expected {dtype} (silent up- or down-cast)")

    # (name, kind, ours, pick) in forward order: pick(run) takes the tensor from a reference run (out, dx, grads)
    pairs = [("output", "forward", out, lambda run: run[0])]
    grad_pairs = []
    for j, i in enumerate(subject.grad_inputs):
        iname = subject.input_names[i]
        if (dx[j] is None) != (t_dx[j] is None):
            what = "input gradient" if len(subject.grad_inputs) == 1 and iname == "input" else f"gradient of {iname!r}"
            report.problems.append(f"{what} present on one side only (reference: {dx[j] is not None}, "
                                   f"twin: {t_dx[j] is not None})")
        elif dx[j] is not None:
            grad_pairs.append((iname, grad_name(iname, "input"), "input", dx[j], lambda run, j=j: run[1][j]))
    for name in subject.params:
        if grads[name] is None:
            report.problems.append(f"parameter {name!r}: the backward left no gradient")
            continue
        parts = (slices or {}).get(name)
        for part, index in (parts.items() if parts else [(None, None)]):
            sel = (lambda a: a) if index is None else (lambda a, ix=index: None if a is None else a[ix])
            label = f"{name}.grad" if part is None else f"{name}.grad[{part}]"
            grad_pairs.append((name, label, "param", sel(grads[name]), lambda run, n=name, sel=sel: sel(run[2][n])))
    position = {n: k for k, n in enumerate(order)}
    first_use = {n: position.get(mapping.targets[n][0] if n in mapping.targets else n, len(position))
                 for n, *_ in grad_pairs}
    grad_pairs.sort(key=lambda g: first_use[g[0]])          # stable: the given order among equals
    pairs += [g[1:] for g in grad_pairs]

    plain = (t_out, t_dx, t_grads)
    out_floor = tol_policy.scale_floor([*floats, *values.values()])
    expected_of = [pick(truth or plain) for *_, pick in pairs]
    floors = [out_floor] + tol_policy.gradient_floors([p[1] for p in pairs[1:]], expected_of[1:])
    if truth is not None:                                      # float32: torch's own error on each tensor
        torch_errs = [rel_error(pick(plain), exp, fl)[0] for (*_, pick), exp, fl in zip(pairs, expected_of, floors)]
        typical = float(np.median(torch_errs))
        moved = [max((rel_error(pick(run), exp, fl)[0] for run in rounded), default=0.0)   # 0 unless ill_conditioned
                 for (*_, pick), exp, fl in zip(pairs, expected_of, floors)]
    for k, ((name, kind, ours, _), expected, floor) in enumerate(zip(pairs, expected_of, floors)):
        if truth is None:
            tol = tol_policy.FLOAT64_TOL
        else:
            tol = max(tol_policy.FLOAT32_FACTOR * max(torch_errs[k], typical, moved[k]), tol_policy.FLOAT32_FLOOR)
        if np.shape(ours) != np.shape(expected):
            raise CheckError(f"{name}: shape {np.shape(ours)} here, {np.shape(expected)} in the reference")
        report.checks.append(tensor_check(name, kind, ours, expected, tol, floor))
    if accumulates:
        _check_accumulation(subject, grads, dout, dtype, report)
    return report


def _check_accumulation(subject: Subject, grads: dict, dout: np.ndarray, dtype, report: Report) -> None:
    """Gradients must accumulate (+=), or weight tying and gradient accumulation break silently.

    Two forwards and backwards with the same inputs and dout, gradients zeroed only before the first
    (gradient accumulation over micro-batches does exactly this): a layer that accumulates ends with
    exactly twice the gradient (g + g is exact in floating point); one that assigns ends with g, an
    error of 1/2. The report gets one line, for the worst tensor."""
    first = {n: g for n, g in grads.items() if g is not None}
    if not first:
        return
    subject.zero()
    for _ in range(2):
        subject.run_forward()
        _, twice = subject.run_backward(dout.copy())
    floor = tol_policy.scale_floor(first.values())
    errs = {n: rel_error(twice[n], 2 * g, 2 * floor) for n, g in first.items()}
    name = max(errs, key=lambda n: errs[n][0])
    tol = tol_policy.FLOAT64_TOL if dtype == np.float64 else tol_policy.FLOAT32_FLOOR
    err, max_abs, where = errs[name]
    report.checks.append(TensorCheck(f"{name}.grad accumulates (+=)", "accumulate", err, max_abs, where,
                                     _at(twice[name], where), _at(2 * first[name], where), tol,
                                     twice[name], 2 * first[name], 2 * floor))


# ---------------------------------------------------------------------------------------------- consistency

def noncontiguous(a: np.ndarray, how: str) -> np.ndarray:
    """The same values as a non-contiguous view: "transposed" (reversed memory layout, a transposed
    view of a contiguous array) or "strided" (every other element of a larger buffer)."""
    a = np.asarray(a)
    if how == "transposed":
        view = np.ascontiguousarray(a.T).T
    else:
        buf = np.zeros(a.shape[:-1] + (2 * a.shape[-1],) if a.ndim else (2,), a.dtype)
        view = buf[..., ::2] if a.ndim else buf[::2][0, ...]
        view[...] = a
    assert np.array_equal(view, a, equal_nan=True)
    return view


def consistency_check(forward: Callable, backward: Callable, inputs: Sequence, *, params=None, grad_inputs=None,
                      input_names=None, masks=None, accumulates: bool = False, zero_grad=None, seed: int = 0,
                      case: str = "check") -> Report:
    """What torch's gradcheck and OpInfo tests also ask of a backward, with no torch involved.

    - repeat: backward run twice from one forward gives bit-identical input gradients, and parameter
      gradients bit-identical to the first (or, with `accumulates`, twice the first: exactly for a
      gradient with one contribution, to round-off for a tied one, whose two contributions are rounded
      as they are added). A backward
      whose cache serves one call and that refuses a second with a RuntimeError passes (it cannot
      return a wrong gradient); one that silently returns something else fails;
    - non-contiguous: the same forward and backward on transposed views of the inputs with a strided
      upstream gradient, and on strided inputs with a transposed upstream gradient, agree with the
      contiguous run: bit for bit in the output, and within the dtype's round-off tolerance in the
      gradients (a product may take another BLAS kernel on another layout).
    Arguments as for `check`."""
    subject = make_subject(forward, backward, inputs, params=params, grad_inputs=grad_inputs,
                           input_names=input_names, masks=masks, zero_grad=zero_grad)
    dtypes = {np.asarray(p.value).dtype for p in subject.params.values()} | {
        np.asarray(x).dtype for x in subject.inputs if np.asarray(x).dtype.kind == "f"}
    dtype = max(dtypes, key=lambda d: d.itemsize) if dtypes else np.dtype(np.float64)
    tol = tol_policy.FLOAT64_TOL if dtype == np.float64 else tol_policy.FLOAT32_FLOOR
    report = Report(case, f"{dtype} (consistency)")

    subject.zero()
    out = subject.run_forward()
    dout = random_dout(out, seed)
    dx1, g1 = subject.run_backward(dout.copy())
    round_off = tol
    floor = tol_policy.scale_floor([g for g in g1.values() if g is not None])
    leaves = [(grad_name(subject.input_names[i], "input"), "input", a, a) for i, a in zip(subject.grad_inputs, dx1)]
    leaves += [(f"{n}.grad", "param", g1[n], g1[n]) for n in subject.params]
    try:
        if accumulates:
            dx2, g2 = subject.run_backward(dout.copy())
            g2 = {n: None if g is None else g - g1[n] for n, g in g2.items()}    # exact when it accumulates: 2g - g
        else:
            subject.zero()
            dx2, g2 = subject.run_backward(dout.copy())
    except RuntimeError as e:                                  # a single-use cache that says so is safe
        report.checks.append(TensorCheck(f"backward twice: refused ({e})", "repeat", 0.0, 0.0, (), 0.0, 0.0, 0.0))
    else:
        leaves = [(name, kind, a, b) for (name, kind, a, _), b in zip(leaves, [*dx2, *g2.values()])]
        for name, _, a, b in leaves:
            if a is None or b is None:
                continue
            if accumulates and name.endswith(".grad"):         # g + (a + b) is not 2 (a + b) bit for bit when
                report.checks.append(tensor_check(f"{name} accumulates (2x, from one forward)", "repeat", b, a,
                                                  round_off, floor))   # a tied gradient sums a and b: round-off
            else:
                report.checks.append(tensor_check(f"{name} backward twice, bit-identical", "repeat", b, a, 0.0))

    floor = tol_policy.scale_floor([a for *_, a, _ in leaves])
    for layout_in, layout_dout in (("transposed", "strided"), ("strided", "transposed")):
        nc_inputs = tuple(noncontiguous(x, layout_in) if np.ndim(x) else x for x in subject.inputs)
        subject.zero()
        nc_out = subject.run_forward(nc_inputs)
        nc_dx, nc_g = subject.run_backward(noncontiguous(dout, layout_dout) if np.ndim(dout) else dout.copy())
        tag = f"(inputs {layout_in}, dout {layout_dout})"
        report.checks.append(tensor_check(f"output {tag}", "noncontiguous", nc_out, out, tol,
                                          tol_policy.scale_floor([out])))
        got = [(grad_name(subject.input_names[i], "input"), a, b) for i, a, b in zip(subject.grad_inputs, nc_dx, dx1)]
        got += [(f"{n}.grad", nc_g[n], g1[n]) for n in subject.params]
        for name, a, b in got:
            if a is not None and b is not None:
                report.checks.append(tensor_check(f"{name} {tag}", "noncontiguous", a, b, tol, floor))
    return report


def __getattr__(name: str):
    """Compatibility: `compare`, `run_reference`, `run_twin` and `ReplayMasks` moved to oracle.adapters
    (they know the project's layer protocol; this module does not import `reference`)."""
    if name in ("compare", "run_reference", "run_twin", "ReplayMasks"):
        from . import adapters
        return getattr(adapters, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
