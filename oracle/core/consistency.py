"""`consistency_check`: what torch's gradcheck and OpInfo tests also ask of a backward, with no torch
involved: backward run twice from one forward gives the same gradients (or exactly twice an accumulated
one), and non-contiguous inputs and upstream gradients give the same results. NumPy only.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .report import Report, TensorCheck, tensor_check
from .report import CheckError
from .subject import grad_name, make_subject, upstream
from .tolerance import FLOAT32_FLOOR, FLOAT64_TOL, scale_floor


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
                      case: str = "check", dout=None) -> Report:
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
    tol = FLOAT64_TOL if dtype == np.float64 else FLOAT32_FLOOR
    report = Report(case, f"{dtype} (consistency)")

    subject.zero()
    out = subject.run_forward()
    dout = upstream(out, seed, dout, avoid=[*subject.inputs, *(p.value for p in subject.params.values())])
    dx1, g1 = subject.run_backward(dout.copy())
    round_off = tol
    floor = scale_floor([g for g in g1.values() if g is not None])
    leaves = [(grad_name(subject.input_names[i], "input"), "input", a, a) for i, a in zip(subject.grad_inputs, dx1)]
    leaves += [(f"{n}.grad", "param", g1[n], g1[n]) for n in subject.params]
    try:
        if accumulates:
            dx2, g2 = subject.run_backward(dout.copy())
            g2 = {n: None if g is None else g - g1[n] for n, g in g2.items()}    # exact when it accumulates: 2g - g
        else:
            subject.zero()
            dx2, g2 = subject.run_backward(dout.copy())
    except (RuntimeError, CheckError) as e:                    # a single-use cache that says so is safe
        if isinstance(e, CheckError) and not isinstance(e.__cause__, RuntimeError):
            raise
        e = e.__cause__ if isinstance(e, CheckError) else e
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

    floor = scale_floor([a for *_, a, _ in leaves])
    for layout_in, layout_dout in (("transposed", "strided"), ("strided", "transposed")):
        nc_inputs = tuple(noncontiguous(x, layout_in) if np.ndim(x) else x for x in subject.inputs)
        subject.zero()
        nc_out = subject.run_forward(nc_inputs)
        nc_dx, nc_g = subject.run_backward(noncontiguous(dout, layout_dout) if np.ndim(dout) else dout.copy())
        tag = f"(inputs {layout_in}, dout {layout_dout})"
        report.checks.append(tensor_check(f"output {tag}", "noncontiguous", nc_out, out, tol,
                                          scale_floor([out])))
        got = [(grad_name(subject.input_names[i], "input"), a, b) for i, a, b in zip(subject.grad_inputs, nc_dx, dx1)]
        got += [(f"{n}.grad", nc_g[n], g1[n]) for n in subject.params]
        for name, a, b in got:
            if a is not None and b is not None:
                report.checks.append(tensor_check(f"{name} {tag}", "noncontiguous", a, b, tol, floor))
    return report
