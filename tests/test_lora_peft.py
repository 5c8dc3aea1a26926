"""LoRA against peft's LoraModel (the `lora` extra) on GPT-2 and Llama directories built offline.

A random tiny transformers model is saved with `save_pretrained` and loaded into our GPT
(reference/programs/hf.py); both get the same adapters (ours drawn, copied into peft's lora_A/lora_B,
B random so that A's gradient is not zero), and logits, loss and every adapter gradient are compared in
float64 on both of our paths. Llama's q/k/v adapters share our fused c_attn's A: peft's three A
gradients add up to ours. Then adapter directories both ways: ours loaded by `PeftModel.from_pretrained`
and peft's loaded by `load_adapter`, with equal logits; and the refusals of foreign directories."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
peft = pytest.importorskip("peft", reason="the lora extra (peft) is not installed")

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from oracle.bridge.hf import float64_llama, run_hf  # noqa: E402
from oracle.core.tolerance import FLOAT64_TOL  # noqa: E402
from reference.fast import use_kernels  # noqa: E402
from reference.lora import apply_lora, lora_layers  # noqa: E402
from reference.programs import hf  # noqa: E402
from reference.programs.hf import HFError  # noqa: E402
from reference.programs.lora_io import hf_modules, load_adapter, save_adapter  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
V, T, B = 61, 12, 2
R, ALPHA = 4, 8.0


def err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def gpt2():
    return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=16, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)).eval()


def llama():
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16, bos_token_id=None, eos_token_id=None,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0})).eval()


ARCHS = {"gpt2": (gpt2, ["c_attn", "c_proj", "c_fc"]),
         "llama": (llama, ["c_attn", "attn.c_proj", "c_fc", "c_gate", "mlp.c_proj", "lm_head"])}


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


def adapted_pair(arch, tmp_path, kernels="textbook"):
    """(ours, theirs): the same base weights and the same adapters, B random."""
    torch.manual_seed(0)
    build, targets = ARCHS[arch]
    base = build().double()
    base.save_pretrained(tmp_path / "base")
    ours = hf.from_pretrained(tmp_path / "base", dtype="float64")
    apply_lora(ours, R, ALPHA, targets=targets)
    rng = np.random.default_rng(1)
    for m in lora_layers(ours).values():
        m.lora_B.data[...] = rng.standard_normal(m.lora_B.data.shape) * 0.1
    use_kernels(ours, kernels)
    modules = {n: hf_modules(ours, n) for n in lora_layers(ours)}
    if arch == "llama":
        float64_llama(base)
    config = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, fan_in_fan_out=arch == "gpt2",
                        target_modules=sorted(m for ms in modules.values() for m, _ in ms))
    theirs = get_peft_model(base, config).double()
    named = dict(theirs.named_modules())
    with torch.no_grad():
        for n, m in lora_layers(ours).items():
            for module, rows in modules[n]:
                layer = named[f"base_model.model.{module}"]
                layer.lora_A["default"].weight.copy_(torch.as_tensor(m.lora_A.data))
                layer.lora_B["default"].weight.copy_(torch.as_tensor(m.lora_B.data if rows is None else m.lora_B.data[rows]))
    return ours, theirs, modules


def peft_grads(theirs, modules) -> dict[str, np.ndarray]:
    """peft's adapter gradients under our names: q/k/v's A gradients summed (one shared A), B's stacked."""
    named = dict(theirs.named_modules())
    out = {}
    for n, parts in modules.items():
        layers = [named[f"base_model.model.{m}"] for m, _ in parts]
        out[f"{n}.lora_A"] = sum(la.lora_A["default"].weight.grad.numpy() for la in layers)
        out[f"{n}.lora_B"] = np.concatenate([la.lora_B["default"].weight.grad.numpy() for la in layers])
    return out


@pytest.mark.parametrize("kernels", ["textbook", "fast"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_against_peft_float64(tmp_path, arch, kernels):
    ours, theirs, modules = adapted_pair(arch, tmp_path, kernels)
    x, y = batch()
    lt, st = run_hf(theirs, x, y)
    ours.zero_grad()
    loss = ours.loss_and_backward(x, y)
    logits, _ = ours.forward(x)
    gt = peft_grads(theirs, modules)
    errs = {"logits": err(logits, lt), "loss": abs(loss - st) / abs(st)}
    errs.update({f"grad {n}": err(ours_p.grad, gt[n]) for n, ours_p in
                 ((n, p) for n, p in ((f"{k}.lora_{ab}", getattr(m, f"lora_{ab}")) for k, m in lora_layers(ours).items()
                                      for ab in "AB"))})
    assert len(errs) == 2 + 2 * len(modules)
    name = max(errs, key=errs.get)
    print(f"LoRA vs peft {arch} {kernels} float64: worst error {errs[name]:.2e} ({name}), {len(modules)} adapters")
    assert errs[name] <= FLOAT64_TOL, name
    frozen = [p for n, p in theirs.named_parameters() if p.requires_grad and "lora_" not in n]
    assert not frozen                                            # peft freezes the base, as we do


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_adapter_directories_both_ways(tmp_path, arch):
    ours, theirs, _ = adapted_pair(arch, tmp_path)
    x, _ = batch(2)
    ours_logits = ours.forward(x)[0]
    out = save_adapter(ours, tmp_path / "ours")
    assert json.loads((out / "adapter_config.json").read_text())["r"] == R
    base = ARCHS[arch][0]().double()                             # fresh base, the saved weights
    base = type(base).from_pretrained(tmp_path / "base", torch_dtype=torch.float64).eval()
    if arch == "llama":
        float64_llama(base)
    loaded = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        their_logits = loaded(input_ids=torch.as_tensor(x)).logits.numpy()
    e = err(ours_logits, their_logits)
    print(f"our adapter in peft ({arch}): logits error {e:.2e}")
    assert e <= FLOAT64_TOL

    theirs.save_pretrained(tmp_path / "theirs")                  # peft's own directory into our GPT
    back = hf.from_pretrained(tmp_path / "base", dtype="float64")
    names = load_adapter(back, tmp_path / "theirs")
    assert names == list(lora_layers(ours))
    e = err(back.forward(x)[0], ours_logits)
    print(f"peft's adapter in ours ({arch}): logits error {e:.2e}")
    assert e <= FLOAT64_TOL


def test_foreign_adapters_refused(tmp_path):
    ours, theirs, _ = adapted_pair("gpt2", tmp_path)
    theirs.save_pretrained(tmp_path / "theirs")
    torch.manual_seed(0)
    small = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=16, n_embd=32, n_layer=1, n_head=4,
                                       bos_token_id=None, eos_token_id=None))
    small.save_pretrained(tmp_path / "one_layer")
    other = hf.from_pretrained(tmp_path / "one_layer", dtype="float64")
    with pytest.raises(HFError, match=r"the adapter is for another base model: it adapts module "
                                      r"transformer.h.1.attn.c_attn, which this gpt2 model \(n_layer 1\) does not have"):
        load_adapter(other, tmp_path / "theirs")
    assert not lora_layers(other)
    wide = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=16, n_embd=48, n_layer=2, n_head=4,
                                      bos_token_id=None, eos_token_id=None))
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(HFError, match=r"another base model: .*lora_A has shape \(4, 32\), expected \(r, in\) = \(4, 48\)"):
        load_adapter(hf.from_pretrained(tmp_path / "wide", dtype="float64"), tmp_path / "theirs")
    with pytest.raises(HFError, match="adapter_config.json is missing"):
        load_adapter(other, tmp_path / "one_layer")
    cfg = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (tmp_path / "theirs" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(HFError, match="use_dora is True; only plain LoRA is read"):
        load_adapter(hf.from_pretrained(tmp_path / "base", dtype="float64"), tmp_path / "theirs")
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        load_adapter(ours, tmp_path / "theirs")


def test_llama_qkv_with_different_a_refused(tmp_path):
    _, theirs, _ = adapted_pair("llama", tmp_path)
    with torch.no_grad():
        theirs.base_model.model.model.layers[0].self_attn.k_proj.lora_A["default"].weight.add_(1e-3)
    theirs.save_pretrained(tmp_path / "theirs")
    with pytest.raises(HFError, match="different A matrices; our fused c_attn has one A"):
        load_adapter(hf.from_pretrained(tmp_path / "base", dtype="float64"), tmp_path / "theirs")
