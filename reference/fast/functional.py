"""The fast path's elementwise kernels: erf, GELU with its derivative in one pass, softmax and its
backward, each run block by block on the pool (reference/fast/pool.py), in place where it can.

They compute the same functions as reference/functional.py (the textbook path) and differ from
them only in rounding (docs/performance.md says how and what proves it). NumPy has no `erf`: it
is evaluated with the rational approximations of the Cephes library (S. L. Moshier), relative
error below 4e-16 in float64. In float32, GELU's Phi uses the cheaper formula that PyTorch's own
float32 kernel uses (Abramowitz-Stegun 7.1.26, error below 1.5e-7).
"""

from __future__ import annotations

import numpy as np

from ..functional import _ERF_T, _ERF_U, _ERFC_P, _ERFC_Q, INV_SQRT_2PI, SQRT_2, SQRT_2_OVER_PI
from .pool import empty, for_blocks


def _polyval(coeffs: tuple[float, ...], x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Horner's rule, highest power first, keeping x's dtype (in place on one new array, or `out`)."""
    out = np.multiply(x, coeffs[0], out=out)
    for c in coeffs[1:-1]:
        out += c
        out *= x
    out += coeffs[-1]
    return out


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, in x's dtype.

    Speed: the first range's formula is evaluated on every element (on x clipped to [-1, 1], so
    that no element can overflow), then the elements beyond 1 are gathered by integer index, evaluated
    with the second range's formula and scattered back. Boolean-mask gathers and scatters cost
    about 8x more than integer ones in NumPy, and np.where-style blends evaluate both formulas
    everywhere.
    """
    x = np.ascontiguousarray(x)                                # C order: the flat indices below assume it
    xc = np.clip(x, -1.0, 1.0)                                 # beyond 1 the value is replaced below
    z = xc * xc
    out = _polyval(_ERF_T, z)
    out *= xc
    out /= _polyval(_ERF_U, z)                                 # x T(x^2) / U(x^2), |x| <= 1
    big = np.flatnonzero(np.abs(x) > 1.0)                      # (n_big,) flat indices, often none
    xb = x.reshape(-1).take(big)
    # erfc(6) = 2e-17 is below half an ulp of 1 even in float64, so |x| >= 6 gives exactly +-1
    # and Cephes's third range (x >= 8) is never needed: cap |x| at 6 instead.
    al = np.minimum(np.abs(xb), 6.0)
    erfc = np.exp(-al * al)
    erfc *= _polyval(_ERFC_P, al)
    erfc /= _polyval(_ERFC_Q, al)                              # exp(-x^2) P(x) / Q(x), 1 < |x| < 8
    out.reshape(-1)[big] = np.copysign(1.0 - erfc, xb)
    return out


# Phi(x) in float32: Abramowitz & Stegun 7.1.26 (C. Hastings), |error in erf| <= 1.5e-7, which is
# the approximation PyTorch's vectorised CPU kernel evaluates for float32 erf (and so for float32
# GELU). It costs one exp and a degree-5 polynomial, a third of the Cephes evaluation above.
# Written for Phi(x) = (1 + erf(x / sqrt 2)) / 2: the 1/sqrt(2) is folded into p, the 1/2 into the a_i.
_AS_P = 0.3275911 / SQRT_2
_AS_A = tuple(0.5 * a for a in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592))


def _float32_cdf_and_density(x: np.ndarray, cdf: np.ndarray | None = None,
                             density: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Phi(x), exp(-x^2/2)) in float32, computed in the two output buffers (new ones if not given)."""
    buf = np.abs(x, out=density)
    buf *= _AS_P
    buf += 1.0
    t = np.reciprocal(buf, out=buf)                            # t = 1 / (1 + p |x| / sqrt 2)
    tail = _polyval(_AS_A, t, out=cdf)
    tail *= t                                                  # (a1 t + ... + a5 t^5) / 2
    with np.errstate(over="ignore"):                           # x^2 = inf for |x| > 1.8e19: exp gives 0
        e = np.multiply(x, x, out=buf)                         # t is no longer needed: reuse its buffer
    e *= -0.5
    np.exp(e, out=e)
    tail *= e                                                  # = Phi(-|x|), the small tail
    cdf = np.subtract(0.5, tail, out=tail)
    np.copysign(cdf, x, out=cdf)
    cdf += 0.5                                                 # 1 - tail for x >= 0, tail for x < 0
    return cdf, e                                              # (a masked select costs 10x more)


def normal_cdf(x: np.ndarray) -> np.ndarray:
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2, in x's dtype: Cephes in float64 (round-off), the
    Abramowitz-Stegun form PyTorch uses in float32 (absolute error below 1e-7)."""
    if x.dtype == np.float32:
        return _float32_cdf_and_density(x)[0]
    cdf = erf(x * (1.0 / SQRT_2))
    cdf += 1.0
    cdf *= 0.5
    return cdf


def normal_pdf(x: np.ndarray) -> np.ndarray:
    """phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    with np.errstate(over="ignore"):                           # x^2 = inf: exp gives 0, as it should
        pdf = x * x
    pdf *= -0.5
    np.exp(pdf, out=pdf)
    pdf *= INV_SQRT_2PI
    return pdf


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """GELU(x) = x * Phi(x), exactly (erf) or with the tanh approximation."""
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**3)))
    return x * normal_cdf(x)


def gelu_grad(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """d GELU / dx, elementwise (derived in docs/gelu.md)."""
    return gelu_and_grad(x, approximate)[1]


def gelu_and_grad(x: np.ndarray, approximate: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """(GELU(x), GELU'(x)) sharing the expensive part: the MLP computes both in its forward, so
    its backward is one multiplication (and caches GELU'(x) where it would cache x).
    Computed block by block (see the module docstring), into two new arrays."""
    y, grad = empty(x.shape, x.dtype), empty(x.shape, x.dtype)
    xf, yf, gf = np.ascontiguousarray(x).reshape(-1), y.reshape(-1), grad.reshape(-1)
    for_blocks(lambda lo, hi: _gelu_and_grad_block(xf[lo:hi], approximate, yf[lo:hi], gf[lo:hi]), xf.size)
    return y, grad


def _gelu_and_grad_block(x: np.ndarray, approximate: str, y: np.ndarray, grad: np.ndarray) -> None:
    """GELU(x) into y and GELU'(x) into grad, using them as the scratch space."""
    if approximate == "tanh":
        np.multiply(x, x, out=y)
        np.multiply(y, 3 * 0.044715, out=grad)
        grad += 1.0
        grad *= SQRT_2_OVER_PI                                 # dinner = sqrt(2/pi) (1 + 3 0.044715 x^2)
        y *= 0.044715
        y += 1.0
        y *= x
        y *= SQRT_2_OVER_PI                                    # inner = sqrt(2/pi) (x + 0.044715 x^3)
        t = np.tanh(y, out=y)
        grad *= x
        grad *= 0.5                                            # x dinner / 2
        tmp = np.multiply(t, t)                                # block-sized
        np.subtract(1.0, tmp, out=tmp)
        grad *= tmp                                            # x (1 - t^2) dinner / 2
        t += 1.0
        t *= 0.5                                               # (1 + t) / 2
        grad += t
        t *= x                                                 # GELU = x (1 + t) / 2
        return
    if x.dtype == np.float32:
        cdf, density = _float32_cdf_and_density(x, y, grad)
        density *= INV_SQRT_2PI                                # phi(x), from the exp the cdf needed
    else:
        cdf = y
        cdf[...] = normal_cdf(x)
        density = grad
        density[...] = normal_pdf(x)
    density *= x
    density += cdf                                             # GELU'(x) = Phi(x) + x phi(x)
    cdf *= x                                                   # GELU(x) = x Phi(x)


def softmax(x: np.ndarray, axis: int = -1, out: np.ndarray | None = None) -> np.ndarray:
    """Numerically stable softmax: subtracting the row max keeps exp() <= 1; -inf entries give 0.

    `out=x` computes it in place (attention does, on its freshly made scores). It runs block by
    block over the leading axis (see the module docstring), with `axis` moved last (a view)."""
    out = np.empty(x.shape, x.dtype) if out is None else out
    xs, outs = (np.atleast_2d(np.moveaxis(a, axis, -1)) for a in (x, out))   # (..., n) views
    for_blocks(lambda lo, hi: _softmax_block(xs[lo:hi], outs[lo:hi]), xs.shape[0], xs[0].size)
    return out


def _softmax_block(x: np.ndarray, out: np.ndarray) -> None:
    m = np.max(x, axis=-1, keepdims=True)
    e = np.subtract(x, m, out=out)
    np.exp(e, out=e)
    e *= 1.0 / np.einsum("...i->...", e)[..., None]           # row sums (einsum: 3x faster than sum on
                                                               # short rows); one division per row


def softmax_backward(dp: np.ndarray, p: np.ndarray, axis: int = -1, out: np.ndarray | None = None) -> np.ndarray:
    """Given p = softmax(s) and dL/dp, return dL/ds = p * (dp - sum(dp * p)). `out=dp` works in place.
    Block by block, like softmax; the row sum taken twice, as the textbook version does.

    Derived in docs/softmax.md."""
    out = np.empty(dp.shape, dp.dtype) if out is None else out
    dps, ps, outs = (np.atleast_2d(np.moveaxis(a, axis, -1)) for a in (dp, p, out))
    for_blocks(lambda lo, hi: _softmax_backward_block(dps[lo:hi], ps[lo:hi], outs[lo:hi]), dps.shape[0], dps[0].size)
    return out


def _softmax_backward_block(dp: np.ndarray, p: np.ndarray, out: np.ndarray) -> None:
    dot = np.einsum("...i,...i->...", dp, p)[..., None]       # row dot products, without a temporary
    ds = np.subtract(dp, dot, out=out)                         # g: dp centred on its p-weighted mean
    ds -= np.einsum("...i,...i->...", ds, p)[..., None]        # the same on g: what the first sum lost
    ds *= p
