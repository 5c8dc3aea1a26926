"""Training checkpoints: one pickle-free safetensors file holding everything a run needs to go on.

`save_checkpoint` writes the model's weights, the optimizer's state, the step, the random generators'
states, the configs and the tokenizer to `ckpt.safetensors`; `load_checkpoint` reads and validates it
into a `Checkpoint`; `build_model`, `restore_optimizer` and `generator_from_state` turn that back into a
model, an optimizer's state and generators.

- The file's layout, its constants and its checksums: reference/programs/checkpoint_format.py.
- What loading checks, and the errors it raises: reference/programs/checkpoint_check.py (the optimizer's
  section: reference/programs/checkpoint_optimizer.py). Every tensor and the header are covered by
  SHA-256 checksums; saving and loading refuse non-finite values, so a checkpoint never holds a NaN.

Writing is atomic (reference/programs/atomic.py: temporary file in the same directory, fsync, rename;
stale temporaries of killed saves removed by the next save): a crash mid-save leaves the previous
checkpoint as it was, and nothing behind.

On to PyTorch: the weights load into `oracle.bridge.twins.GPT` (or nanoGPT's model) directly::

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

import numpy as np

from ..fast import use_kernels
from ..lora import apply_lora, lora_settings
from ..model import GPT
from ..optim import SGD
from .checkpoint_check import (check_compatible, fail, header_fields, header_step, lora_header, model_config,
                               model_state, read_checksums, read_header, read_tensors, refuse_non_finite,
                               state_from_json)
from .checkpoint_format import (BIT_GENERATORS, CHECKSUM_KEY, FORMAT, METADATA_KEY, MOMENTS, OPT_PREFIX, SGD_BUFFER,
                                STATE_LAYOUTS, VERSION, Checkpoint, param_names, seal, state_to_json, tensor_digest,
                                tokenizer_dict)
from .checkpoint_optimizer import optimizer_state
from .safetensors_io import CheckpointError, SafetensorsFile, save_file

__all__ = ["Checkpoint", "CheckpointError", "FORMAT", "VERSION", "METADATA_KEY", "CHECKSUM_KEY", "BIT_GENERATORS",
           "STATE_LAYOUTS", "save_checkpoint", "load_checkpoint", "build_model", "restore_optimizer",
           "check_compatible", "generator_from_state", "state_from_json", "seal", "tensor_digest"]


# ------------------------------------------------------------------------------------------ saving


def _rng_header(rng: dict | None) -> dict:
    out = {}
    for role, g in (rng or {}).items():
        if not isinstance(g, np.random.Generator):
            raise TypeError(f"rng[{role!r}] must be a numpy Generator, got {type(g).__name__}")
        bg = type(g.bit_generator)
        if BIT_GENERATORS.get(bg.__name__) is not bg:
            raise ValueError(f"rng[{role!r}] uses the bit generator {bg.__name__}; a checkpoint holds only "
                             f"{sorted(BIT_GENERATORS)}")
        out[role] = state_to_json(g.bit_generator.state)
    return out


def _adamw_header(optimizer, names: dict[int, str], tensors: dict[str, np.ndarray]) -> dict:
    """AdamW's header section; its moments go into `tensors` under optimizer.<name>.exp_avg / exp_avg_sq."""
    for g in optimizer.param_groups:
        unknown = [p for p in g["params"] if id(p) not in names]
        if unknown:
            raise ValueError(f"the optimizer holds {len(unknown)} parameter(s) that are not the model's")
    listed = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    twice = sorted({n for n in listed if listed.count(n) > 1})
    if twice:                                      # torch warns and updates such a parameter twice a step
        raise ValueError(f"the optimizer lists {twice} more than once; a checkpoint holds each parameter once "
                         "(build the optimizer with each parameter in one group, once)")
    groups, steps = [], {}
    for g in optimizer.param_groups:
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
    return {"type": type(optimizer).__name__, "param_groups": groups, "steps": steps}


def _sgd_header(optimizer: SGD, names: dict[int, str], tensors: dict[str, np.ndarray]) -> dict:
    """SGD's header section; its momentum buffers go into `tensors` under optimizer.<name>.momentum_buffer."""
    groups, buffers = [], []
    for g in optimizer.param_groups:
        if any(id(p) not in names for p in g["params"]):
            raise ValueError("the optimizer holds parameter(s) that are not the model's")
        groups.append({"lr": float(g["lr"]), "momentum": float(g["momentum"]), "dampening": float(g["dampening"]),
                       "weight_decay": float(g["weight_decay"]), "nesterov": bool(g["nesterov"]),
                       "maximize": bool(g["maximize"]), "params": [names[id(p)] for p in g["params"]]})
        for p in g["params"]:
            st = optimizer.state.get(id(p))
            if st is not None:
                buffers.append(names[id(p)])
                tensors[f"{OPT_PREFIX}{names[id(p)]}.{SGD_BUFFER}"] = st[SGD_BUFFER]
    return {"type": "SGD", "param_groups": groups, "buffers": buffers}


def save_checkpoint(path, model: GPT, optimizer=None, *, step: int = 0, tokenizer=None,
                    train_config: dict | None = None, rng: dict[str, np.random.Generator] | None = None,
                    best_val_loss: float | None = None, extra: dict | None = None) -> None:
    """Write model, optimizer moments and per-parameter steps, step, generator states, configs and
    tokenizer to `path`, atomically. `rng` maps a role ("train", "eval", "dropout") to a Generator.
    TypeError / ValueError (nothing written) for arguments a checkpoint cannot hold, non-finite
    tensors included; OSError from the disk, with the previous file left as it was."""
    for key, value in (("train_config", train_config), ("extra", extra)):
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"{key} must be a dict (or None), got {type(value).__name__}")
    names = param_names(model)
    tensors: dict[str, np.ndarray] = {name: p.data for name, p in model.named_parameters()}
    opt_header = None
    if isinstance(optimizer, SGD):
        opt_header = _sgd_header(optimizer, names, tensors)
    elif optimizer is not None:
        opt_header = _adamw_header(optimizer, names, tensors)
    if best_val_loss is not None and not math.isfinite(best_val_loss):
        best_val_loss = None
    header = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "tokenizer": tokenizer_dict(tokenizer),
        "step": int(step),
        "best_val_loss": None if best_val_loss is None else float(best_val_loss),
        "optimizer": opt_header,
        "rng": _rng_header(rng),
        "train_config": train_config,
        "extra": extra or {},
    }
    lora = lora_settings(model)                                # ValueError: adapters of several ranks
    if lora is not None:                                       # the adapted layers: their tensors' names
        header["lora"] = lora
    for name, arr in tensors.items():
        refuse_non_finite(path, name, arr, ValueError)
    save_file(tensors, path, metadata=seal(tensors, json.dumps(header, allow_nan=False)))


# ------------------------------------------------------------------------------------------ loading


def load_checkpoint(path) -> Checkpoint:
    """Read and validate a checkpoint (reference/programs/checkpoint_check.py says what is checked).
    FileNotFoundError for a missing file; CheckpointError, naming the file and the problem, for
    anything wrong with it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory; expected a checkpoint file (e.g. {path}/ckpt.safetensors)")
    with SafetensorsFile(path) as f:                           # CheckpointError if truncated or malformed
        metadata = f.metadata
        raw_header = metadata.get(METADATA_KEY)
        sums = read_checksums(path, metadata, raw_header) if isinstance(raw_header, str) else None
        header = read_header(path, metadata)
        if sums is None and header["version"] != 1:
            fail(path, f"a version {header['version']} checkpoint must carry checksums (metadata "
                       f"{CHECKSUM_KEY!r}), and this one has none")
        tensors = read_tensors(path, f, header, sums)
    config = model_config(path, header)
    steps_done = header_step(path, header)
    lora = lora_header(path, header, config)
    weights = model_state(path, config, tensors, lora)
    optimizer, opt_names = None, set()
    if header.get("optimizer") is not None:
        optimizer, opt_names = optimizer_state(path, header["optimizer"], tensors, config, lora)
    unexpected = sorted(set(tensors) - set(weights) - opt_names)
    if unexpected:
        fail(path, f"unexpected tensors {unexpected}")
    if config.tie_weights:
        weights["lm_head.weight"] = weights["transformer.wte.weight"]
    return Checkpoint(path=path, config=config, step=steps_done, model_state=weights, optimizer=optimizer,
                      checksummed=sums is not None, lora=lora, **header_fields(path, header, config))


def build_model(ckpt: Checkpoint, kernels: str = "fast") -> GPT:
    """The GPT of the checkpoint's config with its weights, on the `kernels` path ("fast" or "textbook":
    the choice is not stored in checkpoints); a LoRA run's with its adapters (unmerged: `merge_lora`
    folds them into the weights)."""
    model = GPT(ckpt.config, seed=0)
    if ckpt.lora is not None:
        apply_lora(model, ckpt.lora["r"], ckpt.lora["lora_alpha"], ckpt.lora["lora_dropout"], ckpt.lora["layers"])
    use_kernels(model, kernels)
    model.load_state_dict(ckpt.model_state)
    return model


def restore_optimizer(optimizer, model: GPT, ckpt: Checkpoint) -> None:
    """Put the checkpoint's moments and per-parameter steps into `optimizer` (built for `model` with the
    same param groups and of the same type: AdamW's moments and steps, or SGD's momentum buffers).
    Hyperparameters (lr, betas, eps, momentum, weight decay ...) stay the optimizer's own.
    CheckpointError when the checkpoint holds no optimizer state, or another optimizer or grouping."""
    if ckpt.optimizer is None:
        raise CheckpointError(f"{ckpt.path}: the checkpoint holds no optimizer state")
    if ckpt.optimizer["type"] != type(optimizer).__name__:
        raise CheckpointError(f"{ckpt.path}: the checkpoint's optimizer is {ckpt.optimizer['type']}, this one is "
                              f"{type(optimizer).__name__} (resume with the optimizer the run was started with)")
    names = param_names(model)
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
            if st is not None and isinstance(optimizer, SGD):
                state[id(p)] = {SGD_BUFFER: st[SGD_BUFFER].copy()}
            elif st is not None:
                state[id(p)] = {"step": st["step"], "exp_avg": st["exp_avg"].copy(),
                                "exp_avg_sq": st["exp_avg_sq"].copy()}
    optimizer.state = state


def generator_from_state(state: dict) -> np.random.Generator:
    """A numpy Generator in exactly the saved state (a live `bit_generator.state`, or its JSON form);
    ValueError naming what is wrong with a state that is not one of BIT_GENERATORS' layouts."""
    checked = state_from_json(state)
    bg = BIT_GENERATORS[checked["bit_generator"]]()
    bg.state = checked
    return np.random.Generator(bg)
