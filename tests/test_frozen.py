"""Frozen parameters (grad None: reference/lora.py's `freeze`, docs/lora.md): every layer's backward, on both
paths, skips a frozen parameter's gradient work and returns the same input gradient bit for bit.

- each layer with parameters (Linear, Embedding, LayerNorm, RMSNorm, the GELU MLP, SwiGLU), frozen in
  whole or in part: dx and the trainable parameters' gradients equal the unfrozen layer's bit for bit,
  and a frozen parameter's grad stays None;
- a frozen Linear or Embedding forms no weight-sized array in its backward (tracemalloc's peak: NumPy
  reports its allocations to it), so its dW is not computed and thrown away;
- a whole model after apply_lora (every parameter but the adapters frozen, as peft freezes them): the
  loss, the gradient reaching the token embedding's output and every adapter gradient equal the
  run with nothing frozen but the adapted layers' bases, bit for bit, and no frozen parameter gets a gradient;
- planted: a layer that ignores the flag (recreates the gradient, or computes dW and drops it) is caught.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from reference import GPT, GPTConfig
from reference import layers as textbook
from reference.fast import layers as fast
from reference.fast import use_kernels
from reference.lora import apply_lora, freeze, lora_layers, lora_parameters, unfreeze

KERNELS = ["textbook", "fast"]


def grads(module) -> dict:
    return {n: (None if p.grad is None else p.grad.copy()) for n, p in module.named_parameters()}


# ------------------------------------------------------------------------------ each layer

def make_layer(kind: str, rng):
    """(layer, input, dy) in float64 with random parameters (norm weights away from 1, biases nonzero)."""
    if kind == "embedding":
        layer = textbook.Embedding(11, 6, rng=rng)
        return layer, rng.integers(0, 11, (3, 7)), rng.standard_normal((3, 7, 6))
    layer = {"linear": lambda: textbook.Linear(6, 5, rng=rng),
             "layernorm": lambda: textbook.LayerNorm(6),
             "rmsnorm": lambda: textbook.RMSNorm(6),
             "mlp": lambda: textbook.MLP(6, 24, bias=True, approximate="none", dropout=0.0, rng=rng,
                                         dtype="float64", proj_std=0.02),
             "swiglu": lambda: textbook.SwiGLU(6, 16, bias=True, dropout=0.0, rng=rng, dtype="float64",
                                               proj_std=0.02)}[kind]()
    for p in layer.parameters():
        p.data[...] = rng.standard_normal(p.data.shape)
    n_out = 5 if kind == "linear" else 6
    return layer, rng.standard_normal((3, 7, 6)), rng.standard_normal((3, 7, n_out))


def layer_run(kind: str, kernels: str, frozen) -> tuple:
    """dx and the gradients of a fresh layer (seed 0) with the parameters named by `frozen(name)` frozen."""
    layer, x, dy = make_layer(kind, np.random.default_rng(0))
    use_kernels(layer, kernels)
    for name, p in layer.named_parameters():
        if frozen(name):
            freeze(p)
    _, cache = layer.forward(x)
    return layer.backward(dy, cache), grads(layer)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("kind", ["linear", "embedding", "layernorm", "rmsnorm", "mlp", "swiglu"])
def test_layer_frozen_in_whole_or_part(kind, kernels):
    dx_all, g_all = layer_run(kind, kernels, lambda n: False)
    names = list(g_all)
    # everything frozen; only the weights (biases trained); only the first parameter
    for label, frozen in [("all", lambda n: True), ("weights", lambda n: n.endswith("weight")),
                          ("first", lambda n: n == names[0])]:
        dx, g = layer_run(kind, kernels, frozen)
        assert (dx is None and dx_all is None) or np.array_equal(dx, dx_all), (label, "dx")
        for n in names:
            if frozen(n):
                assert g[n] is None, (label, n, "a frozen parameter got a gradient")
            else:
                assert np.array_equal(g[n], g_all[n]), (label, n)
                assert np.abs(g[n]).sum() > 0, (label, n)       # not vacuous: a real gradient compared


def frozen_backward_peak(layer_cls, kernels: str) -> tuple[int, int]:
    """(peak bytes allocated during a fully frozen backward, bytes of the weight), rows N = 4 << in, out."""
    rng = np.random.default_rng(0)
    if layer_cls == "embedding":
        layer = textbook.Embedding(4096, 64, rng=rng)
        x, dy = rng.integers(0, 4096, (2, 2)), rng.standard_normal((2, 2, 64))
    else:
        layer = textbook.Linear(512, 512, rng=rng)
        x, dy = rng.standard_normal((2, 2, 512)), rng.standard_normal((2, 2, 512))
    use_kernels(layer, kernels)
    for p in layer.parameters():
        freeze(p)
    _, cache = layer.forward(x)
    layer.backward(dy, cache)                                  # warm: the fast path's recycled buffers
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        layer.backward(dy, cache)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, layer.weight.data.nbytes


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("kind", ["linear", "embedding"])
def test_frozen_weight_gradient_is_not_computed(kind, kernels):
    peak, weight_bytes = frozen_backward_peak(kind, kernels)
    assert peak < weight_bytes / 8, f"a frozen {kind} backward allocated {peak} bytes (weight: {weight_bytes})"


def _linear_computes_and_drops(self, dy, x, dbias=None):     # planted: dW formed, then thrown away
    dw = textbook._flat2d(dy).T @ textbook._flat2d(x)
    if self.weight.grad is not None:
        self.weight.grad += dw
    return (textbook._flat2d(dy) @ self.weight.data).reshape(x.shape)


def _embedding_computes_and_drops(self, dy, idx):
    dw = np.zeros(self.weight.data.shape, self.weight.data.dtype)
    np.add.at(dw, idx.reshape(-1), textbook._flat2d(dy))
    if self.weight.grad is not None:
        self.weight.grad += dw


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("kind, plant", [("linear", _linear_computes_and_drops),
                                         ("embedding", _embedding_computes_and_drops)])
def test_planted_wasted_weight_gradient_is_caught(monkeypatch, kind, plant, kernels):
    cls = {"linear": (textbook.Linear, fast.Linear), "embedding": (textbook.Embedding, fast.Embedding)}[kind]
    monkeypatch.setattr(cls[kernels == "fast"], "backward", plant)
    with pytest.raises(AssertionError, match=f"a frozen {kind} backward allocated"):
        test_frozen_weight_gradient_is_not_computed(kind, kernels)


# ------------------------------------------------------------------------------ a whole model

CONFIGS = {  # GPT-2's layers (LayerNorm, GELU MLP, biases, tied head, wpe) and Llama's (RMSNorm, SwiGLU, RoPE, GQA)
    "gpt2": (dict(), ["c_attn", "mlp.c_proj"]),
    "llama": (dict(bias=False, tie_weights=False, norm="rmsnorm", mlp="swiglu", pos="rope", n_kv_head=2),
              ["c_attn", "c_gate"]),
}


def model_run(arch: str, kernels: str, frozen: bool) -> dict:
    """A LoRA model (B random) after one loss_and_backward: its loss, the gradient reaching the token
    embedding's output (the model's input gradient), every parameter's gradient. frozen False: every
    parameter but the adapted layers' bases is trainable again."""
    extra, targets = CONFIGS[arch]
    model = GPT(GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=16, dtype="float64",
                          **extra), seed=0)
    apply_lora(model, 2, 4.0, targets=targets)
    rng = np.random.default_rng(1)
    for m in lora_layers(model).values():                      # B = 0 would make every dA zero
        m.lora_B.data[...] = rng.standard_normal(m.lora_B.data.shape) * 0.1
    if not frozen:
        for name, p in model.named_parameters():
            if ".base_layer." not in name:
                unfreeze(p)
    use_kernels(model, kernels)
    wte, seen = model.transformer.wte, {}
    backward = wte.backward

    def record(dy, idx):
        seen["dx"] = dy.copy()
        return backward(dy, idx)
    wte.backward = record
    x = rng.integers(0, 37, (2, 12))
    model.zero_grad()
    loss = model.loss_and_backward(x, np.roll(x, -1, 1))
    return {"loss": loss, "dx": seen["dx"], "grads": grads(model), "adapters": set(lora_parameters(model))}


def frozen_model_problems(arch: str, kernels: str) -> list[str]:
    """What differs between the frozen and the unfrozen run (empty: nothing)."""
    free, frozen = model_run(arch, kernels, False), model_run(arch, kernels, True)
    problems = []
    if frozen["loss"] != free["loss"]:
        problems.append("loss differs")
    if not np.array_equal(frozen["dx"], free["dx"]):
        problems.append("input gradient differs")
    for name, g in frozen["grads"].items():
        if name in frozen["adapters"]:
            if not np.array_equal(g, free["grads"][name]):
                problems.append(f"{name} gradient differs")
        elif g is not None:
            problems.append(f"frozen {name} got a gradient")
        elif ".base_layer." not in name and not np.abs(free["grads"][name]).sum() > 0:
            problems.append(f"{name} has no gradient even unfrozen")   # the comparison would be vacuous
    return problems


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lora_model_frozen_gradients_bit_identical(arch, kernels):
    assert frozen_model_problems(arch, kernels) == []


def _recreates_gradient(original):
    def backward(self, dy, cache, **kw):                       # planted: treats grad None as "allocate one"
        for p in self.parameters():
            if p.grad is None:
                p.grad = np.zeros(p.data.shape, p.data.dtype)
        return original(self, dy, cache, **kw)
    return backward


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("cls_name", ["Embedding", "LayerNorm", "RMSNorm", "Linear"])
def test_planted_layer_ignoring_the_flag_is_caught(monkeypatch, cls_name, kernels):
    module = fast if kernels == "fast" and hasattr(fast, cls_name) else textbook
    cls = getattr(module, cls_name)
    monkeypatch.setattr(cls, "backward", _recreates_gradient(cls.backward))
    arch = "llama" if cls_name == "RMSNorm" else "gpt2"
    problems = frozen_model_problems(arch, kernels)
    assert any(p.startswith("frozen ") and p.endswith("got a gradient") for p in problems), problems
