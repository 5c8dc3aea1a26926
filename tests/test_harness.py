"""The harness must be able to fail. Each test feeds it a subtly wrong layer and asserts the report
names the wrong tensor; a harness that passed these would prove nothing."""

import numpy as np
import pytest
import torch
from torch import nn

from oracle import REGISTRY, compare, rel_error
from oracle.bridge.adapters import finite_difference_check
from oracle.bridge.registry import Dims
from reference.attention import CausalSelfAttention
from reference.layers import GELU, LayerNorm, Linear
from reference.fast import layers as fast
from reference.fast.pool import column_sums
from reference.module import Parameter


def failing(report) -> set[str]:
    assert not report.passed, f"the harness missed a defect:\n{report}"
    return {c.name for c in report.checks if not c.passed}


def build(name: str, dtype: str = "float64", cls=None, dims: Dims | None = None, seed: int = 0, kernels: str = "fast"):
    """A registered case's (ref, twin, inputs), with the reference swapped for a broken subclass."""
    ref, twin, inputs = REGISTRY[name].build(dtype, seed, dims=dims, kernels=kernels)
    if cls is not None:
        ref.__class__ = cls
    return ref, twin, inputs


class GradOffByOnePPM(Linear):
    def backward(self, dy, x):
        before = self.weight.grad.copy()
        dx = super().backward(dy, x)
        self.weight.grad[...] = before + (self.weight.grad - before) * (1 + 1e-6)
        return dx


class TransposedWeightGrad(Linear):
    def backward(self, dy, x):
        dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
        self.weight.grad += (dy2.T @ x2).T                     # (in, out) where (out, in) belongs
        self.bias.grad += dy2.sum(0)
        return dy @ self.weight.data


class LayerNormWithoutMeanTerm(LayerNorm):
    def backward(self, dy, cache):
        xhat, rstd = cache
        self.weight.grad += (dy * xhat).sum((0, 1))
        self.bias.grad += dy.sum((0, 1))
        g = dy * self.weight.data
        return rstd * (g - xhat * (g * xhat).mean(-1, keepdims=True))     # dropped: - g.mean(-1)


class AttentionSeeingOneAhead(CausalSelfAttention):
    def _bias(self, t, s, start, dtype):
        q, k = np.arange(start, start + t)[:, None], np.arange(s)[None, :]
        return np.where(k <= q + 1, 0.0, -np.inf).astype(dtype)           # the mask lets i see i + 1


class TanhGELU(GELU):
    def forward(self, x):
        return super().forward(x) if self.approximate == "tanh" else (GELU("tanh").forward(x)[0], x)


def test_reports_gradient_off_by_1e6():
    assert failing(compare(*build("linear", cls=GradOffByOnePPM))) == {"weight.grad"}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_reports_transposed_weight_grad(dtype):
    ref = TransposedWeightGrad(8, 8, rng=np.random.default_rng(0), dtype=dtype)
    x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(dtype)
    assert failing(compare(ref, nn.Linear(8, 8), (x,))) == {"weight.grad"}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_reports_dropped_layernorm_term(dtype):
    ref, twin, inputs = build("layernorm", dtype, LayerNormWithoutMeanTerm)
    assert failing(compare(ref, twin, inputs)) == {"input grad"}


def test_finite_differences_report_dropped_layernorm_term():
    ref, _, inputs = build("layernorm", "float64", LayerNormWithoutMeanTerm)
    assert failing(finite_difference_check(ref, inputs)) == {"input grad (fd)"}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_reports_wrong_causal_mask(dtype):
    ref, twin, inputs = build("attention", dtype, AttentionSeeingOneAhead)
    assert "output" in failing(compare(ref, twin, inputs))


def test_reports_assigned_instead_of_accumulated_gradient():
    class Assigning(Linear):
        def backward(self, dy, x):
            self.weight.grad[...] = 0.0                        # '=' where '+=' belongs
            return super().backward(dy, x)
    assert failing(compare(*build("linear", cls=Assigning))) == {"weight.grad accumulates (+=)"}


def test_reports_wrong_forward():
    ref, twin, inputs = build("gelu", "float64", TanhGELU)
    assert "output" in failing(compare(ref, twin, inputs))


def test_reports_parameter_left_uncompared():
    ref, twin, inputs = build("linear")
    ref.extra = Parameter(np.zeros(3))                         # a parameter the twin does not have
    report = compare(ref, twin, inputs)
    assert not report.passed
    assert any("only in reference ['extra']" in p for p in report.problems)
    ref, twin, inputs = build("linear")
    twin.extra = nn.Parameter(torch.zeros(3))                  # ... or one only the twin has
    assert any("only in twin ['extra']" in p for p in compare(ref, twin, inputs).problems)


def test_reports_silent_upcast():
    class Upcasting(Linear):
        def forward(self, x):
            y, cache = super().forward(x)
            return y.astype(np.float64), cache
    ref, twin, inputs = build("linear", "float32", Upcasting)
    report = compare(ref, twin, inputs)
    assert any("output has dtype float64, expected float32" in p for p in report.failures())   # a failing row


def test_reports_mixed_dtypes():
    ref, twin, (x,) = build("linear", "float64")
    report = compare(ref, twin, (x.astype(np.float32),))
    assert not report.passed and "mixed dtypes" in report.problems[0]


def test_reports_missing_input_gradient():
    class NoInputGrad(Linear):
        def backward(self, dy, x):
            super().backward(dy, x)
            return None
    report = compare(*build("linear", cls=NoInputGrad))
    assert report["input grad"].defect == "no gradient: the backward returned None (expected shape (2, 5, 8))"


def test_report_text_names_the_worst_element():
    ref = TransposedWeightGrad(4, 4, rng=np.random.default_rng(0), dtype="float64")
    report = compare(ref, nn.Linear(4, 4), (np.random.default_rng(1).standard_normal((3, 4)),))
    text = str(report)
    assert "FAIL weight.grad" in text and "ours" in text and "theirs" in text and "at (" in text


def test_dropout_case_without_masks_is_refused():
    ref, twin, inputs = build("linear")
    report = compare(ref, twin, inputs, dropout=True)          # asked for dropout, no dropout layer drew
    assert not report.passed and "no mask was drawn" in report.problems[0]


def test_rel_error_edge_cases():
    a = np.array([1.0, 2.0, 3.0])
    assert rel_error(a, a) == (0.0, 0.0, (0,))
    assert rel_error(a, a[:2])[0] == float("inf")               # shape mismatch
    assert rel_error(np.array([1.0, np.nan]), a[:2])[0] == float("inf")   # nan on one side only
    assert rel_error(np.array([np.nan]), np.array([np.nan]))[0] == 0.0    # nan on both: agreed
    assert rel_error(np.array([np.inf]), np.array([np.inf]))[0] == 0.0
    assert rel_error(np.zeros(2), np.zeros(2))[0] == 0.0
    assert rel_error(np.array([1e-3]), np.zeros(1))[0] == 1e-3            # zero scale: absolute
    assert rel_error(np.zeros(0), np.zeros(0))[0] == 0.0
    err, max_abs, where = rel_error(np.array([[1.0, 2.5]]), np.array([[1.0, 2.0]]))
    assert (err, max_abs, where) == (0.25, 0.5, (0, 1))


def test_twin_claims_are_torch_builtins():
    """The twins use torch's own modules where torch has one: spot-check the building blocks."""
    _, twin, _ = REGISTRY["block"].build("float64")
    kinds = {type(m) for m in twin.modules()}
    assert {nn.LayerNorm, nn.Linear, nn.GELU} <= kinds
    assert torch.nn.functional.scaled_dot_product_attention is not None


# Bugs planted in the fast path (reference/fast/): the same checks must catch them there too.


class FastEmbeddingDroppingRepeats(fast.Embedding):
    def backward(self, dy, idx):
        self.weight.grad[idx.reshape(-1)] += dy.reshape(-1, dy.shape[-1])   # a repeated id keeps one row only
        return None


class FastLinearOffByOnePPM(fast.Linear):
    def backward(self, dy, x, dbias=None):
        before = self.weight.grad.copy()
        dx = super().backward(dy, x, dbias)
        self.weight.grad[...] = before + (self.weight.grad - before) * (1 + 1e-6)
        return dx


class FastMLPMissingOneRowOfBias(fast.MLP):
    """The fused GELU backward with c_fc's bias gradient summed over every row but the last."""

    def backward(self, dy, cache):
        c1, dgelu, c3, c4 = cache
        da = self.c_proj.backward(self.dropout.backward(dy, c4), c3)
        da2 = (da * dgelu).reshape(-1, da.shape[-1])
        return self.c_fc.backward(da2, c1, dbias=column_sums(da2[:-1]))


def test_fast_path_bugs_are_reported_by_the_twin_and_by_finite_differences():
    ref, twin, inputs = build("embedding", cls=FastEmbeddingDroppingRepeats)
    assert np.unique(inputs[0]).size < inputs[0].size          # the inputs repeat an id
    assert failing(compare(ref, twin, inputs)) == {"weight.grad"}
    assert failing(finite_difference_check(ref, inputs)) == {"weight.grad (fd)"}
    assert failing(compare(*build("linear", cls=FastLinearOffByOnePPM))) == {"weight.grad"}
    for dtype in ("float64", "float32"):
        ref, twin, inputs = build("mlp", dtype, FastMLPMissingOneRowOfBias)
        assert failing(compare(ref, twin, inputs)) == {"c_fc.bias.grad"}


def test_fast_path_bug_is_reported_against_the_textbook_path():
    """tests/test_paths.py's comparison of the two paths sees a planted fast-path bug too."""
    from oracle.bridge.adapters import run_reference
    grads = {}
    for kernels, cls in (("textbook", None), ("fast", FastEmbeddingDroppingRepeats)):
        ref, _, inputs = REGISTRY["embedding"].build("float64", kernels=kernels)
        if cls is not None:
            ref.__class__ = cls
        grads[kernels] = run_reference(ref, inputs, 0)[3]["weight"]
    assert rel_error(grads["fast"], grads["textbook"])[0] > 1e-3


# ---------------------------------------------------------------- ill-conditioned cases (docs/tolerance.md)

def attention_gradient_scaled(which: str, factor: float):
    """Textbook attention whose q, k or v gradient is off by `factor` (applied where the three meet)."""
    index = "qkv".index(which)

    class Scaled(CausalSelfAttention):
        def merge_heads(self, *heads):
            if len(heads) == 3:                                # the backward's (dq, dk, dv)
                heads = tuple(h * factor if i == index else h for i, h in enumerate(heads))
            return CausalSelfAttention.merge_heads(*heads)
    return Scaled


def one_pass_softmax_backward(dp, p, axis=-1):
    return p * (dp - (dp * p).sum(axis=axis, keepdims=True))  # the row sum once: cancels on saturated rows


def softmax_backward_without_row_sum(dp, p, axis=-1):
    return p * dp


SATURATED_GQA = ("attention_gqa", Dims(B=3, T=5, H=6, Hkv=3, hd=2, V=11, L=6), 16666)
SATURATED_ROPE = ("attention_rope", Dims(B=3, T=10, H=2, Hkv=2, hd=2, V=20, L=10), 50792)


@pytest.mark.parametrize("example, cls, softmax_backward", [
    (SATURATED_GQA, attention_gradient_scaled("v", 1.001), None),
    (SATURATED_GQA, attention_gradient_scaled("k", 1.1), None),
    (SATURATED_GQA, None, one_pass_softmax_backward),
    (SATURATED_GQA, None, softmax_backward_without_row_sum),
    (SATURATED_ROPE, attention_gradient_scaled("q", 1.1), None),
    (SATURATED_ROPE, attention_gradient_scaled("k", 1.1), None),
    (SATURATED_ROPE, attention_gradient_scaled("v", 1.1), None),
    (SATURATED_ROPE, None, softmax_backward_without_row_sum),
], ids=["gqa-dv-0.1%", "gqa-dk-10%", "gqa-one-pass-softmax", "gqa-no-row-sum",
        "rope-dq-10%", "rope-dk-10%", "rope-dv-10%", "rope-no-row-sum"])
def test_saturated_attention_still_reports_wrong_gradients(example, cls, softmax_backward, monkeypatch):
    """float32 attention at input scale 30 with the ill-conditioned yardstick (the examples of
    tests/test_cases.py::SATURATED): a wrong gradient is still reported. On the RoPE example the
    yardstick is widest (the truth moves by 9e-4 under one float32 rounding of the inputs)."""
    import reference.attention

    name, d, seed = example
    if softmax_backward is not None:
        monkeypatch.setattr(reference.attention, "softmax_backward", softmax_backward)
    ref, twin, (x,) = build(name, "float32", cls, d, seed=seed, kernels="textbook")
    correct = compare(*REGISTRY[name].build("float32", seed, d)[:2], (x * np.float32(30.0),), seed=seed,
                      ill_conditioned=True)
    assert correct.passed, str(correct)
    assert failing(compare(ref, twin, (x * np.float32(30.0),), seed=seed, ill_conditioned=True)) & {"input grad", "c_attn.weight.grad"}


# ---------------------------------------------------------------- the new checks can fail too (tests/test_gradcheck.py)

class OneWeightEntryWrong(Linear):
    """A weight gradient wrong in one entry only: 12 sampled coordinates of 24 usually miss it."""

    def backward(self, dy, x):
        dx = super().backward(dy, x)
        self.weight.grad[-1, -1] += 1e-3
        return dx


def test_full_jacobian_reports_one_wrong_entry():
    from oracle.bridge.adapters import jacobian_check
    ref, _, inputs = build("linear", cls=OneWeightEntryWrong, dims=Dims(B=1, T=2, H=1, hd=4))
    report = jacobian_check(ref, inputs)
    assert failing(report) == {"weight.grad (jacobian)"}
    assert report["weight.grad (jacobian)"].where[1] == report["weight.grad (jacobian)"].ours_array.shape[1] - 1


def test_directional_derivative_reports_a_dropped_term():
    from oracle.bridge.adapters import directional_check
    ref, _, inputs = build("layernorm", cls=LayerNormWithoutMeanTerm)
    assert failing(directional_check(ref, inputs)) == {"all gradients (directional)", "input grad (directional)"}


class BackwardSpoilsItsCache(GELU):
    def backward(self, dy, x):
        dx = super().backward(dy, x)
        x *= 1.5                                                 # the cache is modified: a second backward differs
        return dx


class SecondBackwardAssigns(Linear):
    def backward(self, dy, x):
        if getattr(self, "ran", False):
            self.weight.grad[...] = 0.0                          # '=' on the second call
        self.ran = True
        return super().backward(dy, x)


def test_backward_twice_reports_a_spoiled_cache_and_a_lost_accumulation():
    from oracle.bridge.adapters import consistency
    ref, _, inputs = build("gelu", cls=BackwardSpoilsItsCache)
    assert "input grad backward twice, bit-identical" in failing(consistency(ref, inputs))
    ref, _, inputs = build("linear", cls=SecondBackwardAssigns)
    assert failing(consistency(ref, inputs)) == {"weight.grad accumulates (2x, from one forward)"}


class FlatWriteOnCopy(GELU):
    """Writes through x.reshape(-1), which is a copy, not a view, when x is not C-contiguous."""

    def forward(self, x):
        y = np.empty_like(x)
        y.reshape(-1)[...] = np.ravel(x) * 2.0 if y.flags.c_contiguous else 0.0
        return y, x

    def backward(self, dy, x):
        return dy * 2.0


def test_noncontiguous_inputs_report_a_layout_bug():
    from oracle.bridge.adapters import consistency
    ref, _, inputs = build("gelu", cls=FlatWriteOnCopy)
    assert failing(consistency(ref, inputs)) == {"output (inputs transposed, dout strided)"}   # strided: C-like, kept
