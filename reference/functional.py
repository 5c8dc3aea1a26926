"""Elementwise functions the layers share: erf, GELU (exact and tanh), softmax.

NumPy has no `erf`, so it is evaluated here with the rational approximations of the Cephes
library (S. L. Moshier): relative error below 4e-16 in float64, so exact GELU agrees with
torch's to round-off. Constants are Python floats so that float32 arrays stay float32
(numpy's promotion rules would upcast on a numpy float64 scalar).
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
# erfc(x) = exp(-x^2) R(x) / S(x) for x >= 8
_ERFC_R = (5.64189583547755073984e-1, 1.27536670759978104416e0, 5.01905042251180477414e0,
           6.16021097993053585195e0, 7.40974269950448939160e0, 2.97886665372100240670e0)
_ERFC_S = (1.0, 2.26052863220117276590e0, 9.39603524938001434673e0, 1.20489539808096656605e1,
           1.70814450747565897222e1, 9.60896809063285878198e0, 3.36907645100081516050e0)


def _polyval(coeffs: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """Horner's rule, highest power first, keeping x's dtype."""
    out = np.full_like(x, coeffs[0])
    for c in coeffs[1:]:
        out *= x
        out += c
    return out


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, in x's dtype."""
    x = np.asarray(x)
    a = np.abs(x)
    small = a <= 1.0
    out = np.empty_like(x)
    xs, zs = x[small], x[small] * x[small]
    out[small] = xs * _polyval(_ERF_T, zs) / _polyval(_ERF_U, zs)
    large = ~small
    if large.any():
        al = a[large]
        mid = al < 8.0
        ratio = np.where(mid, _polyval(_ERFC_P, al) / _polyval(_ERFC_Q, al),
                         _polyval(_ERFC_R, al) / _polyval(_ERFC_S, al))
        erfc = np.exp(-al * al) * ratio
        out[large] = np.copysign(1.0 - erfc, x[large])
    return out


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """GELU(x) = x * Phi(x), exactly (erf) or with the tanh approximation."""
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + erf(x / SQRT_2))


def gelu_grad(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """d GELU / dx, elementwise (derived in docs/gelu.md)."""
    if approximate == "tanh":
        inner = SQRT_2_OVER_PI * (x + 0.044715 * x**3)
        t = np.tanh(inner)
        dinner = SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner
    cdf = 0.5 * (1.0 + erf(x / SQRT_2))
    pdf = INV_SQRT_2PI * np.exp(-0.5 * x * x)
    return cdf + x * pdf


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax: subtracting the row max keeps exp() <= 1; -inf entries give 0."""
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def softmax_backward(dp: np.ndarray, p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Given p = softmax(s) and dL/dp, return dL/ds = p * (dp - sum(dp * p)). Derived in docs/softmax.md."""
    return p * (dp - (dp * p).sum(axis=axis, keepdims=True))
