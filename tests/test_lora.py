"""LoRA (reference/lora.py, docs/lora.md): the layer against a twin of torch built-ins on both paths, the
whole model against peft's LoraModel on GPT-2 and Llama directories built offline (logits, loss and every
adapter gradient in float64), peft adapter directories out and in, and every refusal.

Adapters start with a random B here (B = 0 at init makes A's gradient zero: a check that cannot fail)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from reference import GPT, GPTConfig
from reference.fast import use_kernels
from reference.layers import DropoutMasks, Linear
from reference.lora import LoRALinear, apply_lora, lora_layers, lora_parameters, merge_lora, set_lora_masks

torch = pytest.importorskip("torch")
F = torch.nn.functional

from oracle.core.tolerance import FLOAT64_TOL  # noqa: E402


def err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def randomise_b(model, seed=1):
    rng = np.random.default_rng(seed)
    for m in lora_layers(model).values():
        m.lora_B.data[...] = rng.standard_normal(m.lora_B.data.shape) * 0.1


# ------------------------------------------------------------------------------ the layer


def twin(x, w, b, a, bb, scaling, mask):
    """y = F.linear(x, W, b) + scaling * F.linear(F.linear(x * mask, A), B): peft's LoraLayer forward."""
    xd = x if mask is None else x * mask
    return F.linear(x, w, b) + F.linear(F.linear(xd, a), bb) * scaling


@pytest.mark.parametrize("kernels", ["textbook", "fast"])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_layer_against_twin(kernels, p):
    rng = np.random.default_rng(0)
    lin = Linear(12, 9, rng=rng, dtype="float64")
    lin.bias.data[...] = rng.standard_normal(9)
    layer = LoRALinear(lin, 3, 6.0, p, rng=rng)
    layer.lora_B.data[...] = rng.standard_normal((9, 3))
    use_kernels(layer, kernels)
    assert type(layer.base_layer).__module__.startswith("reference.fast" if kernels == "fast" else "reference.layers")
    masks = DropoutMasks(np.random.default_rng(5), record=True)
    layer.masks = masks
    x, dy = rng.standard_normal((2, 5, 12)), rng.standard_normal((2, 5, 9))
    y, cache = layer.forward(x)
    dx = layer.backward(dy, cache)
    assert lin.weight.grad is None and lin.bias.grad is None     # frozen: nothing computed, nothing stored
    mask = torch.as_tensor(masks.drawn["lora_dropout"]) if p else None
    t = {k: torch.tensor(v, requires_grad=True) for k, v in
         dict(x=x, a=layer.lora_A.data, b=layer.lora_B.data).items()}
    yt = twin(t["x"], torch.as_tensor(lin.weight.data), torch.as_tensor(lin.bias.data), t["a"], t["b"],
              layer.scaling, mask)
    yt.backward(torch.as_tensor(dy))
    errors = {"y": err(y, yt.detach()), "dx": err(dx, t["x"].grad), "dA": err(layer.lora_A.grad, t["a"].grad),
              "dB": err(layer.lora_B.grad, t["b"].grad)}
    print(f"LoRALinear {kernels} p={p}: {errors}")
    assert max(errors.values()) <= FLOAT64_TOL, errors


def test_init_is_peft_and_starts_at_the_base():
    rng = np.random.default_rng(0)
    lin = Linear(200, 50, rng=rng, dtype="float64")
    layer = LoRALinear(lin, 8, 16, rng=np.random.default_rng(1))
    a = layer.lora_A.data
    bound = 1 / math.sqrt(200)                                   # kaiming_uniform_(a=sqrt(5)) on (r, in)
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.95 * bound
    assert abs(a.std() - bound / math.sqrt(3)) < 0.05 * bound    # uniform's std
    wt = torch.empty(8, 200, dtype=torch.float64)
    torch.nn.init.kaiming_uniform_(wt, a=math.sqrt(5))
    assert abs(float(wt.abs().max()) - np.abs(a).max()) < 0.05 * bound
    assert not layer.lora_B.data.any() and layer.scaling == 2.0
    x = rng.standard_normal((3, 200))
    assert np.array_equal(layer.forward(x)[0], lin.forward(x)[0])  # B = 0: the base model exactly


def test_merge_unmerge():
    rng = np.random.default_rng(0)
    lin = Linear(10, 7, rng=rng, dtype="float64")
    w0 = lin.weight.data.copy()
    layer = LoRALinear(lin, 2, 4, rng=rng)
    layer.lora_B.data[...] = rng.standard_normal((7, 2))
    x = rng.standard_normal((4, 10))
    y = layer.forward(x)[0]
    layer.merge()
    assert np.allclose(lin.weight.data, w0 + 2.0 * layer.lora_B.data @ layer.lora_A.data, rtol=0, atol=1e-15)
    y_merged, cache = layer.forward(x)
    assert err(y_merged, y) <= FLOAT64_TOL
    with pytest.raises(RuntimeError, match="merged"):
        layer.backward(np.ones_like(y), cache)
    layer.unmerge()
    assert np.array_equal(lin.weight.data, w0)                   # bit for bit
    assert np.array_equal(layer.forward(x)[0], y)


def small_gpt(**kw):
    cfg = dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=16, dtype="float64")
    cfg.update(kw)
    return GPT(GPTConfig(**cfg), seed=0)


def test_apply_lora_targets_and_freezing():
    model = small_gpt()
    names = apply_lora(model, 2, 4, targets=["c_attn", "mlp.c_proj"])
    assert names == [f"transformer.h.{i}.{n}" for i in range(2) for n in ("attn.c_attn", "mlp.c_proj")]
    assert set(lora_parameters(model)) == {f"{n}.lora_{ab}" for n in names for ab in "AB"}
    assert all(p.grad is None for n, p in model.named_parameters() if ".base_layer." in n)
    model.zero_grad()                                            # skips the frozen parameters
    x = np.random.default_rng(0).integers(0, 37, (2, 8))
    model.loss_and_backward(x, x)
    assert all(np.abs(p.grad).sum() > 0 for n, p in lora_parameters(model).items() if n.endswith("lora_B"))
    model2 = small_gpt()
    assert apply_lora(model2, 2, 4, targets="transformer.h.1.*") == [
        f"transformer.h.1.{n}" for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    merged = merge_lora(model)
    assert not lora_layers(merged) and set(merged.state_dict()) == set(small_gpt().state_dict())
    assert all(p.grad is not None for p in merged.parameters())


@pytest.mark.parametrize("kw, match", [
    (dict(targets=["q_proj"]), r"LoRA target 'q_proj' matches no Linear layer: expected a name such as c_attn, c_fc"),
    (dict(targets=[]), "non-empty list"),
    (dict(rank=0), r"1 <= rank <= min\(in, out\)"),
    (dict(rank=17), r"LoRA rank 17 is larger than layer transformer.h.0.attn.c_attn allows: expected 1 <= rank "
                    r"<= min\(in, out\) = 16"),
    (dict(rank=2.5), "LoRA rank must be an integer"),
    (dict(alpha=0), "alpha must be a finite number > 0"),
    (dict(dropout=1.0), r"dropout probability must be in \[0, 1\)"),
    (dict(targets=["lm_head"]), "tied to another layer"),
])
def test_refusals(kw, match):
    model = small_gpt()
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    args = dict(rank=2, alpha=4, dropout=0.0, targets=["c_attn"])
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        apply_lora(model, **args)
    assert not lora_layers(model) and all(p.grad is not None for p in model.parameters())   # nothing changed
    assert all(np.array_equal(before[n], p.data) for n, p in model.named_parameters())


def test_already_adapted_refused():
    model = small_gpt()
    apply_lora(model, 2, 4, targets=["c_attn"])
    with pytest.raises(ValueError, match="already has an adapter"):
        apply_lora(model, 2, 4, targets=["transformer.h.0.attn.c_attn.base_layer"])


@pytest.mark.parametrize("kw", [{}, dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, tie_weights=False,
                                         n_kv_head=2)], ids=["gpt2", "llama"])
def test_model_paths_agree(kw):
    """The whole adapted model on both paths, with dropout in the adapters: equal to round-off."""
    x = np.random.default_rng(3).integers(0, 37, (2, 8))
    out = {}
    for kernels in ("textbook", "fast"):
        model = small_gpt(**kw)
        targets = ["c_attn", "c_proj", "c_fc"] + (["c_gate", "lm_head"] if kw else [])
        apply_lora(model, 3, 5, 0.2, targets=targets)
        randomise_b(model)
        use_kernels(model, kernels)
        set_lora_masks(model, DropoutMasks(np.random.default_rng(7)))
        loss = model.loss_and_backward(x, x)
        out[kernels] = (loss, {n: p.grad.copy() for n, p in lora_parameters(model).items()})
    (lt, gt), (lf, gf) = out["textbook"], out["fast"]
    assert abs(lt - lf) <= FLOAT64_TOL * abs(lt)
    worst = max((err(gf[n], gt[n]), n) for n in gt)
    assert worst[0] <= FLOAT64_TOL, worst


def test_apply_lora_on_any_module_tree():
    """Linear layers held in lists are adapted in place too (apply_lora knows no GPT)."""
    from reference.module import Module

    class Stack(Module):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.items = [Linear(4, 4, rng=rng), Linear(4, 3, rng=rng)]
            self.head = Linear(3, 2, rng=rng)

    m = Stack()
    assert apply_lora(m, 1, 2, targets=["items.1", "head"]) == ["items.1", "head"]
    assert isinstance(m.items[1], LoRALinear) and isinstance(m.head, LoRALinear) and type(m.items[0]) is Linear
