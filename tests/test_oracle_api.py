"""oracle.check, the function-level API: any NumPy code against any torch function or module.

Several inputs with gradients, parameters by name with a name map and named slices, dropout masks
(a source, a list in draw order, replayed np.random draws), opt-in accumulation, the report's full
arrays and forward order, the absolute floor, and misuse refused with the tensor named. Also: oracle/core
and the twins take nothing from `reference` (the ALiBi slopes and RoPE tables checked against the
papers' values written by hand)."""

import ast
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oracle import CheckError, NumpyRandomReplay, Param, check, params_of
from oracle.bridge import twins
from oracle.core.fd import directional_check, jacobian_check, sampled_check

ROOT = Path(__file__).resolve().parents[1]
rng = np.random.default_rng(0)


def failing(report) -> list[str]:
    assert not report.passed, f"the harness missed a defect:\n{report}"
    return [c.name for c in report.checks if not c.passed]


# ---------------------------------------------------------------------------------------------- several inputs

def test_two_inputs_carry_gradients_by_name():
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    saved = {}

    def forward(a, b):
        saved.update(a=a, b=b)
        return a * b + np.sin(a)

    def backward(dy):
        return dy * (saved["b"] + np.cos(saved["a"])), dy * saved["a"]

    report = check(forward, backward, lambda a, b: a * b + torch.sin(a), (a, b), input_names=("a", "b"))
    assert report.passed, str(report)
    assert [c.name for c in report.checks] == ["output", "a grad", "b grad"]
    assert report["b grad"].ours_array.shape == (3, 4)                  # the full arrays are kept
    np.testing.assert_array_equal(report["b grad"].ours_array, report.dout * a)

    wrong = check(forward, lambda dy: (dy * saved["b"], dy * saved["a"]),   # cos(a) forgotten
                  lambda a, b: a * b + torch.sin(a), (a, b), input_names=("a", "b"))
    assert failing(wrong) == ["a grad"]
    only_b = check(forward, lambda dy: dy * saved["a"], lambda a, b: a * b + torch.sin(a), (a, b),
                   input_names=("a", "b"), grad_inputs=["b"])
    assert only_b.passed and [c.name for c in only_b.checks] == ["output", "b grad"]


def test_backward_with_the_wrong_number_of_gradients_is_refused():
    a, b = rng.standard_normal(3), rng.standard_normal(3)
    with pytest.raises(CheckError, match=r"backward returned 1 gradient\(s\), expected 2.*\(a, b\)"):
        check(lambda a, b: a * b, lambda dy: (dy,), lambda a, b: a * b, (a, b), input_names=("a", "b"))
    # a gradient of the wrong shape is a defect of the code under test: a failing row, the others measured
    report = check(lambda a, b: a * b, lambda dy: (dy[:2], dy * a), lambda a, b: a * b, (a, b), input_names=("a", "b"))
    assert failing(report) == ["a grad"] and report["a grad"].defect == "shape (2,) here, (3,) in the reference"


def test_a_bare_input_array_and_a_forward_returning_a_tuple_are_refused_clearly():
    """Before: check(..., x) with x a bare array fed its rows to forward as separate arguments ("forward()
    takes 2 positional arguments but 3 were given"); a forward with this project's (y, cache) protocol
    died in numpy ("setting an array element with a sequence")."""
    from reference.layers import Linear
    x = rng.standard_normal((2, 3))
    with pytest.raises(CheckError, match=r"inputs is one array of shape \(2, 3\); give a tuple .* e\.g\. \(x,\)"):
        check(lambda x: 2 * x, lambda dy: 2 * dy, lambda x: 2 * x, x)
    layer = Linear(3, 4, bias=False, dtype="float64", rng=np.random.default_rng(0))
    with pytest.raises(CheckError, match=r"forward returned a tuple of 2; .*use oracle.compare"):
        check(layer.forward, lambda dy: dy, nn.Linear(3, 4, bias=False), (x,),
              params={"weight": (layer.weight.data, layer.weight.grad)})
    with pytest.raises(CheckError, match="forward returned a tuple of 2"):
        jacobian_check(layer.forward, lambda dy: dy, (x,))


# ---------------------------------------------------------------------------------------------- name map, slices

class SeparateQKV:
    """Third-party style: separate q/k/v weights on the object, gradients in grad_* attributes."""

    def __init__(self, C, rng, bug=None):
        self.q_proj, self.k_proj, self.v_proj = (rng.standard_normal((C, C)) / 2 for _ in range(3))
        self.bug = bug

    def forward(self, x):
        self.x = x
        self.q, self.k, self.v = x @ self.q_proj.T, x @ self.k_proj.T, x @ self.v_proj.T
        return self.q * self.k + self.v

    def backward(self, dy):
        dq, dk, dv = dy * self.k, dy * self.q, dy
        self.grad_q_proj = dq.reshape(-1, dq.shape[-1]).T @ self.x.reshape(-1, self.x.shape[-1])
        self.grad_k_proj = dk.reshape(-1, dk.shape[-1]).T @ self.x.reshape(-1, self.x.shape[-1])
        self.grad_v_proj = dv.reshape(-1, dv.shape[-1]).T @ self.x.reshape(-1, self.x.shape[-1])
        if self.bug == "k":
            self.grad_k_proj = self.grad_k_proj.T                     # transposed
        return dq @ self.q_proj + dk @ self.k_proj + dv @ self.v_proj


class FusedQKV(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.c_attn = nn.Linear(C, 3 * C, bias=False)

    def forward(self, x):
        q, k, v = self.c_attn(x).chunk(3, dim=-1)
        return q * k + v


def fused_map(C):
    return {"q_proj": ("c_attn.weight", np.s_[0:C]), "k_proj": ("c_attn.weight", np.s_[C:2 * C]),
            "v_proj": ("c_attn.weight", np.s_[2 * C:])}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_separate_weights_against_a_fused_twin(dtype):
    C = 4
    layer = SeparateQKV(C, np.random.default_rng(1))
    for n in ("q_proj", "k_proj", "v_proj"):
        setattr(layer, n, getattr(layer, n).astype(dtype))
    x = rng.standard_normal((2, 3, C)).astype(dtype)
    params = params_of(layer, ["q_proj", "k_proj", "v_proj"])
    report = check(layer.forward, layer.backward, FusedQKV(C), (x,), params=params, name_map=fused_map(C))
    assert report.passed, str(report)
    assert [c.name for c in report.checks] == ["output", "input grad", "q_proj.grad", "k_proj.grad", "v_proj.grad"]

    layer.bug = "k"
    report = check(layer.forward, layer.backward, FusedQKV(C), (x,), params=params, name_map=fused_map(C))
    assert failing(report) == ["k_proj.grad"]
    assert report.first_failure.name == "k_proj.grad"


def test_a_fused_tensor_checked_in_named_slices():
    C = 4
    twin = FusedQKV(C)
    w = np.random.default_rng(2).standard_normal((3 * C, C))
    grad = np.zeros_like(w)
    saved = {}

    def forward(x):
        saved["x"], saved["qkv"] = x, x @ w.T
        q, k, v = np.split(saved["qkv"], 3, axis=-1)
        return q * k + v

    def backward(dy, bug=False):
        q, k, _ = np.split(saved["qkv"], 3, axis=-1)
        dqkv = np.concatenate([dy * k, dy * q, dy * (2.0 if bug else 1.0)], axis=-1)
        grad[...] += dqkv.reshape(-1, 3 * C).T @ saved["x"].reshape(-1, C)
        return dqkv @ w

    x = rng.standard_normal((2, 3, C))
    parts = {"c_attn.weight": {"q": np.s_[:C], "k": np.s_[C:2 * C], "v": np.s_[2 * C:]}}
    report = check(forward, backward, twin, (x,), params={"c_attn.weight": (w, grad)}, slices=parts, accumulates=True)
    assert report.passed, str(report)
    assert [c.name for c in report.checks][2:5] == ["c_attn.weight.grad[q]", "c_attn.weight.grad[k]", "c_attn.weight.grad[v]"]
    report = check(forward, lambda dy: backward(dy, bug=True), twin, (x,), params={"c_attn.weight": (w, grad)},
                   slices=parts)
    assert failing(report) == ["input grad", "c_attn.weight.grad[v]"]


def test_misnamed_and_misshapen_parameters_are_refused_by_name():
    C = 4
    layer = SeparateQKV(C, np.random.default_rng(1))
    params = params_of(layer, ["q_proj", "k_proj", "v_proj"])
    x = rng.standard_normal((2, 3, C))
    with pytest.raises(CheckError, match=r"name_map names \['nope'\]"):
        check(layer.forward, layer.backward, FusedQKV(C), (x,), params=params, name_map={**fused_map(C), "nope": "x"})
    with pytest.raises(CheckError, match=r"'k_proj' maps to 'c_atn.weight', which the reference module does not have"):
        check(layer.forward, layer.backward, FusedQKV(C), (x,), params=params,
              name_map={**fused_map(C), "k_proj": ("c_atn.weight", np.s_[C:2 * C])})
    with pytest.raises(CheckError, match=r"parameter 'v_proj': shape \(4, 4\) here, \(8, 4\) in the reference"):
        check(layer.forward, layer.backward, FusedQKV(C), (x,), params=params,
              name_map={**fused_map(C), "v_proj": ("c_attn.weight", np.s_[C:])})
    with pytest.raises(CheckError, match=r"has no attribute\(s\) \['o_proj'\]"):
        params_of(layer, ["q_proj", "o_proj"])
    with pytest.raises(CheckError, match="output: shape"):
        check(lambda x: x[:1], lambda dy: None, lambda x: x, (x,), grad_inputs=())
    # a part of the twin that none of ours covers is a gradient left uncompared
    report = check(layer.forward, layer.backward, FusedQKV(C), (x,), params={"q_proj": params["q_proj"]},
                   name_map={"q_proj": fused_map(C)["q_proj"]})
    assert any("only in twin ['c_attn.weight (32 of 48 elements)']" in p for p in report.problems), report.problems


# ---------------------------------------------------------------------------------------------- dropout masks

class NpRandomDropout:
    """Third-party style: inverted dropout drawn with np.random inside the forward."""

    def __init__(self, p):
        self.p = p

    def forward(self, x):
        self.mask = (np.random.rand(*x.shape) >= self.p) / (1.0 - self.p)
        return np.tanh(x) * self.mask

    def backward(self, dy):
        return dy * self.mask * (1.0 - np.tanh(self.x_cache) ** 2) if hasattr(self, "x_cache") else None


def test_np_random_draws_are_recorded_and_replayed():
    layer = NpRandomDropout(0.4)
    x = rng.standard_normal((3, 5))

    def forward(x):
        layer.x_cache = x
        return layer.forward(x)

    def reference(x, masks):
        return torch.tanh(x) * (torch.as_tensor(masks[0]) >= 0.4).to(x.dtype) / 0.6

    state = np.random.get_state()
    report = check(forward, layer.backward, reference, (x,), masks=NumpyRandomReplay(seed=3))
    assert report.passed, str(report)
    assert np.array_equal(np.random.get_state()[1], state[1])          # the global state is left as it was
    fd = directional_check(forward, layer.backward, (x,), masks=NumpyRandomReplay(seed=3))
    assert fd.passed, str(fd)                                          # every forward replays the same mask


def test_masks_as_a_list_in_draw_order_and_as_a_source():
    x = rng.standard_normal((2, 6))
    m1, m2 = (np.random.default_rng(5).random((2, 6)) >= 0.5) * 2.0, (np.random.default_rng(9).random((2, 6)) >= 0.5) * 2.0
    saved = {}

    def forward(x, masks):
        saved["m"] = (masks("first", x.shape, 0.5, x.dtype), masks("second", x.shape, 0.5, x.dtype))
        return x * saved["m"][0] * saved["m"][1]

    def backward(dy):
        return dy * saved["m"][0] * saved["m"][1]

    def listed(x, masks):
        return x * torch.as_tensor(masks[0]) * torch.as_tensor(masks[1])

    assert check(forward, backward, listed, (x,), masks=[m1, m2]).passed
    wrong = check(forward, backward, lambda x, masks: x * torch.as_tensor(masks[1]), (x,), masks=[m1, m2])
    assert failing(wrong) == ["output", "input grad"]

    def source(name, shape, p, dtype):
        return (np.random.default_rng(len(name)).random(shape) >= p) / (1 - p)

    def named(x, masks):
        return x * torch.as_tensor(masks["first"]) * torch.as_tensor(masks["second"])

    assert check(forward, backward, named, (x,), masks=source).passed
    report = check(lambda x, masks: x, lambda dy: dy, lambda x, masks: x, (x,), masks=source)
    assert any("no mask was drawn" in p for p in report.problems)


# ---------------------------------------------------------------------------------------------- accumulation, order

def test_accumulation_is_opt_in():
    w = rng.standard_normal((3, 3))
    grad = np.zeros_like(w)
    saved = {}

    def forward(x):
        saved["x"] = x
        return x @ w.T

    def assigning_backward(dy):
        grad[...] = dy.T @ saved["x"]                                  # '=': fine for code that zeroes nothing
        return dy @ w

    x = rng.standard_normal((4, 3))
    twin = nn.Linear(3, 3, bias=False)
    assert check(forward, assigning_backward, twin, (x,), params={"weight": (w, grad)}).passed
    report = check(forward, assigning_backward, twin, (x,), params={"weight": (w, grad)}, accumulates=True)
    assert failing(report) == ["weight.grad accumulates (+=)"]


def test_first_failure_is_in_forward_order():
    """Two bugs in a two-layer model: the report lists tensors in the order the forward uses them,
    whatever the order the parameters were given in."""
    w1, w2 = rng.standard_normal((4, 3)), rng.standard_normal((2, 4))
    g1, g2 = np.zeros_like(w1), np.zeros_like(w2)
    saved = {}

    def forward(x):
        saved["x"], saved["h"] = x, np.tanh(x @ w1.T)
        return saved["h"] @ w2.T

    def backward(dy):
        g2[...] += 1.5 * dy.T @ saved["h"]                             # bug 1
        dh = (dy @ w2) * (1 - saved["h"] ** 2)
        g1[...] += dh.T @ saved["x"] * 1.5                             # bug 2
        return dh @ w1

    twin = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 2, bias=False))
    report = check(forward, backward, twin, (rng.standard_normal((5, 3)),),
                   params={"l2": (w2, g2), "l1": (w1, g1)}, name_map={"l1": "0.weight", "l2": "2.weight"})
    assert [c.name for c in report.checks] == ["output", "input grad", "l1.grad", "l2.grad"]
    assert failing(report) == ["l1.grad", "l2.grad"]
    assert report.first_failure.name == "l1.grad"
    assert "first failure in forward order: l1.grad" in str(report)


# ---------------------------------------------------------------------------------------------- the absolute floor

def _zero_gradient_layer(noise: float, scale: float = 1.0):
    """y = x * w, and a parameter c whose true gradient is exactly zero (it enters as c - c)."""
    w, c = rng.standard_normal(6) * scale, rng.standard_normal(6)
    gw, gc = np.zeros(6), np.zeros(6)
    saved = {}

    def forward(x):
        saved["x"] = x
        return x * w + (c - c)

    def backward(dy):
        gw[...] += (dy * saved["x"]).sum(0)
        gc[...] += noise * gw                                           # round-off-sized noise, or a real error
        return dy * w

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.c = nn.Parameter(torch.zeros(6)), nn.Parameter(torch.zeros(6))

        def forward(self, x):
            return x * self.w + (self.c - self.c)

    x = rng.standard_normal((4, 6)) * scale
    return forward, backward, Twin(), (x,), {"w": (w, gw), "c": (c, gc)}


def test_zero_true_gradient_with_round_off_noise_passes():
    """The true gradient of c is exactly 0; ours carries noise of a few ulps of the gradients around it.
    Measured against its own (zero) scale, that noise was a failure; against the computation's scale
    (the absolute floor, docs/tolerance.md) it is round-off."""
    forward, backward, twin, inputs, params = _zero_gradient_layer(noise=4 * 2.0**-52, scale=1e5)
    report = check(forward, backward, twin, inputs, params=params)
    assert report.passed, str(report)
    assert not np.any(report["c.grad"].expected_array) and np.any(report["c.grad"].ours_array)
    assert report["c.grad"].err < 1e-14
    from oracle.core import rel_error
    assert rel_error(report["c.grad"].ours_array, report["c.grad"].expected_array)[0] > 1e-11   # no floor: a false failure


def test_a_genuinely_wrong_small_gradient_still_fails():
    forward, backward, twin, inputs, params = _zero_gradient_layer(noise=1e-8)
    assert failing(check(forward, backward, twin, inputs, params=params)) == ["c.grad"]
    # and a small but nonzero gradient off by 10% fails, in both dtypes
    for dtype in ("float64", "float32"):
        w = np.array([1.0, 1e-3], dtype)
        gw = np.zeros(2, dtype)
        saved = {}

        def forward(x):
            saved["x"] = x
            return x * w

        def backward(dy):
            gw[...] += (dy * saved["x"]).sum(0) * np.array([1.0, 1.1], dtype)
            return dy * w

        class Twin(nn.Module):
            def __init__(self):
                super().__init__()
                self.w = nn.Parameter(torch.zeros(2))

            def forward(self, x):
                return x * self.w

        x = np.array([[1.0, 1e-2], [0.5, 2e-2]], dtype)
        assert failing(check(forward, backward, Twin(), (x,), params={"w": (w, gw)})) == ["w.grad"]


# ---------------------------------------------------------------------------------------------- fd on any code

def test_finite_difference_checks_on_third_party_code():
    layer = SeparateQKV(3, np.random.default_rng(4))
    x = rng.standard_normal((2, 2, 3))
    params = params_of(layer, ["q_proj", "k_proj", "v_proj"])
    for fn in (sampled_check, jacobian_check, directional_check):
        assert fn(layer.forward, layer.backward, (x,), params=params).passed
    layer.bug = "k"
    assert "k_proj.grad (jacobian)" in failing(jacobian_check(layer.forward, layer.backward, (x,), params=params))
    assert "k_proj.grad (directional)" in failing(directional_check(layer.forward, layer.backward, (x,), params=params))
    for fn in (sampled_check, jacobian_check, directional_check):  # all three refuse float32 alike
        with pytest.raises(CheckError, match="need float64: input 'input' is float32"):
            fn(layer.forward, layer.backward, (x.astype(np.float32),), params=params)
    with pytest.raises(CheckError, match="max_size"):
        jacobian_check(layer.forward, layer.backward, (rng.standard_normal((50, 40, 3)),), params=params)


def test_param_with_an_attribute_or_callable_gradient():
    layer = SeparateQKV(3, np.random.default_rng(4))
    x = rng.standard_normal((2, 3))
    params = {"q_proj": Param(layer.q_proj, "grad_q_proj", layer), "k_proj": (layer.k_proj, lambda: layer.grad_k_proj),
              "v_proj": Param(layer.v_proj, lambda: layer.grad_v_proj)}
    assert check(layer.forward, layer.backward, FusedQKV(3), (x,), params=params, name_map=fused_map(3)).passed


# ---------------------------------------------------------------------------------------------- independence

def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module or "")
    return names


INDEPENDENT = sorted((ROOT / "oracle" / "core").glob("*.py")) + [ROOT / "oracle" / "bridge" / "twins.py"]


@pytest.mark.parametrize("path", INDEPENDENT, ids=lambda p: str(p.relative_to(ROOT / "oracle")))
def test_oracle_core_imports_nothing_from_reference(path):
    """oracle/core works on anyone's code, and no twin takes its math from what it checks: no import of
    `reference`, at module level or inside a function, and no dynamic import at all. The project's layers
    reach the core through oracle/bridge/adapters.py (and the registry's cases)."""
    imported = _imports(path)
    assert not [n for n in imported if n == "reference" or n.startswith("reference.")], imported
    dynamic = [ast.unparse(node) for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                   "import_module", "__import__", "find_spec", "run_module")]
    assert not dynamic, dynamic


def test_importing_the_core_loads_nothing_from_reference():
    """`import oracle.core` and every name it exports load no module of `reference` (nor the bridge)."""
    script = ("import sys\nfrom oracle.core import *\nimport oracle.core.torch_side\n"
              "loaded = [m for m in sys.modules if m.split('.')[0] == 'reference' or m.startswith('oracle.bridge')]\n"
              "assert not loaded, loaded\nprint('ok')\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_alibi_slopes_are_the_papers():
    """Press et al. 2022: n = 8 gives 1/2, 1/4, ..., 1/256; a non-power of two takes the slopes of the
    nearest lower power of two, then every other slope of twice that (6 heads: 2^-2, 2^-4, 2^-6, 2^-8,
    then 2^-1, 2^-3), as the paper's get_slopes does."""
    assert twins.alibi_head_slopes(8) == [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
    assert twins.alibi_head_slopes(1) == [1 / 256]
    assert twins.alibi_head_slopes(2) == [1 / 16, 1 / 256]
    assert twins.alibi_head_slopes(4) == [1 / 4, 1 / 16, 1 / 64, 1 / 256]
    assert twins.alibi_head_slopes(6) == [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]
    assert np.allclose(twins.alibi_head_slopes(12), [2**-1, 2**-2, 2**-3, 2**-4, 2**-5, 2**-6, 2**-7, 2**-8,
                                                      2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5], rtol=1e-15, atol=0)
    assert np.allclose(twins.alibi_head_slopes(16), [2 ** (-0.5 * (i + 1)) for i in range(16)], rtol=1e-15, atol=0)


def test_rope_rotates_each_pair_by_position_times_frequency():
    """RoFormer's rotation by m * theta_i, theta_i = base^(-2i/hd), on pairs (i, i + hd/2): values by hand."""
    hd, base = 4, 100.0
    x = torch.zeros(1, 3, hd, dtype=torch.float64)
    x[..., 0] = 1.0                                                    # pair 0 = (1, 0); pair 1 = (0, 0)
    x[..., 1] = 2.0                                                    # pair 1 = (2, 0), frequency 1/10
    y = twins.rope(x, start=5, base=base)
    for t in range(3):
        m = 5 + t
        assert torch.allclose(y[0, t], torch.tensor([math.cos(m), 2 * math.cos(m / 10), math.sin(m),
                                                     2 * math.sin(m / 10)], dtype=torch.float64), atol=1e-15)


def test_twin_attention_uses_its_own_slopes():
    """The ALiBi twin against its definition written here with F.softmax: the bias is -m_h (i - j)."""
    torch.manual_seed(0)
    att = twins.CausalSelfAttention(6, 3, 3, False, 0.0, "alibi").double()
    x = torch.randn(1, 4, 6, dtype=torch.float64)
    q, k, v = att.c_attn(x).split(6, -1)
    q, k, v = (t.view(1, 4, 3, 2).transpose(1, 2) for t in (q, k, v))
    slopes = torch.tensor([2**-4, 2**-8, 2**-2], dtype=torch.float64).view(3, 1, 1)   # 3 heads: 2, then 1 of 4
    i, j = torch.arange(4)[:, None], torch.arange(4)[None, :]
    scores = q @ k.transpose(-1, -2) / math.sqrt(2) - slopes * (i - j)
    scores = scores.masked_fill(j > i, float("-inf"))
    y = att.c_proj((F.softmax(scores, -1) @ v).transpose(1, 2).reshape(1, 4, 6))
    assert torch.allclose(att(x), y, atol=1e-14)


def test_whole_model_report_points_at_the_broken_backward():
    """A GPT whose second block's MLP input projection returns a wrong dx (its own gradients stay
    right): every gradient used before it in the forward fails, the output and everything after it
    pass, and the last failing gradient in forward order is the norm just before the broken step."""
    from oracle import REGISTRY, compare
    from reference.layers import Linear

    class WrongDx(Linear):
        def backward(self, dy, x, **kwargs):
            return super().backward(dy, x, **kwargs) * 1.001

    ref, twin, inputs = REGISTRY["gpt"].build("float64", kernels="textbook")   # WrongDx subclasses the textbook Linear
    ref.transformer.h[1].mlp.c_fc.__class__ = WrongDx
    report = compare(ref, twin, inputs, case="gpt")
    names = [c.name for c in report.checks if c.kind == "param"]
    bad = failing(report)
    assert report["output"].passed
    assert bad[0] == "transformer.wte.weight.grad" == report.first_failure.name
    assert report.last_failure.name == "transformer.h.1.ln_2.bias.grad"
    assert names.index("transformer.h.1.ln_2.bias.grad") + 1 == names.index("transformer.h.1.mlp.c_fc.weight.grad")
    assert all(n not in bad for n in names[names.index("transformer.h.1.mlp.c_fc.weight.grad"):]
               if n != "transformer.wte.weight.grad")
    assert "last failing gradient in forward order: transformer.h.1.ln_2.bias.grad" in str(report)


# ---------------------------------------------------------------------------------------------- ill-conditioned cases

def _exp_1000(x_shift: int = 1, rate: float = 1000.0):
    """y = exp(1000 x) on x = k / 1024 (so 1000 x is exact in float32 and torch's float32 result is
    within an ulp of the truth); ours reads x one ulp up (x_shift = 1): a backward error of one float32
    rounding, which the condition number 1000 |x| (up to 80) turns into ~80 ulps of y."""
    x = (np.arange(-80, 81) / 1024).astype(np.float32)
    saved = {}

    def forward(x):
        xr = x
        for _ in range(x_shift):
            xr = np.nextafter(xr, np.float32(np.inf))
        saved["y"] = np.exp(np.float32(rate) * xr)
        return saved["y"]

    def backward(dy):
        return dy * np.float32(rate) * saved["y"]

    return forward, backward, (lambda t: torch.exp(1000.0 * t)), (x,)


def test_ill_conditioned_yardstick_counts_one_rounding_of_the_inputs():
    """A function of condition number up to 80, and an implementation whose only error is one float32
    rounding of its input: ~80 ulps off, while torch is within an ulp. The plain float32 policy fails it
    (10x torch's error, or 16 ulps); with ill_conditioned=True the yardstick also counts how far the
    float64 truth moves under one rounding of the inputs (docs/tolerance.md, "Ill-conditioned cases"),
    and it passes. Two roundings still pass; a wrong rate (1001 for 1000) still fails; float64 is
    unchanged."""
    forward, backward, twin, inputs = _exp_1000()
    plain = check(forward, backward, twin, inputs)
    assert failing(plain) == ["output", "input grad"]
    ill = check(forward, backward, twin, inputs, ill_conditioned=True)
    assert ill.passed, str(ill)
    assert all(c.tol > 4 * p.tol for c, p in zip(ill.checks, plain.checks))
    assert check(*_exp_1000(x_shift=2)[:3], inputs, ill_conditioned=True).passed
    wrong = _exp_1000(rate=1001.0)
    assert failing(check(*wrong[:3], inputs, ill_conditioned=True)) == ["output", "input grad"]
    x64 = (inputs[0].astype(np.float64),)
    f64, b64 = (lambda x: np.exp(1000.0 * x)), (lambda dy: dy * 1000.0 * np.exp(1000.0 * x64[0]))
    tols = [[c.tol for c in check(f64, b64, twin, x64, ill_conditioned=flag).checks] for flag in (False, True)]
    assert tols[0] == tols[1] == [1e-11, 1e-11]
