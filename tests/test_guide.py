"""docs/adding-a-layer.md, followed step by step on a throwaway layer defined here, so the guide cannot rot.

The layer is `Scale`: y = x * weight over the last axis, weight (C,). Its twin is an nn.Module with a
`weight` nn.Parameter and torch ops. The tests register it (one `register(...)` line, unregistered
afterwards), run the generic checks and see them pass; then break its backward in the ways a newcomer
would and see the checks fail, naming the wrong tensor. The guide's pasted harness output is checked
against what the harness prints today.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from oracle import REGISTRY, Report, compare, finite_difference_check, register, unregister
from reference.module import Module, Parameter, as_dtype

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "adding-a-layer.md"


# ---------------------------------------------------------------- step 1: the NumPy layer

class Scale(Module):
    """y = x * weight over the last axis: the guide's throwaway layer (tests/test_guide.py)."""

    def __init__(self, dim: int, *, dtype="float64"):
        self.weight = Parameter(np.ones(dim, as_dtype(dtype)))

    def forward(self, x: np.ndarray):
        return x * self.weight.data, x

    def backward(self, dy: np.ndarray, x: np.ndarray) -> np.ndarray:
        self.weight.grad += (dy * x).reshape(-1, x.shape[-1]).sum(0)
        return dy * self.weight.data


class ForgetsTheScale(Scale):
    """Broken: returns dy unscaled, so the input gradient is wrong (the weight gradient is right)."""

    def backward(self, dy, x):
        self.weight.grad += (dy * x).reshape(-1, x.shape[-1]).sum(0)
        return dy


class ForgetsTheInput(Scale):
    """Broken: the weight gradient sums dy alone, without the factor x (the input gradient is right)."""

    def backward(self, dy, x):
        self.weight.grad += dy.reshape(-1, dy.shape[-1]).sum(0)
        return dy * self.weight.data


class Assigns(Scale):
    """Broken: assigns the weight gradient instead of accumulating it (`=` for `+=`)."""

    def backward(self, dy, x):
        self.weight.grad[...] = (dy * x).reshape(-1, x.shape[-1]).sum(0)
        return dy * self.weight.data


# ---------------------------------------------------------------- step 2: the twin, from torch ops

class ScaleTwin(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.weight


# ---------------------------------------------------------------- step 3: one register(...) line

@pytest.fixture
def registered():
    """register(name, layer class) -> the Case; every case registered here is removed afterwards."""
    names = []

    def add(name: str, layer=Scale):
        case = register(name, lambda d, dt, rng: layer(d.C, dtype=dt), lambda d: ScaleTwin(d.C))
        names.append(name)
        return case

    yield add
    for name in names:
        unregister(name)
    assert not set(names) & set(REGISTRY)


def fd_check(ref, inputs, case) -> Report:
    """The second oracle (step 5): central differences on the layer (oracle/core/fd.py)."""
    return finite_difference_check(ref, inputs, case=case, seed=0, dropout=False)


def failing(report: Report) -> list[str]:
    return [c.name for c in report.checks if not c.passed]


def accumulates(layer, x, seed=0) -> bool:
    """Step 8 of the guide: two backwards on one cache must double every parameter gradient."""
    dy = np.random.default_rng(seed).standard_normal(x.shape).astype(x.dtype)
    layer.zero_grad()
    _, cache = layer.forward(x)
    layer.backward(dy, cache)
    once = {n: p.grad.copy() for n, p in layer.named_parameters()}
    layer.backward(dy, cache)
    return all(np.allclose(p.grad, 2 * once[n], rtol=1e-12, atol=0) for n, p in layer.named_parameters())


# ---------------------------------------------------------------- steps 4, 5, 7: the battery passes

def test_guide_layer_passes_every_check(registered, capsys):
    case = registered("guide_scale")
    assert REGISTRY["guide_scale"] is case
    for dtype in ("float64", "float32"):
        ref, twin, inputs = case.build(dtype)
        assert inputs[0].shape == (2, 5, 8) and inputs[0].dtype == dtype
        assert not np.all(ref.weight.data == 1.0)                      # perturbed: no weight of exactly 1
        report = compare(ref, twin, inputs, case="guide_scale", dropout=case.dropout)
        assert report.passed, str(report)
        assert [c.name for c in report.checks] == ["output", "input grad", "weight.grad",
                                                   "weight.grad accumulates (+=)"]
        assert str(report).startswith(f"guide_scale [{dtype}]: PASS")
    ref, _, inputs = case.build("float64")
    fd_report = fd_check(ref, inputs, "guide_scale")
    assert fd_report.passed, str(fd_report)
    assert [c.name for c in fd_report.checks] == ["input grad (fd)", "weight.grad (fd)"]
    assert accumulates(case.build("float64")[0], inputs[0])

    # `python -m oracle verify --case guide_scale`, in this process (where the case is registered)
    from oracle.bridge import verify
    assert verify.run(argparse.Namespace(case=["guide_scale"], dtype="both", seed=0, verbose=False)) == 0
    out = capsys.readouterr().out
    assert re.search(r"\| guide_scale \| float64 .*\| pass +\|", out) and re.search(r"\| guide_scale \| float32 .*\| pass +\|", out)


# ---------------------------------------------------------------- step 6: a wrong backward fails, by name

@pytest.mark.parametrize("layer, wrong", [(ForgetsTheScale, "input grad"), (ForgetsTheInput, "weight.grad")])
def test_broken_backward_fails_and_names_the_tensor(registered, layer, wrong):
    case = registered("guide_scale_broken", layer)
    for dtype in ("float64", "float32"):
        ref, twin, inputs = case.build(dtype)
        report = compare(ref, twin, inputs, case="guide_scale_broken")
        assert not report.passed
        assert failing(report) == [wrong], str(report)                  # only the wrong tensor, by name
        text = str(report)
        assert text.startswith(f"guide_scale_broken [{dtype}]: FAIL")
        assert re.search(rf"^  FAIL {re.escape(wrong)} +err", text, re.M), text
        assert re.search(r"^  ok   output +err", text, re.M), text       # the forward is still right
    ref, _, inputs = case.build("float64")
    fd_report = fd_check(ref, inputs, "guide_scale_broken")
    assert not fd_report.passed
    assert failing(fd_report) == [f"{wrong} (fd)"], str(fd_report)      # the second oracle agrees, independently


def test_forgotten_accumulation_is_caught_by_the_guides_check(registered):
    """One backward after zero_grad cannot tell `=` from `+=`; the harness's second, pre-filled run can (step 8)."""
    case = registered("guide_scale_assigns", Assigns)
    ref, twin, (x,) = case.build("float64")
    assert failing(compare(ref, twin, (x,), case="guide_scale_assigns")) == ["weight.grad accumulates (+=)"]
    assert not accumulates(ref, x)
    assert accumulates(Scale(x.shape[-1]), x)


def test_unregister_and_duplicate_names(registered):
    registered("guide_scale_dup")
    with pytest.raises(ValueError, match="already registered"):
        register("guide_scale_dup", lambda d, dt, rng: Scale(d.C, dtype=dt), lambda d: ScaleTwin(d.C))
    unregister("guide_scale_dup")
    assert "guide_scale_dup" not in REGISTRY
    unregister("guide_scale_dup")                                      # a second unregister is harmless


# ---------------------------------------------------------------- the guide's pasted output is still true

def _pasted_report_lines() -> list[tuple[str, str, str]]:
    """(mark, tensor, err) of every line of the pasted harness reports in step 6 of the guide."""
    text = GUIDE.read_text(encoding="utf-8")
    step6 = text.split("## 6.", 1)[1].split("## 7.", 1)[0]
    reports = step6.split("```text", 1)[1].split("```", 1)[0]
    return re.findall(r"^  (ok|FAIL) +(.+?) +err +(\S+)", reports, re.M)


def test_guide_output_is_what_the_harness_prints(registered):
    """Step 6 pastes the harness's output for an RMSNorm without its mean term: the same tensors
    must pass and fail today, with the same errors to the printed digits."""
    from oracle import finite_difference_check
    from reference.layers import RMSNorm

    class BrokenRMSNorm(RMSNorm):                                      # as in the guide
        def backward(self, dy, cache):
            xhat, rrms = cache
            self.weight.grad += (dy * xhat).reshape(-1, xhat.shape[-1]).sum(0)
            return rrms * (dy * self.weight.data)

    case = register("rmsnorm_broken", lambda d, dt, rng: BrokenRMSNorm(d.C, eps=1e-5, dtype=dt),
                    lambda d: nn.RMSNorm(d.C, eps=1e-5))
    try:
        reports = [compare(*case.build(dtype), case="rmsnorm_broken") for dtype in ("float64", "float32")]
        ref, _, inputs = case.build("float64")
        reports.append(finite_difference_check(ref, inputs, case="rmsnorm_broken"))
    finally:
        unregister("rmsnorm_broken")
    now = [("ok" if c.passed else "FAIL", c.name, f"{c.err:.2e}") for r in reports for c in r.checks]
    pasted = _pasted_report_lines()
    assert [(m, n) for m, n, _ in pasted] == [(m, n) for m, n, _ in now], \
        "docs/adding-a-layer.md step 6: regenerate the pasted output (run the block and paste what it prints)"
    for (mark, name, err_then), (_, _, err_now) in zip(pasted, now):
        if mark == "FAIL":                                             # a wrong formula's error is not rounding
            assert err_then == err_now, f"{name}: the guide says err {err_then}, the harness now prints {err_now}"
