"""The checks the most trusted gradient checkers make, on every registered case:

- the full Jacobian by float64 central differences at a tiny size (torch.autograd.gradcheck);
- a directional derivative over every input and parameter together, and each alone (JAX check_grads);
- backward run twice from one forward: bit-identical, or exactly twice an accumulated gradient;
- non-contiguous inputs and upstream gradients (transposed and strided views; torch's OpInfo tests).

tests/test_harness.py plants a bug for each and asserts that it is reported."""

import pytest

from oracle import REGISTRY
from oracle.bridge.adapters import consistency, directional_check, jacobian_check
from oracle.bridge.registry import small_dims

CASES = sorted(REGISTRY)
KERNELS = ["textbook", "fast"]                                  # both paths, each checked on its own


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("name", CASES)
def test_full_jacobian(name, kernels):
    case = REGISTRY[name]
    ref, _, inputs = case.build("float64", dims=small_dims(case), kernels=kernels)
    report = jacobian_check(ref, inputs, case=name, dropout=case.dropout)
    assert report.passed, str(report)
    assert len(report.checks) == len(list(ref.named_parameters())) + (inputs[0].dtype.kind == "f")


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("name", CASES)
def test_directional_derivative(name, kernels):
    case = REGISTRY[name]
    ref, _, inputs = case.build("float64", kernels=kernels)
    report = directional_check(ref, inputs, case=name, dropout=case.dropout)
    assert report.passed, str(report)
    assert report.checks[-1].name == "all gradients (directional)"       # the per-tensor rows first


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", CASES)
def test_backward_twice_and_noncontiguous(name, dtype, kernels):
    case = REGISTRY[name]
    ref, _, inputs = case.build(dtype, kernels=kernels)
    report = consistency(ref, inputs, case=name, dropout=case.dropout)
    assert report.passed, str(report)
    kinds = {c.kind for c in report.checks}
    assert kinds == {"repeat", "noncontiguous"}, kinds
