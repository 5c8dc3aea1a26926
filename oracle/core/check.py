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
import inspect
import itertools
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .report import CheckError, Report, TensorCheck, rel_error, tensor_check, value_at
from .dropout import misapplied_dropout
from .masks import Draws, NumpyRandomReplay
from .subject import Subject, call_code, grad_name, make_subject, upstream
from .tolerance import (FLOAT32_FACTOR, FLOAT32_FLOOR, FLOAT64_TOL, ROUNDING_DRAWS, gradient_floors, one_rounding_off,
                        scale_floor)
from .torch_side import TORCH_DTYPES, resolve_mapping, run_torch, uncovered


def check(forward: Callable, backward: Callable, reference, inputs: Sequence, *,
          params: Mapping[str, Any] | None = None, grad_inputs: Sequence[int | str] | None = None,
          input_names: Sequence[str] | None = None, name_map: Mapping[str, Any] | None = None,
          slices: Mapping[str, Mapping[str, Any]] | None = None, masks=None, accumulates: bool = False,
          zero_grad: Callable | None = None, seed: int = 0, case: str = "check",
          ill_conditioned: bool = False, dout=None) -> Report:
    """Verify NumPy code against a torch function or module: forward, input gradients, parameter gradients.

    forward(*inputs) -> output: our forward, NumPy arrays in and out (one output array). With `masks`
        given as a callable or a list, it is called as forward(*inputs, masks=source), where
        source(name, shape, p, dtype) -> mask hands out the masks (recorded, then replayed).
    backward(dout) -> gradient(s): our backward for the last forward: the gradient of each input in
        `grad_inputs`, one array or a tuple in that order. Parameter gradients are read from `params`.
    reference: the torch side, called as reference(*tensors[, masks=...]) -> tensor: a torch.nn.Module
        (copied and cast to the dtype; our parameter values are loaded into it), or a plain function,
        which receives the parameters as named tensors too: reference(*tensors, **{their name: tensor}).
    inputs: NumPy arrays; floating ones are cast to the run's dtype on the torch side.
    params: {our name: Param(value, grad) or (value, grad)}; grad is the gradient array, a callable
        returning it, or an attribute path on Param.owner (see `Param`); `params_of(obj)` finds them.
        The same array under two names (a tied weight) is one parameter, checked once (the first
        name's gradient); when it fails, the report says which share the code left out.
    grad_inputs: which inputs carry gradients, by index or by name (default: every floating input).
    input_names: names for the inputs in the report (default "input", or "input0", "input1", ...).
    name_map: where each of ours lives in the reference: {our name: their name, or (their name, index),
        or (their name, index, "T")}: index selects part of their tensor (None for all of it), e.g.
        ("c_attn.weight", np.s_[0:C]) for our separate q_proj.weight; "T" says ours is its transpose,
        e.g. a (in, out) W_q against torch's (out, in) nn.Linear weight. Or a callable our name -> one
        of those (None: the same name), or a list of rules [(regex, target), ...], the first whose
        regex matches all of our name wins, the target's strings expanded with \\1 (re.Match.expand);
        unmatched names keep their own. Default: the same name, the whole tensor. Two of ours mapped to
        the same tensor are compared once, against the sum of their gradients.
    slices: {our name: {slice name: index}}: compare a parameter's gradient in named parts, e.g.
        {"c_attn.weight": {"q": np.s_[:C], "k": np.s_[C:2*C], "v": np.s_[2*C:]}}.
    masks: dropout masks: a callable mask source, a list of masks in draw order, or
        NumpyRandomReplay(seed, within=obj) for code that draws with np.random or a Generator; a
        reference that takes masks= receives the dict (by name) or the list (in draw order) that our
        forward drew, and oracle.core.dropout.RecordedDropout layers take the draws in order. The
        report counts the draws recorded, used and left over (a leftover is a problem).
    accumulates: our parameter gradients accumulate (+=): two backwards from one forward must give
        exactly twice the gradient (an extra report line, the worst tensor's).
    zero_grad: called before each forward/backward, for gradients the harness cannot zero itself
        (array gradients are zeroed in place).
    seed: seeds the oracle's own stream for the upstream gradient (subject.random_dout: never the
        default_rng(seed) stream users draw inputs from; redrawn while parallel to an input).
    dout: None (random, or 1 for a scalar output such as a loss), "random" (random even for a
        scalar), an array, or a callable output -> array.
    ill_conditioned: for inputs known to be ill-conditioned only (docs/tolerance.md, "Ill-conditioned
        cases"): in float32, each tensor's yardstick also counts how far the float64 truth moves when
        every input, parameter and dout element is moved by one float32 rounding (the worst of
        tolerance.ROUNDING_DRAWS random draws, seeded by `seed`). No effect in float64.

    The run's dtype is that of the parameters and floating inputs (one of float32, float64). float64
    is judged against torch float64; float32 against torch float64 on the same values, relative to
    torch float32's own error (docs/tolerance.md). A defect of the code under test (a gradient of the
    wrong shape or dtype, or none) is a failing row, and the other rows are still measured. Raises
    CheckError on misuse, naming the tensor, and when the forward, backward or reference raises
    (naming the call, the tensors and the original message).
    """
    subject = make_subject(forward, backward, inputs, params=params, grad_inputs=grad_inputs,
                           input_names=input_names, masks=masks, zero_grad=zero_grad)
    mapping = resolve_mapping(reference, subject.params, name_map,
                              aliases={a for p in subject.params.values() for a in p.tied})
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
    dout = upstream(out, seed, dout, avoid=[*floats, *(p.value for p in subject.params.values())])
    report.dout = dout
    dx, grads = subject.run_backward(dout.copy(), strict=False)
    shares = {n: {a: t.read_grad(a) for a, t in p.tied.items()} for n, p in subject.params.items() if p.tied}
    shares = {n: {a: None if g is None else np.array(g, copy=True) for a, g in s.items()} for n, s in shares.items()}
    if masks is not None and subject.masks.empty() and not isinstance(subject.masks, NumpyRandomReplay):
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

    if isinstance(drawn, Draws) and isinstance(subject.masks, NumpyRandomReplay):
        report.draws = drawn.summary()
        left = [i for i in range(len(drawn)) if i not in drawn.used]
        if drawn.used and left:
            report.problems.append(f"{len(left)} of {len(drawn)} random draws left over (the first: draw {left[0]}, "
                                   f"{drawn.labels[left[0]]}): the reference took fewer draws than the NumPy "
                                   f"forward made")

    # (name, kind, ours, pick) in forward order: pick(run) takes the tensor from a reference run (out, dx, grads)
    pairs = [("output", "forward", out, lambda run: run[0])]
    grad_pairs = []
    for j, i in enumerate(subject.grad_inputs):
        iname = subject.input_names[i]
        if dx[j] is not None or t_dx[j] is not None:
            grad_pairs.append((iname, grad_name(iname, "input"), "input", dx[j], lambda run, j=j: run[1][j]))
    shared = {g[0]: g for g in mapping.shared()}
    in_group = {n for g in shared.values() for n in g[1:]}
    for name in subject.params:
        if name in in_group:
            continue
        if name in shared:                 # two of ours loaded into one tensor: compared once, as their sum
            group = shared[name]
            differ = [n for n in group[1:] if not np.array_equal(values[n], values[name])]
            if differ:
                report.problems.append(f"{', '.join(group)} are loaded into one tensor of the reference "
                                       f"({mapping.targets[name][0]}), but {differ} differ from {name!r}")
            parts = [grads[n] for n in group]
            total = None if any(g is None or np.shape(g) != np.shape(parts[0]) for g in parts) else sum(parts)
            grad_pairs.append((name, " + ".join(f"{n}.grad" for n in group), "param", total,
                               lambda run, n=name: run[2][n]))
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
        torch_errs = [comparable_error(pick(plain), exp, fl) for (*_, pick), exp, fl in zip(pairs, expected_of, floors)]
        typical = float(np.median(torch_errs))
        moved = [max((comparable_error(pick(run), exp, fl) for run in rounded), default=0.0)   # 0 unless ill_conditioned
                 for (*_, pick), exp, fl in zip(pairs, expected_of, floors)]
    for k, ((name, kind, ours, _), expected, floor) in enumerate(zip(pairs, expected_of, floors)):
        if truth is None:
            tol = FLOAT64_TOL
        else:
            tol = max(FLOAT32_FACTOR * max(torch_errs[k], typical, moved[k]), FLOAT32_FLOOR)
        defect = defect_of(name, kind, ours, expected, dtype)
        if ours is None or expected is None or np.shape(ours) != np.shape(expected):
            row = TensorCheck(name, kind, float("inf"), float("inf"), (), float("nan"), float("nan"), tol,
                              None if ours is None else np.asarray(ours),
                              None if expected is None else np.asarray(expected), floor)
        else:
            row = tensor_check(name, kind, ours, expected, tol, floor)
        row.defect = defect
        report.checks.append(row)
    head = report.checks[0]
    if not head.passed and not head.defect and isinstance(drawn, Draws) and len(drawn):
        def rerun(trial) -> bool:
            try:
                theirs = run_torch(trial, subject, mapping, values, dout, TORCH_DTYPES[dtype], drawn)[0]
            except CheckError:
                return False
            return comparable_error(out, theirs, head.floor) <= head.tol
        head.note = misapplied_dropout(reference, rerun)
    for row in report.checks:
        base = row.name[:-len(".grad")] if row.name.endswith(".grad") else None
        if base in shares:
            row.note = tied_note(base, row, grads[base], shares[base], subject.params[base])
        elif " + " in row.name and not row.passed:
            group = shared[row.name.split(" + ")[0][:-len(".grad")]]
            row.note = sum_note(group, row, grads)
    if accumulates:
        check_accumulation(subject, grads, dout, dtype, report)
    return report


def comparable_error(a, b, floor: float) -> float:
    """rel_error's err, or 0 where there is nothing to measure (a gradient absent, or of another shape:
    those rows fail by their defect, and must not widen the float32 yardstick of the others)."""
    if a is None or b is None or np.shape(a) != np.shape(b):
        return 0.0
    return rel_error(a, b, floor)[0]


def defect_of(name: str, kind: str, ours, expected, dtype) -> str:
    """What is wrong with a result before its numbers are compared: none, a wrong shape, a wrong dtype."""
    if ours is None:
        return ("no gradient: the backward returned None" if kind == "input" else
                "no gradient: the backward left none") + (f" (expected shape {np.shape(expected)})"
                                                           if expected is not None else "")
    if expected is None:
        return "input gradient present on one side only (reference: True, twin: False)"
    if np.shape(ours) != np.shape(expected):
        return f"shape {np.shape(ours)} here, {np.shape(expected)} in the reference"
    if np.asarray(ours).dtype != dtype:
        return f"{name} has dtype {np.asarray(ours).dtype}, expected {dtype} (silent up- or down-cast)"
    return ""


def _adds_up(parts: list[np.ndarray], row: TensorCheck) -> bool:
    total = sum(parts)
    return rel_error(total, row.expected_array, row.floor)[0] <= max(row.tol, 1e-6 if row.tol > 1e-11 else row.tol)


def tied_note(name: str, row: TensorCheck, ours, shares: dict, param) -> str:
    """The report's reading of a tied weight: which names share it, and when it fails, which share of its
    gradient the code left out (the other names' gradients, read from the code)."""
    names = ", ".join(shares)
    if row.passed:
        return f"tied: the same array is also {names}; checked once"
    if ours is None or row.expected_array is None or np.shape(ours) != np.shape(row.expected_array):
        return f"tied: the same array is also {names}"
    have = {a: g for a, g in shares.items() if g is not None and np.shape(g) == np.shape(ours)}
    for k in range(1, len(have) + 1):
        for combo in itertools.combinations(have, k):
            if _adds_up([ours, *(have[a] for a in combo)], row):
                where = ", ".join(f"{a}'s share ({param.tied[a].grad if isinstance(param.tied[a].grad, str) else 'its gradient'})"
                                  for a in combo)
                return (f"this gradient is only {name}'s share: a tied weight's gradients are not summed; "
                        f"missing {where}")
    for a, g in have.items():
        if _adds_up([g], row):
            return f"tied: the whole gradient is in {a}'s gradient, not in {name}'s: sum the shares into {name}'s"
    return f"tied: the same array is also {names}"


def sum_note(group: list[str], row: TensorCheck, grads: dict) -> str:
    """Two of ours loaded into one tensor of the reference, compared against their sum: which parts add up."""
    have = {n: grads[n] for n in group if grads[n] is not None}
    for k in range(1, len(have)):
        for combo in itertools.combinations(have, k):
            if _adds_up([have[n] for n in combo], row):
                rest = [n for n in group if n not in combo]
                return (f"{' + '.join(combo)} alone is the whole gradient: {', '.join(rest)} counted again "
                        f"(one of them already holds the summed gradient of the tied weight)")
    return f"the sum of {', '.join(group)} is not the reference's gradient, nor is any part of it"


def check_accumulation(subject: Subject, grads: dict, dout: np.ndarray, dtype, report: Report) -> None:
    """Gradients must accumulate (+=), or weight tying and gradient accumulation break silently.

    Two forwards and backwards with the same inputs and dout, gradients zeroed only before the first
    (gradient accumulation over micro-batches does exactly this): a layer that accumulates ends with
    exactly twice the gradient (g + g is exact in floating point); one that assigns ends with g, an
    error of 1/2. The report gets one line, for the worst tensor."""
    first = {n: g for n, g in grads.items() if g is not None and np.shape(g) == np.shape(subject.params[n].value)}
    if not first:
        return
    subject.zero()
    for _ in range(2):
        subject.run_forward()
        _, twice = subject.run_backward(dout.copy(), strict=False)
    floor = scale_floor(first.values())
    errs = {n: rel_error(twice[n], 2 * g, 2 * floor) for n, g in first.items()}
    name = max(errs, key=lambda n: errs[n][0])
    tol = FLOAT64_TOL if dtype == np.float64 else FLOAT32_FLOOR
    err, max_abs, where = errs[name]
    report.checks.append(TensorCheck(f"{name}.grad accumulates (+=)", "accumulate", err, max_abs, where,
                                     value_at(twice[name], where), value_at(2 * first[name], where), tol,
                                     twice[name], 2 * first[name], 2 * floor))


def check_loss(loss: Callable, reference, inputs: Sequence, *, backward: Callable | None = None,
               case: str = "loss", **kwargs) -> Report:
    """Check a loss function directly against a torch one (F.cross_entropy and the like).

    loss(*inputs) -> (loss, dlogits): the value and the gradient of the first input that carries one
        (a tuple of gradients, one per input in `grad_inputs`, when several do); or -> loss alone,
        with `backward` giving the gradient: backward() or backward(dloss) -> dlogits.
    reference(*tensors) -> a scalar tensor, e.g.
        lambda logits, targets: F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1)).
    The upstream gradient of a scalar output is 1 (dout=... changes it, as for `check`); the
    returned gradient is scaled by it. Other keyword arguments as for `check`: params (a loss with
    weights), grad_inputs, input_names, ...; integer inputs (targets) carry no gradient."""
    saved: dict = {}

    def forward(*xs, **kw):
        result = loss(*xs, **kw)
        if isinstance(result, tuple):
            if len(result) != 2:
                raise CheckError(f"the loss returned a tuple of {len(result)}; expected (loss, dlogits) or the loss")
            result, saved["grad"] = result
        elif backward is None:
            raise CheckError("the loss returned one value and no backward was given: return (loss, dlogits), "
                             "or pass backward=")
        return np.asarray(result)

    def backward_(dout):
        if "grad" in saved:
            grad = saved["grad"]
        else:
            takes = len(inspect.signature(backward).parameters) > 0
            grad = call_code("backward", backward, (dout,) if takes else (), {})
            dout = 1 if takes else dout
        scale = (lambda g: g if g is None or np.all(dout == 1) else g * np.asarray(dout, np.asarray(g).dtype))
        return tuple(scale(g) for g in grad) if isinstance(grad, (tuple, list)) else scale(grad)

    return check(forward, backward_, reference, inputs, case=case, **kwargs)
