"""The comparison harness: one function, `compare`, runs a reference layer and its twin on the same
input, backpropagates the same random upstream gradient through both, and compares the output, the
input gradient and every parameter gradient by name under the policy in `tolerance.py`.

A check that cannot fail is a defect, so the harness also refuses the cases it cannot judge: a
parameter present on one side only, a gradient left uncompared, a result in the wrong dtype.
tests/test_harness.py feeds it wrong gradients and wrong forwards and asserts they are reported.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field

import numpy as np
import torch

from reference.layers import DropoutMasks, name_dropouts

from . import tolerance as tol_policy
from .twins import load_reference_state
from .twins import name_dropouts as name_twin_dropouts

TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def rel_error(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float, tuple]:
    """(err, max_abs, index of the worst element): err = max|a - b| / max|b| (see tolerance.py)."""
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
    scale = float(finite.max()) if finite.size else 0.0
    return (max_abs / scale if scale > 0 else max_abs), max_abs, tuple(int(i) for i in where)


@dataclass
class TensorCheck:
    """One compared tensor: its error, where the worst element is, and the tolerance it met or missed."""

    name: str
    kind: str                   # "forward", "input", "param"
    err: float
    max_abs: float
    where: tuple
    ours: float
    theirs: float
    tol: float

    @property
    def passed(self) -> bool:
        return bool(self.err <= self.tol)

    def line(self) -> str:
        mark = "ok  " if self.passed else "FAIL"
        return (f"  {mark} {self.name:<44} err {self.err:9.2e} (tol {self.tol:8.1e})  max|diff| {self.max_abs:9.2e}"
                f"  at {self.where}: ours {self.ours:+.10g} theirs {self.theirs:+.10g}")


@dataclass
class Report:
    """Everything one comparison found; `passed` only when every tensor passed and nothing was left out."""

    case: str
    dtype: str
    checks: list[TensorCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems and bool(self.checks) and all(c.passed for c in self.checks)

    def worst(self, kind: str) -> TensorCheck | None:
        of_kind = [c for c in self.checks if c.kind == kind]
        return max(of_kind, key=lambda c: c.err / c.tol) if of_kind else None

    def failures(self) -> list[str]:
        return self.problems + [c.line() for c in self.checks if not c.passed]

    def __str__(self) -> str:
        head = f"{self.case} [{self.dtype}]: {'PASS' if self.passed else 'FAIL'}"
        return "\n".join([head, *(f"  PROBLEM {p}" for p in self.problems), *(c.line() for c in self.checks)])


class ReplayMasks:
    """A mask source that hands back masks recorded earlier (for finite differences and replays)."""

    def __init__(self, drawn: dict[str, np.ndarray]):
        self.drawn = drawn

    def __call__(self, name, shape, p, dtype):
        return self.drawn[name]


def _at(a: np.ndarray, where: tuple) -> float:
    a = np.asarray(a, np.float64)
    return float(a[where]) if a.ndim == len(where) and a.size else float("nan")


def _param_grads(module) -> dict[str, np.ndarray]:
    return {name: p.grad for name, p in module.named_parameters()}


def run_reference(ref, inputs: tuple, dout_seed: int, masks=None):
    """Forward, a random upstream gradient, backward: (output, dout, input grad, {name: grad})."""
    ref.zero_grad()
    out, cache = ref.forward(*inputs, masks=masks) if masks is not None else ref.forward(*inputs)
    rng = np.random.default_rng(dout_seed)
    dout = np.asarray(rng.standard_normal(np.shape(out))).astype(np.asarray(out).dtype)
    dx = ref.backward(dout.copy(), cache)
    return np.asarray(out), dout, dx, _param_grads(ref)


def run_twin(twin, state: dict, inputs: tuple, dout: np.ndarray, dtype: torch.dtype, masks: dict | None = None):
    """The twin on the same inputs and upstream gradient, in `dtype`: (output, input grad, {name: grad})."""
    twin = copy.deepcopy(twin).to(dtype)
    load_reference_state(twin, state, dtype)
    tin = []
    for i, x in enumerate(inputs):
        t = torch.from_numpy(np.array(x))
        if t.is_floating_point():
            t = t.to(dtype).requires_grad_(i == 0)
        tin.append(t)
    out = twin(*tin, masks=masks) if masks is not None else twin(*tin)
    (out * torch.from_numpy(np.array(dout)).to(dtype)).sum().backward()
    dx = tin[0].grad.numpy() if tin and tin[0].grad is not None else None
    grads = {n: (p.grad.numpy() if p.grad is not None else np.zeros(tuple(p.shape))) for n, p in twin.named_parameters()}
    return out.detach().numpy(), dx, grads


def _check_accumulation(ref, inputs, seed, masks, grads, dtype, report: Report) -> None:
    """Gradients must accumulate (+=), or weight tying and gradient accumulation break silently.

    Pre-fill every .grad with the gradient just computed and run the same forward and backward again:
    a layer that accumulates ends with exactly twice the gradient (g + g is exact in floating point);
    one that assigns ends with g, an error of 1/2."""
    first = {n: g.copy() for n, g in grads.items()}
    if not first:
        return
    params = dict(ref.named_parameters())
    for n, g in first.items():
        params[n].grad[...] = g
    out, cache = ref.forward(*inputs, masks=masks) if masks is not None else ref.forward(*inputs)
    dout = np.asarray(np.random.default_rng(seed).standard_normal(np.shape(out))).astype(np.asarray(out).dtype)
    ref.backward(dout, cache)
    errs = {n: rel_error(params[n].grad, 2 * g) for n, g in first.items()}
    name = max(errs, key=lambda n: errs[n][0])
    err, max_abs, where = errs[name]
    tol = tol_policy.FLOAT64_TOL if dtype == np.float64 else tol_policy.FLOAT32_FLOOR
    report.checks.append(TensorCheck(f"{name}.grad accumulates (+=)", "accumulate", err, max_abs, where,
                                     _at(params[name].grad, where), _at(2 * first[name], where), tol))
    for n, g in first.items():                                 # leave the first run's gradients in place
        params[n].grad[...] = g


def compare(ref, twin, inputs: tuple, *, case: str = "layer", seed: int = 0, dropout: bool = False) -> Report:
    """Compare a reference layer with its twin: forward, input gradient and every parameter gradient.

    `twin` is a torch module with the same parameter names (any dtype; it is copied and cast).
    Inputs are numpy arrays; the first, if floating, is the one whose gradient is compared.
    float64 runs are judged against torch float64; float32 runs against torch float64 on the
    same inputs, relative to torch float32's own error (see tolerance.py).
    """
    name_dropouts(ref)
    name_twin_dropouts(twin)
    state = ref.state_dict()
    dtypes = {v.dtype for v in state.values()} | {np.asarray(x).dtype for x in inputs if np.asarray(x).dtype.kind == "f"}
    report = Report(case, "/".join(sorted(str(d) for d in dtypes)) or "float64")
    if len(dtypes) > 1:
        report.problems.append(f"mixed dtypes in parameters and inputs: {sorted(map(str, dtypes))}")
        return report
    dtype = dtypes.pop() if dtypes else np.dtype(np.float64)

    theirs = {k: tuple(v.shape) for k, v in twin.state_dict().items()}
    ours = {k: v.shape for k, v in state.items()}
    if ours != theirs:
        only_ours, only_theirs = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        shapes = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
        report.problems.append(f"parameters not compared: only in reference {only_ours}, only in twin {only_theirs}, "
                               f"different shapes {[(k, ours[k], theirs[k]) for k in shapes]}")
        return report
    if dropout and "masks" not in inspect.signature(ref.forward).parameters:
        report.problems.append("dropout was requested but the layer's forward takes no masks: no mask was drawn")
        return report
    masks = DropoutMasks(np.random.default_rng(seed + 1), record=True) if dropout else None
    out, dout, dx, grads = run_reference(ref, inputs, seed, masks)
    drawn = masks.drawn if masks is not None else None
    if dropout and not drawn:
        report.problems.append("dropout was requested but no mask was drawn: the dropout path went untested")
    t_out, t_dx, t_grads = run_twin(twin, state, inputs, dout, TORCH_DTYPES[dtype], drawn)
    truth = run_twin(twin, state, inputs, dout, torch.float64, drawn) if dtype == np.float32 else None

    for name, arr in [("output", out), ("input grad", dx), *grads.items()]:
        if arr is not None and arr.dtype != dtype:
            report.problems.append(f"{name} has dtype {arr.dtype}, expected {dtype} (silent up- or down-cast)")
    only_ours, only_theirs = sorted(set(grads) - set(t_grads)), sorted(set(t_grads) - set(grads))
    if only_ours or only_theirs:
        report.problems.append(f"parameters not compared: only in reference {only_ours}, only in twin {only_theirs}")
    if (dx is None) != (t_dx is None):
        report.problems.append(f"input gradient present on one side only (reference: {dx is not None}, twin: {t_dx is not None})")

    pairs = [("output", "forward", out, t_out, 0)]
    if dx is not None and t_dx is not None:
        pairs.append(("input grad", "input", dx, t_dx, 1))
    pairs += [(f"{n}.grad", "param", grads[n], t_grads[n], n) for n in grads if n in t_grads]
    if truth is not None:                                      # float32: torch's own error on each tensor
        expected_of = {key: truth[0] if key == 0 else truth[1] if key == 1 else truth[2][key] for *_, key in pairs}
        torch_errs = {key: rel_error(theirs, expected_of[key])[0] for _, _, _, theirs, key in pairs}
        typical = float(np.median(list(torch_errs.values())))
    for name, kind, ours, theirs, key in pairs:
        if truth is None:
            err, max_abs, where = rel_error(ours, theirs)
            tol, expected = tol_policy.FLOAT64_TOL, theirs
        else:
            expected = expected_of[key]
            err, max_abs, where = rel_error(ours, expected)
            tol = max(tol_policy.FLOAT32_FACTOR * max(torch_errs[key], typical), tol_policy.FLOAT32_FLOOR)
        if np.shape(ours) != np.shape(expected):
            report.problems.append(f"{name}: shape {np.shape(ours)} in the reference, {np.shape(expected)} in the twin")
        report.checks.append(TensorCheck(name, kind, err, max_abs, where, _at(ours, where), _at(expected, where), tol))
    _check_accumulation(ref, inputs, seed, ReplayMasks(drawn) if drawn else None, grads, dtype, report)
    return report
