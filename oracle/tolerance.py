"""The tolerance policy, written once. Explained in docs/tolerance.md.

Error measure: for ours `a` and the expected `b` (same shape),

    err(a, b) = max|a - b| / max|b|

the worst absolute error relative to the tensor's own scale (elementwise relative error is
meaningless where b crosses zero). The harness also reports max|a - b| and where it occurs.

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

Finite differences (float64, independent of torch): central differences with step FD_STEP;
truncation error ~ h^2 |f'''| ~ 1e-12 and cancellation ~ eps |f| / h ~ 1e-10, so:
    err(analytic, numeric) <= FD_TOL = 1e-6
"""

FLOAT64_TOL = 1e-11
FLOAT32_FACTOR = 10.0
FLOAT32_FLOOR = 16 * 2.0**-23          # 16 float32 ulps of 1.0, about 1.9e-6
FD_STEP = 1e-6
FD_TOL = 1e-6
