"""Plain math the textbook layers share: erf, GELU (exact and tanh) and its derivative, softmax and
its backward. Each function is the formula of its docs page, written once, on whole arrays.

NumPy has no `erf`, so it is evaluated here with the rational approximations of the Cephes
library (S. L. Moshier): relative error below 4e-16 in float64, so exact GELU agrees with torch's
to round-off. Constants are Python floats so that float32 arrays stay float32 (NumPy's promotion
rules would upcast on a NumPy float64 scalar). The fast path's versions of these functions (run in
blocks on a thread pool, in place) are in reference/fast/functional.py.
"""

from __future__ import annotations

import math

import numpy as np

SQRT_2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# erf(x) = x T(x^2) / U(x^2) for |x| <= 1
_ERF_T = (9.60497373987051638749e0, 9.00260197203842689217e1, 2.23200534594684319226e3,
          7.00332514112805075473e3, 5.55923013010394962768e4)
_ERF_U = (1.0, 3.35617141647503099647e1, 5.21357949780152679795e2, 4.59432382970980127987e3,
          2.26290000613890934246e4, 4.92673942608635921086e4)
# erfc(x) = exp(-x^2) P(x) / Q(x) for 1 <= x < 8
_ERFC_P = (2.46196981473530512524e-10, 5.64189564831068821977e-1, 7.46321056442269912687e0,
           4.86371970985681366614e1, 1.96520832956077098242e2, 5.26445194995477358631e2,
           9.34528527171957607540e2, 1.02755188689515710272e3, 5.57535335369399327526e2)
_ERFC_Q = (1.0, 1.32281951154744992508e1, 8.67072140885989742329e1, 3.54937778887819891062e2,
           9.75708501743205489753e2, 1.82390916687909736289e3, 2.24633760818710981792e3,
           1.65666309194161350182e3, 5.57535340817727675546e2)


def polyval(coeffs: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """c0 x^n + c1 x^(n-1) + ... + cn by Horner's rule, in x's dtype."""
    out = coeffs[0] * x
    for c in coeffs[1:-1]:
        out = (out + c) * x
    return out + coeffs[-1]


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, in x's dtype (Cephes's two ranges, |x| <= 1 and |x| > 1)."""
    x = np.asarray(x)
    xc = np.clip(x, -1.0, 1.0)                                 # the first range's formula, on |x| <= 1
    z = xc * xc
    small = xc * polyval(_ERF_T, z) / polyval(_ERF_U, z)       # x T(x^2) / U(x^2)
    # erfc(6) = 2e-17 is below half an ulp of 1 even in float64, so |x| >= 6 gives exactly +-1:
    # |x| is capped at 6 (Cephes's third range, x >= 8, is never needed).
    a = np.clip(np.abs(x), 1.0, 6.0)
    erfc = np.exp(-a * a) * polyval(_ERFC_P, a) / polyval(_ERFC_Q, a)   # exp(-x^2) P(x) / Q(x)
    large = np.copysign(1.0 - erfc, x)
    return np.where(np.abs(x) <= 1.0, small, large)


def normal_cdf(x: np.ndarray) -> np.ndarray:
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2, the standard normal CDF."""
    return 0.5 * (1.0 + erf(x / SQRT_2))


def normal_pdf(x: np.ndarray) -> np.ndarray:
    """phi(x) = exp(-x^2 / 2) / sqrt(2 pi), the standard normal density."""
    with np.errstate(over="ignore"):                           # x^2 = inf: exp gives 0, as it should
        return np.exp(-0.5 * x * x) * INV_SQRT_2PI


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """GELU(x) = x * Phi(x), exactly (erf) or with the tanh approximation. Derived in docs/gelu.md."""
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**3)))
    return x * normal_cdf(x)


def gelu_grad(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """d GELU / dx, elementwise. Derived in docs/gelu.md."""
    if approximate == "tanh":
        inner = SQRT_2_OVER_PI * (x + 0.044715 * x**3)
        t = np.tanh(inner)
        dinner = SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
        return 0.5 * x * (1.0 - t * t) * dinner + 0.5 * (1.0 + t)
    return normal_cdf(x) + x * normal_pdf(x)                   # Phi(x) + x phi(x)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax: subtracting the row max keeps exp() <= 1; -inf entries give 0.
    Derived in docs/softmax.md."""
    m = np.max(x, axis=axis, keepdims=True)                    # the row max: exp(x - m) <= 1
    e = np.exp(x - m)
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(dp: np.ndarray, p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Given p = softmax(s) and dL/dp, return dL/ds = p * (dp - sum(dp * p)). Derived in docs/softmax.md.

    The formula is applied twice: to dp, and again to g = dp - sum(dp * p), which gives the same ds in
    exact arithmetic (a constant per row gets no gradient) but not in floating point: on a saturated
    row (one p within round-off of 1) the first sum cancels against dp, and the second one, of the
    small g, recovers what the first lost (docs/softmax.md, "Numerical stability")."""
    g = dp - (dp * p).sum(axis=axis, keepdims=True)            # dp centred on its p-weighted mean
    return p * (g - (g * p).sum(axis=axis, keepdims=True))
