"""Training checkpoints: one pickle-free safetensors file holding everything a run needs to go on.

Layout of `ckpt.safetensors` (written by `save_checkpoint`, read by `load_checkpoint`):

tensors
    `<param name>`                        the model's weights under their torch names
                                          (`transformer.h.0.attn.c_attn.weight`, ...). A tied
                                          `lm_head.weight` is stored once, as `transformer.wte.weight`,
                                          and restored by tying.
    `optimizer.<param name>.exp_avg`      AdamW's first and second moments, same shape and dtype
    `optimizer.<param name>.exp_avg_sq`   as the parameter.
`__metadata__`
    one key, "numpy_gpt", whose value is one JSON string::

        {"format": "numpy-gpt-checkpoint", "version": 1,
         "config": {GPTConfig fields}, "tokenizer": {"kind": "char", "chars": ...} | null,
         "step": optimizer steps done, "best_val_loss": float | null,
         "optimizer": {"type": "AdamW",
                       "param_groups": [{"lr", "betas", "eps", "weight_decay", "params": [names]}],
                       "steps": {param name: Adam's per-parameter step}} | null,
         "rng": {"train": np.random.Generator.bit_generator.state, ...},
         "train_config": {TrainConfig fields} | null, "extra": {...}}

Loading reads bytes and parses JSON, nothing else: no pickle, no code from the file is ever run
(a bit generator is chosen by name from a fixed list). Everything is checked and a problem raises
`CheckpointError` naming it: truncated or corrupt files (from `safetensors_io`), a missing or
foreign header, an unknown format version, missing or unexpected tensors, wrong shapes or dtypes,
and, with `check_compatible`, another model config or another vocabulary than the run expects.

Writing is atomic (temporary file in the same directory, fsync, rename): a crash mid-save leaves the
previous checkpoint as it was.

On to PyTorch: the weights load into `oracle.twins.GPT` (or nanoGPT's model) directly::

    from safetensors.torch import load_file
    tensors = load_file("out/ckpt.safetensors")
    state = {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}
    state.setdefault("lm_head.weight", state["transformer.wte.weight"])   # tied: same tensor
    twin.load_state_dict(state)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .config import GPTConfig
from .data import tokenizer_from_dict
from .model import GPT
from .safetensors_io import CheckpointError, load_file, save_file

__all__ = ["Checkpoint", "CheckpointError", "FORMAT", "VERSION", "save_checkpoint", "load_checkpoint",
           "build_model", "restore_optimizer", "check_compatible", "generator_from_state", "model_tensor_names"]

FORMAT = "numpy-gpt-checkpoint"
VERSION = 1
METADATA_KEY = "numpy_gpt"
OPT_PREFIX = "optimizer."
MOMENTS = ("exp_avg", "exp_avg_sq")
# The bit generators a checkpoint may name; anything else is refused (never getattr on file input).
BIT_GENERATORS = {name: getattr(np.random, name) for name in ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")}


@dataclass
class Checkpoint:
    """What `load_checkpoint` read: validated, ready to build a model and restore an optimizer."""

    path: str
    config: GPTConfig
    step: int
    model_state: dict[str, np.ndarray]            # every parameter name, a tied one under both names
    tokenizer: dict | None = None
    optimizer: dict | None = None                 # {"type", "param_groups", "state": {name: {step, exp_avg, exp_avg_sq}}}
    rng: dict[str, dict] = field(default_factory=dict)
    train_config: dict | None = None
    best_val_loss: float | None = None
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ saving


def _tokenizer_dict(tokenizer) -> dict | None:
    if tokenizer is None or isinstance(tokenizer, dict):
        return tokenizer
    return tokenizer.to_dict()


def _param_names(model: GPT) -> dict[int, str]:
    """id(Parameter) -> name, a tied Parameter under its first name (transformer.wte.weight)."""
    return {id(p): name for name, p in model.named_parameters()}


def save_checkpoint(path, model: GPT, optimizer=None, *, step: int = 0, tokenizer=None,
                    train_config: dict | None = None, rng: dict[str, np.random.Generator] | None = None,
                    best_val_loss: float | None = None, extra: dict | None = None) -> None:
    """Write model, optimizer moments and per-parameter steps, step, generator states, configs and
    tokenizer to `path`, atomically. `rng` maps a role ("train", "eval", "dropout") to a Generator."""
    names = _param_names(model)
    tensors: dict[str, np.ndarray] = {name: p.data for name, p in model.named_parameters()}
    opt_header = None
    if optimizer is not None:
        groups, steps = [], {}
        for g in optimizer.param_groups:
            unknown = [p for p in g["params"] if id(p) not in names]
            if unknown:
                raise ValueError(f"the optimizer holds {len(unknown)} parameter(s) that are not the model's")
            groups.append({"lr": float(g["lr"]), "betas": [float(b) for b in g["betas"]], "eps": float(g["eps"]),
                           "weight_decay": float(g["weight_decay"]), "params": [names[id(p)] for p in g["params"]]})
            for p in g["params"]:
                st = optimizer.state.get(id(p))
                if st is None:
                    continue
                name = names[id(p)]
                steps[name] = int(st["step"])
                for key in MOMENTS:
                    tensors[f"{OPT_PREFIX}{name}.{key}"] = st[key]
        opt_header = {"type": type(optimizer).__name__, "param_groups": groups, "steps": steps}
    if best_val_loss is not None and not math.isfinite(best_val_loss):
        best_val_loss = None
    header = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "tokenizer": _tokenizer_dict(tokenizer),
        "step": int(step),
        "best_val_loss": None if best_val_loss is None else float(best_val_loss),
        "optimizer": opt_header,
        "rng": {role: g.bit_generator.state for role, g in (rng or {}).items()},
        "train_config": train_config,
        "extra": extra or {},
    }
    save_file(tensors, path, metadata={METADATA_KEY: json.dumps(header, allow_nan=False)})


# ------------------------------------------------------------------------------------------ loading


def model_tensor_names(config: GPTConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The tensors a checkpoint of `config` stores for the model: name -> (shape, dtype); tied once."""
    model = GPT(config, seed=0)
    return {name: (p.data.shape, p.data.dtype) for name, p in model.named_parameters()}


def _fail(path, problem: str):
    raise CheckpointError(f"{path}: {problem}")


def _header(path, metadata: dict) -> dict:
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        _fail(path, f"not a numpy-gpt checkpoint: the safetensors metadata has no {METADATA_KEY!r} entry "
                    f"(keys: {sorted(metadata)})")
    try:
        header = json.loads(raw)
    except ValueError as e:
        _fail(path, f"the checkpoint header is not valid JSON: {e}")
    if not isinstance(header, dict):
        _fail(path, f"the checkpoint header must be a JSON object, got {type(header).__name__}")
    if header.get("format") != FORMAT:
        _fail(path, f"not a numpy-gpt checkpoint: format is {header.get('format')!r}, expected {FORMAT!r}")
    if header.get("version") != VERSION:
        _fail(path, f"unsupported checkpoint version {header.get('version')!r}; this code reads version {VERSION}")
    for key in ("config", "step"):
        if key not in header:
            _fail(path, f"the checkpoint header has no {key!r}")
    return header


def _check_tensor(path, name: str, arr: np.ndarray, shape, dtype) -> None:
    if arr.shape != tuple(shape):
        _fail(path, f"tensor {name!r} has shape {arr.shape}, expected {tuple(shape)} for this config")
    if arr.dtype != dtype:
        _fail(path, f"tensor {name!r} has dtype {arr.dtype}, expected {dtype} (config dtype)")


def load_checkpoint(path) -> Checkpoint:
    """Read and validate a checkpoint; raise CheckpointError on anything wrong with it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    tensors, metadata = load_file(path)                        # CheckpointError if truncated or corrupt
    header = _header(path, metadata)
    try:
        config = GPTConfig.from_dict(header["config"])
    except (TypeError, ValueError) as e:
        _fail(path, f"invalid model config in the checkpoint: {e}")
    step = header["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        _fail(path, f"step must be a non-negative integer, got {step!r}")

    expected = model_tensor_names(config)
    model_state = {}
    for name, (shape, dtype) in expected.items():
        if name not in tensors:
            continue
        _check_tensor(path, name, tensors[name], shape, dtype)
        model_state[name] = tensors[name]
    missing = sorted(set(expected) - set(model_state))
    if missing:
        _fail(path, f"missing model tensors {missing}")

    optimizer, opt_names = None, set()
    opt_header = header.get("optimizer")
    if opt_header is not None:
        if not isinstance(opt_header, dict) or not isinstance(opt_header.get("param_groups"), list) \
                or not isinstance(opt_header.get("steps"), dict):
            _fail(path, "the optimizer header must be an object with 'param_groups' (list) and 'steps' (object)")
        state = {}
        for name, t in opt_header["steps"].items():
            if name not in expected:
                _fail(path, f"optimizer state for {name!r}, which is not a parameter of this model")
            if not isinstance(t, int) or isinstance(t, bool) or t < 0:
                _fail(path, f"optimizer step for {name!r} must be a non-negative integer, got {t!r}")
            entry = {"step": t}
            for key in MOMENTS:
                tname = f"{OPT_PREFIX}{name}.{key}"
                if tname not in tensors:
                    _fail(path, f"missing optimizer tensor {tname!r}")
                _check_tensor(path, tname, tensors[tname], *expected[name])
                entry[key] = tensors[tname]
                opt_names.add(tname)
            state[name] = entry
        grouped = [n for g in opt_header["param_groups"] for n in (g.get("params", []) if isinstance(g, dict) else [])]
        if sorted(grouped) != sorted(expected):
            _fail(path, f"the optimizer's param groups name {sorted(grouped)}, expected each of {sorted(expected)} once")
        optimizer = {"type": opt_header.get("type"), "param_groups": opt_header["param_groups"], "state": state}

    unexpected = sorted(set(tensors) - set(model_state) - opt_names)
    if unexpected:
        _fail(path, f"unexpected tensors {unexpected}")
    if config.tie_weights:
        model_state["lm_head.weight"] = model_state["transformer.wte.weight"]

    rng = header.get("rng") or {}
    if not isinstance(rng, dict):
        _fail(path, "'rng' must be an object mapping a role to a bit generator state")
    for role, st in rng.items():
        try:
            generator_from_state(st)
        except (TypeError, ValueError, KeyError) as e:
            _fail(path, f"invalid generator state for {role!r}: {e}")
    best = header.get("best_val_loss")
    if best is not None and not isinstance(best, (int, float)):
        _fail(path, f"best_val_loss must be a number or null, got {best!r}")
    tokenizer = header.get("tokenizer")
    if tokenizer is not None:
        if not isinstance(tokenizer, dict):
            _fail(path, f"tokenizer must be an object, got {tokenizer!r}")
        try:
            tok = tokenizer_from_dict(tokenizer)
        except (TypeError, ValueError, KeyError) as e:
            _fail(path, f"invalid tokenizer: {e}")
        if tok.vocab_size != config.vocab_size:
            _fail(path, f"the tokenizer has {tok.vocab_size} symbols but the model's vocab_size is {config.vocab_size}")
    return Checkpoint(path=path, config=config, step=step, model_state=model_state, tokenizer=tokenizer,
                      optimizer=optimizer, rng=dict(rng), train_config=header.get("train_config"),
                      best_val_loss=None if best is None else float(best), extra=header.get("extra") or {})


def generator_from_state(state: dict) -> np.random.Generator:
    """A numpy Generator in exactly the saved state (`bit_generator.state` is plain JSON)."""
    if not isinstance(state, dict) or state.get("bit_generator") not in BIT_GENERATORS:
        name = state.get("bit_generator") if isinstance(state, dict) else state
        raise ValueError(f"unknown bit generator {name!r}; expected one of {sorted(BIT_GENERATORS)}")
    bg = BIT_GENERATORS[state["bit_generator"]]()
    bg.state = state
    return np.random.Generator(bg)


def build_model(ckpt: Checkpoint) -> GPT:
    """The GPT of the checkpoint's config with its weights."""
    model = GPT(ckpt.config, seed=0)
    model.load_state_dict(ckpt.model_state)
    return model


def restore_optimizer(optimizer, model: GPT, ckpt: Checkpoint) -> None:
    """Put the checkpoint's moments and per-parameter steps into `optimizer` (built for `model` with the
    same param groups). Hyperparameters (lr, betas, eps, weight decay) stay the optimizer's own."""
    if ckpt.optimizer is None:
        raise CheckpointError(f"{ckpt.path}: the checkpoint holds no optimizer state")
    names = _param_names(model)
    saved_groups = ckpt.optimizer["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        raise CheckpointError(f"{ckpt.path}: the checkpoint's optimizer has {len(saved_groups)} param groups, "
                              f"this one {len(optimizer.param_groups)}")
    for i, (g, saved) in enumerate(zip(optimizer.param_groups, saved_groups)):
        ours = [names.get(id(p)) for p in g["params"]]
        if ours != saved["params"]:
            raise CheckpointError(f"{ckpt.path}: param group {i} holds {saved['params']} in the checkpoint "
                                  f"but {ours} here")
    state = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            st = ckpt.optimizer["state"].get(names[id(p)])
            if st is not None:
                state[id(p)] = {"step": st["step"], "exp_avg": st["exp_avg"].copy(),
                                "exp_avg_sq": st["exp_avg_sq"].copy()}
    optimizer.state = state


def _diff(a: dict, b: dict) -> list[str]:
    return [f"{k}: checkpoint {a.get(k)!r}, here {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_compatible(ckpt: Checkpoint, config: GPTConfig | None = None, tokenizer=None) -> None:
    """Refuse to resume `ckpt` into a run with another model config or another vocabulary."""
    tok = _tokenizer_dict(tokenizer)
    if tok is not None and ckpt.tokenizer is not None and tok != ckpt.tokenizer:
        a, b = ckpt.tokenizer, tok
        if a.get("kind") != b.get("kind"):
            detail = f"a {a.get('kind')!r} tokenizer in the checkpoint, {b.get('kind')!r} here"
        else:
            ca, cb = a.get("chars", ""), b.get("chars", "")
            detail = (f"{len(ca)} symbols in the checkpoint, {len(cb)} here; only in the checkpoint "
                      f"{sorted(set(ca) - set(cb))[:10]}, only here {sorted(set(cb) - set(ca))[:10]}"
                      if set(ca) != set(cb) else "the same symbols in another order")
        raise CheckpointError(f"{ckpt.path}: vocabulary mismatch: {detail}. The checkpoint was trained on "
                              "other data; prepare the data it was trained on, or train a new model")
    if config is not None and config != ckpt.config:
        raise CheckpointError(f"{ckpt.path}: model config mismatch: "
                              + "; ".join(_diff(ckpt.config.to_dict(), config.to_dict()))
                              + ". Resume with the checkpoint's model settings, or start a new run")
