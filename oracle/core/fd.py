"""The second oracle: central finite differences in float64, independent of PyTorch.

Three checks of the hand-written backward against the forward alone, each on any NumPy code given
as for `oracle.check` (forward, backward, inputs, params=..., grad_inputs=..., masks=...):

- `sampled_check`: for a fixed random upstream gradient dout, the scalar L = sum(f(x) * dout) has
  dL/dθ = the backward's gradient for every input or parameter θ; `coords` random coordinates of
  each are perturbed by ±h and (L(θ+h) - L(θ-h)) / 2h is compared with the analytic value.
- `jacobian_check`: the full Jacobian, as torch.autograd.gradcheck builds it: every coordinate of
  every input and parameter perturbed (columns), against the backward run once per output
  coordinate with a one-hot dout (rows). Meant for small sizes.
- `directional_check`: as JAX's check_grads: for a random direction v over all inputs and parameters,
  (L(θ+hv) - L(θ-hv)) / 2h against sum(<backward's gradient, v>), for all of them together and for
  each tensor alone.

All three need float64 inputs and parameters and raise CheckError otherwise (float32's round-off is
larger than the differences they measure), as they do for a backward that leaves a gradient unset.

They catch a layer and its twin that are wrong the same way (RoPE, ALiBi and the replayed dropout
masks are written by hand on both sides). Step and tolerance: tolerance.py. NumPy only; the project's
layers reach these checks through oracle/bridge/adapters.py.
"""

from __future__ import annotations

import numpy as np

from .report import CheckError, Report, TensorCheck, tensor_check
from .subject import Subject, grad_name, make_subject, upstream
from .tolerance import FD_STEP, FD_TOL, gradient_floors


def _subject(forward, backward, inputs, params, grad_inputs, input_names, masks, zero_grad) -> Subject:
    subject = make_subject(forward, backward, inputs, params=params, grad_inputs=grad_inputs,
                           input_names=input_names, masks=masks, zero_grad=zero_grad)
    for name, kind, array in subject.leaves():
        if np.asarray(array).dtype != np.float64:
            raise CheckError(f"finite differences need float64: {kind} {name!r} is {np.asarray(array).dtype}")
    # our own float64 copies of the inputs, perturbed in place below
    subject.inputs = tuple(np.array(x, dtype=np.float64 if np.asarray(x).dtype.kind == "f" else None, copy=True)
                           for x in subject.inputs)
    return subject


def _analytic(subject: Subject, seed: int, dout=None):
    """One forward (recording any dropout masks), dout, one backward: (dout, {leaf: gradient})."""
    subject.zero()
    out = subject.run_forward()
    dout = upstream(out, seed, dout, avoid=[*subject.inputs, *(p.value for p in subject.params.values())]
                    ).astype(np.float64)
    dx, grads = subject.run_backward(dout.copy())
    analytic = {}
    for (name, kind, array), g in zip(subject.leaves(), [*dx, *grads.values()]):
        if g is None:
            raise CheckError(f"the backward left no gradient for {kind} {name!r}")
        analytic[name] = np.asarray(g, np.float64)
    return dout, analytic


def _arrays(subject: Subject) -> list[tuple[str, str, np.ndarray]]:
    """(name, kind, the array perturbed in place): our input copies and the parameters themselves."""
    return [(name, kind, subject.inputs[subject.input_names.index(name)] if kind == "input" else subject.params[name].value)
            for name, kind, _ in subject.leaves()]


def _in_code_order(subject: Subject, report: Report) -> list[str] | None:
    """The leaves in the order the code's forward first touches them (Subject.touch_order): the report
    then says "the code's order"; None, and no ordering claim, when that order cannot be recorded."""
    order = subject.touch_order()
    report.order = "code" if order is not None else ""
    return order


def _sorted(checks: list, order: list[str] | None, names: list[str]) -> list:
    if order is None:
        return checks
    rank = {n: k for k, n in enumerate(order)}
    return [c for _, c in sorted(zip(names, checks), key=lambda t: rank.get(t[0], len(rank)))]


def sampled_check(forward, backward, inputs, *, params=None, grad_inputs=None, input_names=None, masks=None,
                  zero_grad=None, seed: int = 0, case: str = "check", coords: int = 12,
                  step: float = FD_STEP, dout=None) -> Report:
    """Analytic gradients against central differences at `coords` random coordinates of every input that
    carries a gradient and of every parameter, float64. One report line per tensor: `<name> (fd)`, in
    the order the code first touches them (or no ordering claim, `Report.order`). `dout` as for `check`."""
    report = Report(case, "float64 (finite differences)")
    subject = _subject(forward, backward, inputs, params, grad_inputs, input_names, masks, zero_grad)
    dout, analytic = _analytic(subject, seed, dout)
    arrays = _arrays(subject)
    floors = dict(zip(analytic, gradient_floors([k for _, k, _ in arrays], list(analytic.values()))))

    def loss() -> float:
        return float(np.sum(np.asarray(subject.run_forward(), np.float64) * dout))

    rng = np.random.default_rng(seed + 2)
    for name, kind, array in arrays:
        floor = floors[name]
        picks = rng.choice(array.size, size=min(coords, array.size), replace=False)
        numeric = np.empty(picks.size)
        for j, i in enumerate(picks):
            orig = array.flat[i]
            array.flat[i] = orig + step
            up = loss()
            array.flat[i] = orig - step
            down = loss()
            array.flat[i] = orig
            numeric[j] = (up - down) / (2 * step)
        sampled = analytic[name].reshape(-1)[picks]
        diff = np.abs(sampled - numeric)
        worst = int(np.argmax(diff)) if diff.size else 0
        scale = max(float(np.abs(analytic[name]).max(initial=0.0)), float(np.abs(numeric).max(initial=0.0)), floor)
        max_abs = float(diff[worst]) if diff.size else 0.0
        err = max_abs / scale if scale > 0 else max_abs
        where = tuple(int(k) for k in np.unravel_index(int(picks[worst]), array.shape)) if diff.size else ()
        report.checks.append(TensorCheck(f"{grad_name(name, kind)} (fd)", kind, err, max_abs, where,
                                         float(sampled[worst]) if diff.size else 0.0,
                                         float(numeric[worst]) if diff.size else 0.0, FD_TOL,
                                         sampled, numeric, floor))
    report.checks = _sorted(report.checks, _in_code_order(subject, report), [n for n, _, _ in arrays])
    return report


def jacobian_check(forward, backward, inputs, *, params=None, grad_inputs=None, input_names=None, masks=None,
                   zero_grad=None, seed: int = 0, case: str = "check", step: float = FD_STEP,
                   max_size: int = 20_000, dout=None) -> Report:
    """The full Jacobian d output / d leaf of every input that carries a gradient and every parameter,
    float64: numerically, column by column (2 forwards per coordinate), against the backward run once
    per output element with a one-hot upstream gradient. Each tensor's error is
    max|J_ours - J_numeric| / max(max|J_numeric|, the largest |J| of any tensor) (tolerance.md).
    Refuses (CheckError) when output size x leaf size exceeds `max_size`: use small sizes."""
    subject = _subject(forward, backward, inputs, params, grad_inputs, input_names, masks, zero_grad)
    report = Report(case, "float64 (full Jacobian)")
    subject.zero()
    out = np.asarray(subject.run_forward(), np.float64)             # records the dropout masks, if any
    leaves = _arrays(subject)
    total = sum(a.size for *_, a in leaves)
    if out.size * total > max_size:
        raise CheckError(f"the Jacobian would have {out.size} x {total} entries (more than max_size={max_size}); "
                         f"use smaller sizes")
    rows = {name: np.empty((out.size, a.size)) for name, _, a in leaves}
    for j in range(out.size):                                       # the backward's Jacobian, row by row
        onehot = np.zeros(out.size)
        onehot[j] = 1.0
        subject.zero()
        subject.run_forward()
        dx, grads = subject.run_backward(onehot.reshape(out.shape).astype(out.dtype))
        for (name, kind, _), g in zip(leaves, [*dx, *grads.values()]):
            if g is None:
                raise CheckError(f"the backward left no gradient for {kind} {name!r}")
            rows[name][j] = np.asarray(g, np.float64).reshape(-1)
    numeric = {}
    for name, _, array in leaves:                                   # the forward's, column by column
        cols = np.empty((out.size, array.size))
        for i in range(array.size):
            orig = array.flat[i]
            array.flat[i] = orig + step
            up = np.asarray(subject.run_forward(), np.float64).reshape(-1)
            array.flat[i] = orig - step
            down = np.asarray(subject.run_forward(), np.float64).reshape(-1)
            array.flat[i] = orig
            cols[:, i] = (up - down) / (2 * step)
        numeric[name] = cols
    floors = gradient_floors([k for _, k, _ in leaves], [numeric[n] for n, _, _ in leaves])
    for (name, kind, _), floor in zip(leaves, floors):
        report.checks.append(tensor_check(f"{grad_name(name, kind)} (jacobian)", kind, rows[name], numeric[name],
                                          FD_TOL, floor))
    report.checks = _sorted(report.checks, _in_code_order(subject, report), [n for n, _, _ in leaves])
    return report


def directional_check(forward, backward, inputs, *, params=None, grad_inputs=None, input_names=None, masks=None,
                      zero_grad=None, seed: int = 0, case: str = "check", step: float = FD_STEP,
                      dout=None) -> Report:
    """Directional derivatives, float64: with dout and a direction v ~ N(0, 1) over every input that carries
    a gradient and every parameter, (L(θ+hv) - L(θ-hv)) / 2h for L = sum(f * dout) against
    sum over tensors of <gradient, v>, relative to the norm of the gradient (the scale of that sum).
    One line per tensor moved alone, in the order the code first touches them (or no ordering claim,
    `Report.order`), then one for all of them moved together (kind "directional")."""
    subject = _subject(forward, backward, inputs, params, grad_inputs, input_names, masks, zero_grad)
    report = Report(case, "float64 (directional)")
    dout, analytic = _analytic(subject, seed, dout)
    rng = np.random.default_rng(seed + 3)
    leaves = _arrays(subject)
    direction = {name: rng.standard_normal(a.shape) for name, _, a in leaves}

    def loss() -> float:
        return float(np.sum(np.asarray(subject.run_forward(), np.float64) * dout))

    def derivative(names: list[str]) -> float:
        saved = {n: a.copy() for n, _, a in leaves if n in names}
        moved = [(a, direction[n], saved[n]) for n, _, a in leaves if n in names]
        for a, v, s in moved:
            a[...] = s + step * v
        up = loss()
        for a, v, s in moved:
            a[...] = s - step * v
        down = loss()
        for a, _, s in moved:
            a[...] = s
        return (up - down) / (2 * step)

    order = _in_code_order(subject, report)
    singles = _sorted([(grad_name(n, kind), kind, [n]) for n, kind, _ in leaves], order, [n for n, *_ in leaves])
    groups = singles + [("all gradients", "directional", [n for n, *_ in leaves])]
    norm = float(np.sqrt(sum(float(np.sum(g * g)) for g in analytic.values())))
    for label, kind, names in groups:
        numeric = derivative(names)
        exact = float(sum(np.sum(analytic[n] * direction[n]) for n in names))
        scale = max(norm, abs(exact))
        err = abs(numeric - exact) / scale if scale > 0 else abs(numeric - exact)
        report.checks.append(TensorCheck(f"{label} (directional)", kind, err, abs(numeric - exact), (), exact, numeric,
                                         FD_TOL, np.array(exact), np.array(numeric), norm))
    return report

