"""`check`: any NumPy forward and backward against any torch function or module, number by number, under
the policy in `tolerance.py`. How to use it on your own code: docs/verifying-your-own-code.md.

    report = check(forward, backward, reference, inputs, params={"weight": (w, lambda: layer.grad_w)})

It runs our forward on `inputs`, backpropagates one random upstream gradient `dout`, and does the same
in torch (torch_side.py); then it compares the output, the gradient of every input that carries one and
every parameter gradient (by name, through an optional name map and named slices). A check that cannot
fail is a defect, so it also refuses what it cannot judge: a parameter of the reference that none
of ours covers, a result in the wrong dtype, a dropout run in which no mask was drawn. Misuse (an
unknown parameter name, shapes that differ between the two sides, a backward that returns the wrong
number of gradients) raises `CheckError`, naming the tensor.

Like all of oracle/core, this module imports nothing from `reference`: the project's own layers reach it
through oracle/bridge/adapters.py (`compare`). tests/test_harness.py feeds it wrong gradients and wrong
forwards and asserts they are reported.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .report import CheckError, Report, TensorCheck, rel_error, tensor_check, value_at
from .subject import Subject, grad_name, make_subject, random_dout
from .tolerance import (FLOAT32_FACTOR, FLOAT32_FLOOR, FLOAT64_TOL, ROUNDING_DRAWS, gradient_floors, one_rounding_off,
                        scale_floor)
from .torch_side import TORCH_DTYPES, resolve_mapping, run_torch, uncovered


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
    mapping = resolve_mapping(reference, subject.params, name_map)
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
    left_out = uncovered(mapping)
    if left_out:
        report.problems.append(f"parameters not compared: only in twin {left_out}")

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
    t_out, t_dx, t_grads = run_torch(reference, subject, mapping, values, dout, TORCH_DTYPES[dtype], drawn, order)
    truth = (run_torch(reference, subject, mapping, values, dout, torch.float64, drawn)
             if dtype == np.float32 else None)
    rounded = []                         # ill-conditioned: the truth, every input moved by one float32 rounding
    rng = np.random.default_rng(seed)
    for _ in range(ROUNDING_DRAWS if truth is not None and ill_conditioned else 0):
        nudge = functools.partial(one_rounding_off, rng=rng)
        rounded.append(run_torch(reference, subject, mapping, {n: nudge(v) for n, v in values.items()}, nudge(dout),
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
    out_floor = scale_floor([*floats, *values.values()])
    expected_of = [pick(truth or plain) for *_, pick in pairs]
    floors = [out_floor] + gradient_floors([p[1] for p in pairs[1:]], expected_of[1:])
    if truth is not None:                                      # float32: torch's own error on each tensor
        torch_errs = [rel_error(pick(plain), exp, fl)[0] for (*_, pick), exp, fl in zip(pairs, expected_of, floors)]
        typical = float(np.median(torch_errs))
        moved = [max((rel_error(pick(run), exp, fl)[0] for run in rounded), default=0.0)   # 0 unless ill_conditioned
                 for (*_, pick), exp, fl in zip(pairs, expected_of, floors)]
    for k, ((name, kind, ours, _), expected, floor) in enumerate(zip(pairs, expected_of, floors)):
        if truth is None:
            tol = FLOAT64_TOL
        else:
            tol = max(FLOAT32_FACTOR * max(torch_errs[k], typical, moved[k]), FLOAT32_FLOOR)
        if np.shape(ours) != np.shape(expected):
            raise CheckError(f"{name}: shape {np.shape(ours)} here, {np.shape(expected)} in the reference")
        report.checks.append(tensor_check(name, kind, ours, expected, tol, floor))
    if accumulates:
        check_accumulation(subject, grads, dout, dtype, report)
    return report


def check_accumulation(subject: Subject, grads: dict, dout: np.ndarray, dtype, report: Report) -> None:
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
    floor = scale_floor(first.values())
    errs = {n: rel_error(twice[n], 2 * g, 2 * floor) for n, g in first.items()}
    name = max(errs, key=lambda n: errs[n][0])
    tol = FLOAT64_TOL if dtype == np.float64 else FLOAT32_FLOOR
    err, max_abs, where = errs[name]
    report.checks.append(TensorCheck(f"{name}.grad accumulates (+=)", "accumulate", err, max_abs, where,
                                     value_at(twice[name], where), value_at(2 * first[name], where), tol,
                                     twice[name], 2 * first[name], 2 * floor))
