"""The tolerance policy, written once. Explained in docs/tolerance.md.

Error measure: for ours `a` and the expected `b` (same shape),

    err(a, b) = max|a - b| / max(max|b|, floor)

the worst absolute error relative to the tensor's own scale (elementwise relative error is
meaningless where b crosses zero), but never relative to less than `floor`, the scale of the
computation the tensor came from (the absolute floor, below). The harness also reports max|a - b|
and where it occurs.

float64: ours against PyTorch float64 on identical inputs. Both round every operation correctly and
differ only in the order of operations (summation order, fused multiply-adds), so they agree to
round-off: the measured worst over every case is about 5e-15 (some 20 ulps of 1.0, 2.2e-16 each).
    err <= FLOAT64_TOL = 1e-11
leaves headroom for longer reductions at larger sizes, and is still five orders of magnitude below
the smallest defect the harness must catch (a gradient off by a relative 1e-6, tests/test_harness.py).

float32: ours and PyTorch's float32 results are both compared with PyTorch float64 on the same
float32-representable inputs (the "truth"). We pass when our error is within an order of magnitude
of PyTorch's own float32 error, or below a floor of a few float32 ulps:
    err(ours32, truth) <= max(FLOAT32_FACTOR * max(err(torch32, truth), typical), FLOAT32_FLOOR)
where `typical` is the median of torch's float32 errors over all tensors of the same comparison: a
single tensor's rounding error is one draw of a random process, and torch getting one tensor lucky
says nothing about what float32 can deliver for the computation.
So float32 is held to what float32 can deliver for this very computation, not to a tuned constant.

Ill-conditioned inputs (attention at input scale 30 in tests/test_cases.py, nowhere else): torch's
float32 error is then a single draw that can be lucky by far more than the factor. With
check(..., ill_conditioned=True) the yardstick also counts how far the truth itself moves when every
floating input, parameter and upstream-gradient element moves by one float32 rounding (1 +- 2^-24,
random signs, the worst of ROUNDING_DRAWS seeded draws): the error of a backward-stable float32
implementation, i.e. the condition number times u, measured:
    err(ours32, truth) <= max(FLOAT32_FACTOR * max(err(torch32, truth), typical, err(truth', truth)), FLOAT32_FLOOR)

The absolute floor: a tensor whose true values are zero (a gradient that cancels exactly) or below
round-off relative to the values it is computed from has no scale of its own; measured against
max|b| alone, it would be judged relative to its own rounding noise and fail although correct.
Its scale is therefore never taken below the scale of the computation it belongs to:
    floor(parameter gradient) = max over every parameter gradient of the comparison of max|expected|
    floor(input gradient)     = the same over the input gradients
    (either, when all of its kind are zero: the same over every gradient)
    floor(output)             = max over the floating inputs and parameters of max|value|
(`scale_floor`). A gradient that is wrong by more than the tolerance times that scale still fails.

Finite differences (float64, independent of torch): central differences with step FD_STEP;
truncation error ~ h^2 |f'''| ~ 1e-12 and cancellation ~ eps |f| / h ~ 1e-10, so:
    err(analytic, numeric) <= FD_TOL = 1e-6
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

FLOAT64_TOL = 1e-11
FLOAT32_FACTOR = 10.0
FLOAT32_FLOOR = 16 * 2.0**-23          # 16 float32 ulps of 1.0, about 1.9e-6
FD_STEP = 1e-6
FD_TOL = 1e-6
ROUNDING_DRAWS = 3                     # ill-conditioned cases: random draws of one float32 rounding per input


def scale_floor(arrays: Iterable) -> float:
    """The absolute floor of the error measure: the largest finite |value| over `arrays` (the
    tensors that set the scale of a computation; docs/tolerance.md, "The absolute floor")."""
    best = 0.0
    for a in arrays:
        if a is None:
            continue
        a = np.asarray(a)
        if a.dtype.kind not in "fc" or a.size == 0:
            continue
        finite = np.abs(a[np.isfinite(a)])
        if finite.size:
            best = max(best, float(finite.max()))
    return best


def gradient_floors(kinds: list[str], arrays: list) -> list[float]:
    """The absolute floor of each gradient: the largest |value| over the gradients of its kind ("input"
    or "param"), or over every gradient when all of its kind are zero (docs/tolerance.md)."""
    everything = scale_floor(arrays)
    of_kind = {k: scale_floor([a for kk, a in zip(kinds, arrays) if kk == k]) for k in set(kinds)}
    return [of_kind[k] or everything for k in kinds]


def one_rounding_off(a, rng: np.random.Generator):
    """`a` in float64 with every element moved by one float32 rounding, a relative 2^-24, up or down at
    random (rng): an input of the yardstick for ill-conditioned cases (docs/tolerance.md, "Ill-conditioned
    cases"). Non-floating arrays (token ids) come back unchanged."""
    a = np.asarray(a)
    if a.dtype.kind != "f":
        return a
    return a.astype(np.float64) * (1.0 + 2.0**-24 * rng.choice([-1.0, 1.0], a.shape))
