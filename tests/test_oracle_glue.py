"""The glue between anyone's NumPy code and oracle.check, one test per friction a new user meets:
parameters found on nested objects, names mapped by rules, every random draw replayed, tied weights,
losses, an upstream gradient that cannot collide with an input, defects as rows, plain functions as
references, finite differences in the code's order, context on failure, and report.assert_ok().
Each test plants the bug the feature exists for and asserts it is reported."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import outside_style_gpt as ours
from oracle import (CheckError, NumpyRandomReplay, Param, RecordedDropout, check, check_loss, directional_check,
                    params_of, replay_dropout)


def failing(report) -> list[str]:
    assert not report.passed, f"the harness missed a defect:\n{report}"
    return [c.name for c in report.checks if not c.passed]


LINEAR = {"weight": ("weight", None, "T")}
x = np.random.default_rng(0).standard_normal((2, 3, 4))


# ---------------------------------------------------------------------------------------------- 1. parameters found

class Holder:
    """Weights nested in objects, lists and dicts; gradients in grad_<leaf> beside each."""

    def __init__(self):
        rng = np.random.default_rng(3)
        self.attn = ours.Linear(4, 4, rng)
        self.layers = [ours.LayerNorm(4)]
        self.extra = {"scale": rng.standard_normal(4)}


def test_params_of_walks_nested_objects_lists_and_dicts():
    h = Holder()
    found = params_of(h)
    assert list(found) == ["attn.weight", "attn.bias", "layers.0.gamma", "layers.0.beta", "extra.scale"]
    assert found["attn.weight"].value is h.attn.weight                     # the very array
    assert found.no_grad == list(found)                                    # no backward yet: said so
    assert "no gradient yet: attn.weight" in found.describe()
    h.attn.forward(x)
    h.attn.backward(x)
    np.testing.assert_array_equal(found["attn.weight"].read_grad(), h.attn.grad_weight)
    after = params_of(h.attn)                                              # after a backward, h.attn.x is skipped
    assert list(after) == ["weight", "bias"] and after.skipped == ["x"]
    # names as dotted paths, and the three forms of the gradient rule
    assert list(params_of(h, ["attn.weight", "layers.0.gamma"])) == ["attn.weight", "layers.0.gamma"]
    assert params_of(h, ["attn.weight"], grad="{name}_grad")["attn.weight"].grad == "attn.weight_grad"
    assert params_of(h, ["attn.weight"], grad={"attn.weight": "g"})["attn.weight"].grad == "g"
    assert params_of(h, ["attn.weight"], grad=lambda n: n + "!")["attn.weight"].grad == "attn.weight!"
    with pytest.raises(CheckError, match=r"has no attribute\(s\) \['attn.W_q.weight'\]"):
        params_of(h, ["attn.W_q.weight"])


def test_a_value_and_gradient_name_pair_is_a_clear_error():
    layer = ours.Linear(4, 4, np.random.default_rng(1))
    with pytest.raises(CheckError, match=r"parameter 'weight': the gradient is named 'grad_weight' but no object "
                                         r"holds it; give Param\(value, 'grad_weight', owner\)"):
        check(layer.forward, layer.backward, nn.Linear(4, 4, bias=False), (x,),
              params={"weight": (layer.weight, "grad_weight")}, name_map=LINEAR)
    assert check(layer.forward, layer.backward, nn.Linear(4, 4, bias=False), (x,),
                 params={"weight": Param(layer.weight, "grad_weight", layer)}, name_map=LINEAR).passed


# ---------------------------------------------------------------------------------------------- 2. names by rule

def test_name_map_as_rules_and_as_a_callable_serve_any_subset():
    rules = [(r"(.*)gamma", r"\1weight"), (r"(.*)beta", r"\1bias"), (r"(.*(W_.|fc|proj)\.)weight", (r"\1weight", None, "T"))]
    from test_verifying_your_own_code import fenced
    namespace: dict = {}
    exec(next(b for lang, b in fenced() if lang == "python" and "class GPT(nn.Module)" in b), namespace)
    block, twin = ours.Block(4, 2, 0.0, np.random.default_rng(2)), namespace["Block"](4, 2, 0.0)
    assert check(block.forward, block.backward, twin, (x,), params=params_of(block), name_map=rules).passed
    subset = params_of(block, ["ln1.gamma", "attn.W_v.weight"])           # the same rules, fewer params
    report = check(block.forward, block.backward, twin, (x,), params=subset, name_map=rules)
    assert any("only in twin" in p for p in report.problems)               # the rest of the twin: said so
    assert [c.name for c in report.checks] == ["output", "input grad", "ln1.gamma.grad", "attn.W_v.weight.grad"]
    as_callable = check(block.forward, block.backward, twin, (x,), params=subset,
                        name_map=lambda n: n.replace("gamma", "weight") if "ln" in n else (n, None, "T"))
    assert [(c.name, c.err) for c in as_callable.checks] == [(c.name, c.err) for c in report.checks]
    with pytest.raises(CheckError) as e:                                   # every unmatched name in one error
        check(block.forward, block.backward, twin, (x,), params=params_of(block), name_map=rules[2:])
    message = str(e.value)
    assert message.startswith("parameters 'ln1.gamma' maps to 'ln1.gamma', 'ln1.beta' maps to 'ln1.beta', 'ln2.gamma'")
    assert "which the reference module does not have; it has ['attn.W_k.bias'" in message and "\n" not in message


# ---------------------------------------------------------------------------------------------- 3. randomness replayed

class TwoDraws:
    """Dropout drawn twice per forward, once with np.random and once with the layer's own Generator, both
    keeping where rand < 1-p."""

    def __init__(self, p):
        self.p, self.rng = p, np.random.default_rng(7)

    def forward(self, x):
        self.m1 = (np.random.rand(*x.shape) < 1 - self.p) / (1 - self.p)
        self.m2 = (self.rng.random(x.shape) < 1 - self.p) / (1 - self.p)
        return np.tanh(x * self.m1) * self.m2

    def backward(self, dy):
        return dy * self.m2 * (1 - np.tanh(self.x_m1) ** 2) * self.m1 if hasattr(self, "x_m1") else None


def two_draws(p, keep="rand < 1-p", n=2):
    drops = [RecordedDropout(p, keep=keep) for _ in range(n)]
    return lambda x: drops[1](torch.tanh(drops[0](x))) if n == 2 else torch.tanh(drops[0](x))


def test_every_draw_is_recorded_replayed_and_counted():
    layer = TwoDraws(0.3)

    def forward(x):
        out = layer.forward(x)
        layer.x_m1 = x * layer.m1
        return out

    state, gen_state = np.random.get_state(), layer.rng.bit_generator.state
    masks = NumpyRandomReplay(seed=2, within=layer)
    report = check(forward, layer.backward, two_draws(0.3), (x,), masks=masks)
    assert report.passed, str(report)
    assert report.draws == "random draws: 2 recorded (np.random.rand x1, TwoDraws.rng.random x1), 2 used by the reference, 0 left over"
    assert np.array_equal(np.random.get_state()[1], state[1]) and layer.rng.bit_generator.state == gen_state
    assert directional_check(forward, layer.backward, (x,), masks=NumpyRandomReplay(seed=2, within=layer)).passed
    bound = TwoDraws(0.3)                                                  # layer.forward: its own rng found
    bound.backward = lambda dy: dy * bound.m2 * (1 - np.tanh(x * bound.m1) ** 2) * bound.m1
    assert check(bound.forward, bound.backward, two_draws(0.3), (x,), masks=NumpyRandomReplay(seed=2)).passed
    # planted: the reference keeps by another rule, takes one draw too few, or one too many
    assert "output" in failing(check(forward, layer.backward, two_draws(0.3, keep="rand > p"), (x,),
                                     masks=NumpyRandomReplay(seed=2, within=layer)))
    short = check(forward, layer.backward, two_draws(0.3, n=1), (x,), masks=NumpyRandomReplay(seed=2, within=layer))
    assert "1 of 2 random draws left over (the first: draw 1, TwoDraws.rng.random)" in short.problems[0]
    with pytest.raises(CheckError, match=r"2 \(RecordedDropout, p=0.3\) asked for draw 2 .* which made only 2"):
        drops = nn.Sequential(RecordedDropout(0.3, "rand < 1-p"), RecordedDropout(0.3, "rand < 1-p"),
                              RecordedDropout(0.3, "rand < 1-p"))
        check(forward, layer.backward, drops, (x,), masks=NumpyRandomReplay(seed=2, within=layer))


def test_a_generator_made_inside_the_forward_and_nn_dropout_swapped():
    def forward(x):
        keep = np.random.default_rng(5).random(x.shape) > 0.25
        return x * keep / 0.75

    def backward(dy):
        return dy * (np.random.default_rng(5).random(dy.shape) > 0.25) / 0.75

    twin = replay_dropout(nn.Sequential(nn.Identity(), nn.Dropout(0.25)))
    assert isinstance(twin[1], RecordedDropout) and twin[1].p == 0.25
    report = check(forward, backward, twin, (x,), masks=NumpyRandomReplay())
    assert report.passed and "1 recorded (default_rng().random x1)" in report.draws, str(report)


# ---------------------------------------------------------------------------------------------- 4. tied weights

def tied_pair(summed: bool):
    """y = E[idx] ... logits = h @ E.T: one array E reached as emb.weight and head.weight."""
    emb = ours.Embedding(5, 3, np.random.default_rng(4))
    head = ours.TiedHead(emb)

    def forward(idx):
        return head.forward(np.tanh(emb.forward(idx)))

    def backward(dlogits):
        dh = head.backward(dlogits)
        emb.backward(dh * (1 - np.tanh(emb.weight[emb.idx]) ** 2))
        if summed:
            emb.grad_weight += head.grad_weight

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)

        def forward(self, idx):
            return torch.tanh(self.emb(idx)) @ self.emb.weight.T

    holder = type("Model", (), {})()
    holder.emb, holder.head = emb, head
    return forward, backward, Twin(), holder


def test_a_tied_weight_is_checked_once_and_a_missing_share_is_named():
    idx = np.array([[0, 1, 1]])
    forward, backward, twin, model = tied_pair(summed=True)
    params = params_of(model)
    assert list(params) == ["emb.weight"] and params.tied == {"emb.weight": ["head.weight"]}
    report = check(forward, backward, twin, (idx,), params=params, name_map={"emb.weight": "emb.weight"})
    assert report.passed and report["emb.weight.grad"].note == "tied: the same array is also head.weight; checked once"
    forward, backward, twin, model = tied_pair(summed=False)               # planted: the head's share never added
    report = check(forward, backward, twin, (idx,), params=params_of(model), name_map={"emb.weight": "emb.weight"})
    assert failing(report) == ["emb.weight.grad"]
    assert report["emb.weight.grad"].note == ("this gradient is only emb.weight's share: a tied weight's gradients are "
                                              "not summed; missing head.weight's share (head.grad_weight)")


def test_two_of_ours_mapped_to_one_tensor_are_compared_as_their_sum():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((3, 3))
    a, b = w.copy(), w.copy()                                              # two arrays, one weight in the twin
    ga, gb = np.zeros((3, 3)), np.zeros((3, 3))
    saved = {}

    def forward(x):
        saved["x"], saved["h"] = x, x @ a.T
        return saved["h"] @ b.T

    def backward(dy, bug=False):
        gb[...] = dy.reshape(-1, 3).T @ saved["h"].reshape(-1, 3)
        dh = dy @ b
        ga[...] = dh.reshape(-1, 3).T @ saved["x"].reshape(-1, 3) + (gb if bug else 0)
        return dh @ a

    twin = type("Twice", (nn.Module,), {"__init__": lambda s: (nn.Module.__init__(s), setattr(s, "w", nn.Parameter(torch.zeros(3, 3))))[0],
                                        "forward": lambda s, x: x @ s.w.T @ s.w.T})()
    params = {"a": (a, ga), "b": (b, gb)}
    report = check(forward, backward, twin, (x[..., :3],), params=params, name_map={"a": "w", "b": "w"})
    assert report.passed and "a.grad + b.grad" in [c.name for c in report.checks], str(report)
    bad = check(forward, lambda dy: backward(dy, bug=True), twin, (x[..., :3],), params=params, name_map={"a": "w", "b": "w"})
    assert failing(bad) == ["a.grad + b.grad"]
    assert bad["a.grad + b.grad"].note.startswith("a alone is the whole gradient: b counted again")


# ---------------------------------------------------------------------------------------------- 5. losses

def test_a_loss_returning_loss_and_dlogits_is_checked_directly():
    rng = np.random.default_rng(8)
    logits, targets = rng.standard_normal((2, 3, 5)), rng.integers(0, 5, (2, 3))

    def reference(z, t):
        return F.cross_entropy(z.flatten(0, 1), t.flatten())

    report = check_loss(ours.cross_entropy, reference, (logits, targets))
    assert report.passed and float(report.dout) == 1.0, str(report)
    assert [c.name for c in report.checks] == ["output", "input0 grad"]

    def summed(z, t):                                                      # planted: dlogits not divided by N
        loss, d = ours.cross_entropy(z, t)
        return loss, d * t.size
    assert failing(check_loss(summed, reference, (logits, targets))) == ["input0 grad"]

    saved = {}

    def loss_only(z, t):
        saved["loss"], saved["d"] = ours.cross_entropy(z, t)
        return saved["loss"]
    assert check_loss(loss_only, reference, (logits, targets), backward=lambda: saved["d"]).passed
    assert check_loss(loss_only, reference, (logits, targets), backward=lambda dloss: dloss * saved["d"], dout=2.5).passed


# ---------------------------------------------------------------------------------------------- 8. upstream gradient

def test_the_upstream_gradient_cannot_equal_an_input_drawn_from_the_same_seed():
    """y = x @ W with square W, x from default_rng(0): the upstream gradient once came from the same stream,
    so dout == x and a transposed weight gradient (x.T @ x is symmetric) passed."""
    x0 = np.random.default_rng(0).standard_normal((4, 4))
    w, g = np.random.default_rng(1).standard_normal((4, 4)), np.zeros((4, 4))
    saved = {}

    def forward(x):
        saved["x"] = x
        return x @ w.T

    def backward(dy):                                                      # planted: grad_W transposed
        g[...] = saved["x"].T @ dy
        return dy @ w

    report = check(forward, backward, nn.Linear(4, 4, bias=False), (x0,), params={"weight": (w, g)})
    assert failing(report) == ["weight.grad"] and not np.allclose(report.dout, x0)
    old = np.random.default_rng(0).standard_normal((4, 4))                # what the old stream would have drawn
    assert check(forward, backward, nn.Linear(4, 4, bias=False), (x0,), params={"weight": (w, g)}, dout=old).passed
    from oracle.core.subject import random_dout
    own = random_dout(x0, 0)
    assert not np.array_equal(random_dout(x0, 0, avoid=[own]), own)       # redrawn when it equals an input


def test_a_scalar_output_gets_an_upstream_gradient_of_one():
    v = np.random.default_rng(2).standard_normal(6)

    def forward(v):
        return (v ** 2).sum()

    def backward_assuming_one(dy):
        return 2 * v
    assert check(forward, backward_assuming_one, lambda v: (v ** 2).sum(), (v,)).passed
    report = check(forward, backward_assuming_one, lambda v: (v ** 2).sum(), (v,), dout="random")
    assert failing(report) == ["input grad"]                              # asked for a random one: it shows


# ---------------------------------------------------------------------------------------------- 9. defects are rows

def test_wrong_shape_dtype_and_missing_gradients_are_rows_and_the_rest_still_runs():
    layer = ours.Linear(4, 3, np.random.default_rng(9))

    def backward(dy):
        dx = layer.backward(dy)
        layer.grad_weight = layer.grad_weight.T                            # planted: wrong shape
        layer.grad_bias = None                                             # planted: no gradient
        return dx.astype(np.float32)                                       # planted: wrong dtype
    report = check(layer.forward, backward, nn.Linear(4, 3), (x,), params=params_of(layer), name_map=LINEAR)
    assert failing(report) == ["input grad", "weight.grad", "bias.grad"]
    assert report["weight.grad"].defect == "shape (3, 4) here, (4, 3) in the reference"
    assert report["bias.grad"].defect == "no gradient: the backward left none (expected shape (3,))"
    assert report["input grad"].defect == "input grad has dtype float32, expected float64 (silent up- or down-cast)"
    assert report["output"].passed and "shape (3, 4) here" in str(report)


# ---------------------------------------------------------------------------------------------- 10. plain functions

def test_a_plain_function_takes_the_parameters_as_named_tensors():
    layer = ours.Linear(4, 3, np.random.default_rng(10))

    def reference(x, weight, bias):
        return F.linear(x, weight, bias)
    assert check(layer.forward, layer.backward, reference, (x,), params=params_of(layer), name_map=LINEAR).passed

    class NoTranspose(ours.Linear):
        def backward(self, dout):
            super().backward(dout)
            self.grad_weight = self.grad_weight * 1.01                     # planted
            return dout @ self.weight.T
    bad = NoTranspose(4, 3, np.random.default_rng(10))
    assert failing(check(bad.forward, bad.backward, reference, (x,), params=params_of(bad), name_map=LINEAR)) == ["weight.grad"]
    with pytest.raises(CheckError, match="the reference is a plain function: it takes whole tensors"):
        check(layer.forward, layer.backward, reference, (x,), params=params_of(layer),
              name_map={"weight": ("weight", np.s_[0:2], "T")})


# ---------------------------------------------------------------------------------------------- 7. fd order

def test_finite_differences_report_in_the_order_the_code_touches_parameters():
    model = ours.GPT(n_layer=1, p=0.0)
    model.blocks[0].attn.W_k.__class__ = ours.NoTransposeLinear             # planted in the key projection
    idx = np.random.default_rng(11).integers(0, 11, (1, 4))
    params = params_of(model)
    reordered = dict(reversed(list(params.items())))                       # the order given does not matter
    report = directional_check(model.forward, model.backward, (idx,), params=reordered)
    assert report.order == "code" and report.checks[-1].name == "all gradients (directional)"
    names = [c.name.split(" ")[0][:-len(".grad")] for c in report.checks[:-1]]
    assert names[:4] == ["wte.weight", "wpe.weight", "blocks.0.ln1.gamma", "blocks.0.ln1.beta"]
    assert report.last_failure.name.startswith("blocks.0.ln1.")           # the bug is just after ln1: attention
    assert "first failure in the code's order: wte.weight.grad" in str(report)
    bare = {n: (p.value, p.read_grad) for n, p in params.items()}          # no home: no ordering claim
    plain = directional_check(model.forward, model.backward, (idx,), params=bare)
    assert plain.order == "" and "order" not in str(plain).split("\n")[-1]


# ---------------------------------------------------------------------------------------------- 3./context on failure

def test_an_exception_inside_the_code_or_the_reference_is_one_line_with_context():
    layer = ours.Linear(4, 3, np.random.default_rng(12))

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Sequential(nn.Linear(4, 3))

        def forward(self, x):
            return self.inner(x)

    def explode(_):
        raise StopIteration
    twin = Broken()
    twin.inner[0].register_forward_hook(lambda *a: explode(a))
    with pytest.raises(CheckError, match=r"the reference raised StopIteration in submodule 'inner.0' during "
                                         r"reference\(\(2, 3, 4\) float64\)"):
        check(layer.forward, layer.backward, twin, (x,), params=params_of(layer),
              name_map={"weight": ("inner.0.weight", None, "T"), "bias": "inner.0.bias"})
    with pytest.raises(CheckError, match=r"the NumPy forward raised ValueError at test_oracle_glue.py:\d+ "
                                         r"\(`check\(lambda x: x @ np.ones\(\(5, 5\)\).*`\) during forward\(\(2, 3, 4\)\): matmul"):
        check(lambda x: x @ np.ones((5, 5)), lambda dy: dy, lambda x: x, (x,))
    with pytest.raises(CheckError, match=r"the NumPy backward raised KeyError .* during backward\(\(2, 3, 4\)\): 'x'"):
        check(lambda x: x, lambda dy: {}["x"], lambda x: x, (x,))


# ---------------------------------------------------------------------------------------------- assert_ok

def test_assert_ok_prints_the_table_and_the_first_failing_tensor():
    layer = ours.Linear(4, 4, np.random.default_rng(13))
    layer.__class__ = ours.NoTransposeLinear
    report = check(layer.forward, layer.backward, nn.Linear(4, 4), (x,), params=params_of(layer), name_map=LINEAR)
    with pytest.raises(AssertionError) as e:
        report.assert_ok()
    text = str(e.value)
    assert text.startswith("check [float64]: FAIL\n") and "FAIL input grad" in text
    assert f"first failing tensor: input grad: worst element at {report['input grad'].where}: ours " in text
    layer.__class__ = ours.Linear
    check(layer.forward, layer.backward, nn.Linear(4, 4), (x,), params=params_of(layer), name_map=LINEAR).assert_ok()
