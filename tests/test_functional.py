"""erf, GELU and softmax, the shared elementwise functions of both paths, against math.erf and closed forms."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import functional as textbook
from reference.fast import functional as fast

PATHS = pytest.mark.parametrize("F", [textbook, fast], ids=["textbook", "fast"])

POINTS = np.concatenate([np.linspace(-10, 10, 2001), [-40.0, -8.0, -1.0, 0.0, 1.0, 8.0, 40.0, 1e-300, -1e-8]])


@PATHS
def test_erf_matches_math_erf_to_round_off(F):
    expected = np.array([math.erf(x) for x in POINTS])
    err = np.abs(F.erf(POINTS) - expected) / np.maximum(np.abs(expected), 1e-300)
    assert err.max() < 1e-15


@given(st.floats(-30, 30, allow_nan=False))
def test_erf_any_value(x):
    for erf in (textbook.erf, fast.erf):
        assert abs(erf(np.array([x]))[0] - math.erf(x)) <= 2e-16 * max(1.0, abs(math.erf(x)))


@PATHS
def test_erf_keeps_float32(F):
    x = POINTS.astype(np.float32)
    y = F.erf(x)
    assert y.dtype == np.float32
    assert np.abs(y - np.array([math.erf(v) for v in x.astype(np.float64)])).max() < 3e-7


@PATHS
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_grad_is_the_derivative(approximate, F):
    h = 1e-6
    numeric = (F.gelu(POINTS + h, approximate) - F.gelu(POINTS - h, approximate)) / (2 * h)
    assert np.abs(F.gelu_grad(POINTS, approximate) - numeric).max() < 1e-8


@PATHS
def test_gelu_tails(F):
    assert F.gelu(np.array([-40.0]))[0] == pytest.approx(0.0, abs=1e-300) and F.gelu(np.array([40.0]))[0] == 40.0
    assert F.gelu(np.array([-40.0]), "tanh")[0] == pytest.approx(0.0, abs=1e-300)


@PATHS
def test_softmax_masked_and_large(F):
    s = np.array([[1e4, 0.0, -np.inf], [3.0, 3.0, -np.inf]])
    p = F.softmax(s)
    assert np.allclose(p, [[1, 0, 0], [0.5, 0.5, 0]]) and np.all(np.isfinite(p))
    dp = np.array([[1.0, 2.0, 3.0], [1.0, -1.0, 5.0]])
    ds = F.softmax_backward(dp, p)
    assert np.allclose(ds, [[0, 0, 0], [0.5, -0.5, 0]])


@PATHS
def test_softmax_backward_on_saturated_float32_rows(F):
    """p = (1, 2e-9, 1e-11) in float32: dp_0 - sum(dp * p) is ~1e-6 in truth but cancels in one pass
    (ds_0 = 0, an error of 100 %). The row sum taken twice keeps ds within a few float32 ulps of the
    truth (measured: 3), on random partly saturated rows too (docs/softmax.md, "Numerical stability").
    The truth is float64 in the form ds_j = p_j sum_i p_i (dp_j - dp_i), which has no cancellation: the
    one-pass form is off by ~1e-5 here even in float64."""
    rng = np.random.default_rng(0)
    s = np.concatenate([[[0.0, -20.0, -25.0]], rng.uniform(-30, 0, (50, 3)) * [0, 1, 1]]).astype(np.float32)
    dp = np.concatenate([[[300.0, -200.0, 50.0]], rng.standard_normal((50, 3)) * 300]).astype(np.float32)
    p, p64, dp64 = F.softmax(s), textbook.softmax(s.astype(np.float64)), dp.astype(np.float64)
    truth = p64 * ((dp64[:, :, None] - dp64[:, None, :]) * p64[:, None, :]).sum(-1)
    ds = F.softmax_backward(dp, p)
    assert ds.dtype == np.float32
    assert (np.abs(ds - truth) / np.abs(truth).max(-1, keepdims=True)).max() < 8 * 2.0**-24
    one_pass = p * (dp - (dp * p).sum(-1, keepdims=True))
    assert one_pass[0, 0] == 0 and truth[0, 0] > 1e-6
