"""LoRA adapters in and out as peft adapter directories (adapter_config.json + adapter_model.safetensors).

A directory written by `save_adapter` loads with `peft.PeftModel.from_pretrained(base, path)` on the
transformers model that `reference.programs.hf_export.save_pretrained` writes for the same base weights, and
computes the same logits; `load_adapter` reads a peft LoRA directory into our GPT. Module names are
transformers': GPT-2's are ours; for Llama, `reference.programs.hf.LLAMA_LAYER_NAMES`, and our fused
c_attn is peft's q_proj, k_proj and v_proj: one adapter on c_attn is written as three that share A
and split B by rows (the same delta, exactly), and three read back must share A (tests/test_lora.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..layers import Linear
from ..lora import apply_lora, lora_layers
from ..model import GPT
from .atomic import atomic_write
from .hf import LLAMA_LAYER_NAMES, HFError, _safetensors
from .hf_export import hf_config

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
LAYER = re.compile(r"transformer\.h\.(\d+)\.(.+)")


def _arch(model: GPT) -> str:
    return "gpt2" if hf_config(model.config)["model_type"] == "gpt2" else "llama"


def hf_modules(model: GPT, name: str) -> list[tuple[str, slice | None]]:
    """transformers' module name(s) for our Linear `name`, each with the rows of our weight it holds
    (None: all). GPT-2: the same name. Llama: c_attn -> q_proj, k_proj, v_proj by rows."""
    arch = _arch(model)
    if arch == "gpt2":
        return [(name, None)]
    if name == "lm_head":
        return [("lm_head", None)]
    layer = LAYER.fullmatch(name)
    if layer and layer[2] == "attn.c_attn":
        c = model.config
        q, kv = c.n_head * c.head_dim, c.kv_heads * c.head_dim
        return [(f"model.layers.{layer[1]}.self_attn.{p}", rows) for p, rows in
                (("q_proj", slice(0, q)), ("k_proj", slice(q, q + kv)), ("v_proj", slice(q + kv, q + 2 * kv)))]
    if layer and layer[2] in LLAMA_LAYER_NAMES:
        return [(f"model.layers.{layer[1]}.{LLAMA_LAYER_NAMES[layer[2]]}", None)]
    raise HFError(f"layer {name} has no name in transformers' {arch}")


def adapter_config(model: GPT, base_model_name_or_path: str | None = None) -> dict:
    """peft's LoraConfig fields for this model's adapters (every adapter has one rank, alpha and dropout)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to save (apply_lora first)")
    first = next(iter(layers.values()))
    if any((m.rank, m.alpha, m.lora_dropout.p) != (first.rank, first.alpha, first.lora_dropout.p)
           for m in layers.values()):
        raise ValueError("the adapters differ in rank, alpha or dropout: a peft directory holds one of each")
    modules = sorted({hf for n in layers for hf, _ in hf_modules(model, n)})
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
            "r": first.rank, "lora_alpha": first.alpha, "lora_dropout": first.lora_dropout.p,
            "target_modules": modules, "fan_in_fan_out": _arch(model) == "gpt2", "bias": "none",
            "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
            "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}}


def adapter_state(model: GPT) -> dict[str, np.ndarray]:
    """Every adapter under peft's saved names: `base_model.model.<module>.lora_A.weight` (r, in) and
    `.lora_B.weight` (out, r), torch's layouts, which are ours."""
    out = {}
    for n, m in lora_layers(model).items():
        for hf, rows in hf_modules(model, n):
            out[f"{PREFIX}{hf}.lora_A.weight"] = np.ascontiguousarray(m.lora_A.data)
            b = m.lora_B.data if rows is None else m.lora_B.data[rows]
            out[f"{PREFIX}{hf}.lora_B.weight"] = np.ascontiguousarray(b)
    return out


def save_adapter(model: GPT, path, *, base_model_name_or_path: str | None = None) -> Path:
    """Write the model's adapters as a peft adapter directory; each file atomically. Returns the path."""
    config = adapter_config(model, base_model_name_or_path)
    tensors = adapter_state(model)
    from safetensors.numpy import save as serialize

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / ADAPTER_WEIGHTS, serialize(tensors, metadata={"format": "pt"}))
    text = json.dumps(config, indent=2, allow_nan=False) + "\n"
    atomic_write(path / ADAPTER_CONFIG, text.encode("utf-8"))
    return path


def _read_config(path: Path) -> dict:
    file = path / ADAPTER_CONFIG
    try:
        d = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HFError(f"{path} is not a peft adapter directory: {ADAPTER_CONFIG} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFError(f"{file} cannot be read as JSON: {e}") from None
    if not isinstance(d, dict) or d.get("peft_type") != "LORA":
        raise HFError(f"{file}: peft_type is {d.get('peft_type') if isinstance(d, dict) else d!r}, expected 'LORA'")
    unsupported = {"use_rslora": False, "use_dora": False, "bias": "none", "rank_pattern": {}, "alpha_pattern": {},
                   "modules_to_save": None, "lora_bias": False}
    for key, plain in unsupported.items():
        if d.get(key, plain) not in (plain, None) and not (plain == {} and not d.get(key)):
            raise HFError(f"{file}: {key} is {d[key]!r}; only plain LoRA is read (expected {plain!r})")
    for key in ("r", "lora_alpha"):
        if not isinstance(d.get(key), (int, float)) or isinstance(d.get(key), bool):
            raise HFError(f"{file}: {key} is {d.get(key)!r}, expected a number")
    return d


def load_adapter(model: GPT, path, *, seed: int = 0) -> list[str]:
    """Read a peft LoRA directory into `model` (which must have no adapters yet): apply_lora on the layers
    the file has adapters for, then copy A and B in. Returns the adapted layers' names.

    HFError (a ValueError) for a directory that is not a peft LoRA one, and for an adapter made for
    another base model: a module our model does not have, a shape that differs, or (Llama) q, k and v
    adapters that do not share A (our fused c_attn has one A). The model is left unchanged then."""
    path = Path(path)
    if lora_layers(model):
        raise ValueError("the model already has LoRA adapters: load an adapter into the base model")
    d = _read_config(path)
    safe_open, _ = _safetensors()
    file = path / ADAPTER_WEIGHTS
    if not file.is_file():
        raise HFError(f"{path} is not a peft adapter directory: {ADAPTER_WEIGHTS} is missing")
    try:
        with safe_open(str(file), framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:                                     # the library's SafetensorError, OSError
        raise HFError(f"{file} cannot be read as safetensors: {e}") from None
    linears = [n for n, m in model.named_modules() if isinstance(m, Linear)]
    ours: dict[str, tuple[str, slice | None]] = {}              # hf module -> (our layer, rows)
    for n in linears:
        try:
            for hf, rows in hf_modules(model, n):
                ours[hf] = (n, rows)
        except HFError:
            continue
    params_by_name = dict(model.named_modules())
    found: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        m = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", key)
        base = re.fullmatch(r"base_model\.model\.(.+)\.base_layer\.weight", key)
        if base and base[1] in ours and ours[base[1]][1] is None:   # peft saves lm_head's base weight too
            weight = params_by_name[ours[base[1]][0]].weight.data
            if value.shape != weight.shape or not np.array_equal(value.astype(weight.dtype), weight):
                raise HFError(f"{path}: the adapter is for another base model: its copy of {base[1]}'s weight "
                              "differs from this model's")
            continue
        if not m:
            raise HFError(f"{path / ADAPTER_WEIGHTS}: tensor {key!r} is not a LoRA weight "
                          "(expected base_model.model.<module>.lora_A.weight or .lora_B.weight)")
        module = m[1] if m[1] in ours or _arch(model) != "gpt2" else m[1].removeprefix("transformer.")
        module = module if module in ours else f"transformer.{module}"
        if module not in ours:
            raise HFError(f"{path}: the adapter is for another base model: it adapts module {m[1]}, which this "
                          f"{_arch(model)} model (n_layer {model.config.n_layer}) does not have")
        found.setdefault(module, {})[m[2]] = np.asarray(value)
    state: dict[str, dict[str, list]] = {}
    for module, ab in found.items():
        if set(ab) != {"A", "B"}:
            raise HFError(f"{path}: module {module} has lora_{''.join(ab)} only, expected both A and B")
        layer, rows = ours[module]
        state.setdefault(layer, {"A": [], "B": []})
        state[layer]["A"].append((module, ab["A"]))
        state[layer]["B"].append((rows, ab["B"]))
    r = int(d["r"])
    params = dict(model.named_modules())
    merged: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for layer, s in state.items():
        n_out, n_in = params[layer].weight.data.shape
        expected_parts = len(hf_modules(model, layer))
        if len(s["A"]) != expected_parts:
            raise HFError(f"{path}: layer {layer} is {expected_parts} modules in transformers and the adapter "
                          f"has {len(s['A'])} of them: expected all or none")
        a0 = s["A"][0][1]
        for module, a in s["A"]:
            if a.shape != (r, n_in):
                raise HFError(f"{path}: the adapter is for another base model: {module}.lora_A has shape "
                              f"{a.shape}, expected (r, in) = {(r, n_in)}")
            if not np.array_equal(a, a0):
                raise HFError(f"{path}: q_proj, k_proj and v_proj adapters of {layer} have different A matrices; "
                              "our fused c_attn has one A (expected adapters that share it)")
        b = np.concatenate([b for _, b in sorted(s["B"], key=lambda rb: 0 if rb[0] is None else rb[0].start)], axis=0)
        if b.shape != (n_out, r):
            raise HFError(f"{path}: the adapter is for another base model: {layer}'s lora_B has shape "
                          f"{b.shape}, expected (out, r) = {(n_out, r)}")
        merged[layer] = (a0, b)
    if not merged:
        raise HFError(f"{path}: the adapter holds no LoRA weights")
    names = apply_lora(model, r, float(d["lora_alpha"]), float(d.get("lora_dropout") or 0.0),
                       targets=list(merged), seed=seed)
    layers = lora_layers(model)
    for layer, (a, b) in merged.items():
        dtype = layers[layer].lora_A.data.dtype
        layers[layer].lora_A.data[...] = a.astype(dtype)
        layers[layer].lora_B.data[...] = b.astype(dtype)
    return names
