"""Training checkpoints: one pickle-free safetensors file holding everything a run needs to go on.

Layout of `ckpt.safetensors` (written by `save_checkpoint`, read by `load_checkpoint`):

tensors
    `<param name>`                        the model's weights under their torch names
                                          (`transformer.h.0.attn.c_attn.weight`, ...). A tied
                                          `lm_head.weight` is stored once, as `transformer.wte.weight`,
                                          and restored by tying.
    `optimizer.<param name>.exp_avg`      AdamW's first and second moments, same shape and dtype
    `optimizer.<param name>.exp_avg_sq`   as the parameter.
    `optimizer.<param name>.momentum_buffer`  SGD's momentum buffer instead (only with momentum != 0,
                                          and only for parameters that have one, as in torch).
`__metadata__`
    two keys. "numpy_gpt" holds one JSON string, the header::

        {"format": "numpy-gpt-checkpoint", "version": 2,
         "config": {GPTConfig fields}, "tokenizer": {"kind": "char", "chars": ...} | null,
         "step": optimizer steps done, "best_val_loss": float | null,
         "optimizer": {"type": "AdamW",
                       "param_groups": [{"lr", "betas", "eps", "weight_decay", "params": [names]}],
                       "steps": {param name: Adam's per-parameter step}}
                      | {"type": "SGD", "param_groups": [{"lr", "momentum", "dampening", "weight_decay",
                                                          "nesterov", "maximize", "params": [names]}],
                         "buffers": [names of the parameters with a momentum_buffer]} | null,
         "rng": {"train": np.random.Generator.bit_generator.state (arrays as lists of ints), ...},
         "train_config": {TrainConfig fields} | null, "extra": {...}}

    "numpy_gpt.sha256" holds the checksums, one JSON string::

        {"header": SHA-256 of the "numpy_gpt" string,
         "fields": {header key: SHA-256 of json.dumps(value, sort_keys=True)},
         "tensors": {tensor name: SHA-256 of "<dtype code> <shape>\n" + its little-endian C-order bytes}}

Integrity. Every tensor (its bytes, dtype and shape) and the header are covered by SHA-256 checksums
(`seal`). Loading recomputes them and refuses a mismatch naming the file, the tensor or the header
field, and the recorded and found digests: one flipped bit anywhere in a tensor, or an edited header
value, is caught. Loading then refuses non-finite values in any tensor (weights or optimizer moments),
naming the tensor; saving refuses them too, so a checkpoint never holds a NaN. Checksums catch
accidents (bit rot, a truncated copy, a hand edit), not an attacker, who can recompute them.

Version 1 checkpoints (before checksums) still load: `Checkpoint.checksummed` is False and the CLI
prints a note that the file's integrity cannot be checked (re-saving it, e.g. by resuming, adds them).

Loading reads bytes and parses JSON, nothing else: no pickle, no code from the file is ever run
(a bit generator is chosen by name from a fixed list, and its state checked against that generator's
layout). The safetensors library parses and validates the file itself (reference/programs/safetensors_io.py);
everything above it is checked here and a problem raises `CheckpointError` naming the file and the
problem: a missing or foreign header, an unknown format version, checksums, an invalid model config,
every header field's type (optimizer groups, generator states, best_val_loss, train_config, extra),
missing or unexpected tensors, wrong shapes or dtypes, non-finite values, and, with `check_compatible`,
another model config or another vocabulary than the run expects. The tensors are compared with the
names and shapes the header's config implies (`model_tensor_names`, arithmetic on the config) before
anything sized by the header is allocated: a small file claiming a huge model is refused without
building it.

Writing is atomic (reference/programs/atomic.py: temporary file in the same directory, fsync, rename; stale
temporaries of killed saves removed by the next save): a crash mid-save leaves the previous checkpoint
as it was, and nothing behind.

On to PyTorch: the weights load into `oracle.bridge.twins.GPT` (or nanoGPT's model) directly::

    from safetensors.torch import load_file
    tensors = load_file("out/ckpt.safetensors")
    state = {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}
    state.setdefault("lm_head.weight", state["transformer.wte.weight"])   # tied: same tensor
    twin.load_state_dict(state)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..config import GPTConfig, _is_finite_number, _is_int
from .data import tokenizer_from_dict
from ..fast import use_kernels
from ..model import GPT
from ..optim import SGD
from .safetensors_io import DTYPES, CheckpointError, SafetensorsFile, save_file

__all__ = ["Checkpoint", "CheckpointError", "FORMAT", "VERSION", "save_checkpoint", "load_checkpoint",
           "build_model", "restore_optimizer", "check_compatible", "generator_from_state", "state_from_json",
           "model_tensor_names", "model_tensor_count", "seal", "tensor_digest"]

FORMAT = "numpy-gpt-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)                        # 1: before checksums (loads, with checksummed=False)
METADATA_KEY = "numpy_gpt"
CHECKSUM_KEY = "numpy_gpt.sha256"
OPT_PREFIX = "optimizer."
MOMENTS = ("exp_avg", "exp_avg_sq")
# The bit generators a checkpoint may name; anything else is refused (never getattr on file input).
BIT_GENERATORS = {name: getattr(np.random, name) for name in ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")}
# The layout of each one's `bit_generator.state` (less its "bit_generator" name): an int N is an integer
# in [0, N); (n, dtype) an array of n such integers (a list in the file); a dict, exactly these keys.
# numpy checks little when a state is set (MT19937's "pos" or Philox's "buffer_pos" out of range would
# index past its buffers), so a state from a file is checked against this first.
_U32 = 2**32
_PCG_STATE = {"state": {"state": 2**128, "inc": 2**128}, "has_uint32": 2, "uinteger": _U32}
STATE_LAYOUTS = {
    "PCG64": _PCG_STATE,
    "PCG64DXSM": _PCG_STATE,
    "Philox": {"state": {"counter": (4, np.uint64), "key": (2, np.uint64)}, "buffer": (4, np.uint64),
               "buffer_pos": 5, "has_uint32": 2, "uinteger": _U32},
    "SFC64": {"state": {"state": (4, np.uint64)}, "has_uint32": 2, "uinteger": _U32},
    "MT19937": {"state": {"key": (624, np.uint32), "pos": 625}},
}
GROUP_KEYS = ("lr", "betas", "eps", "weight_decay", "params")     # one optimizer param group in the header
SGD_GROUP_KEYS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "params")
SGD_BUFFER = "momentum_buffer"


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
    checksummed: bool = True                      # False for a version 1 file: nothing could be verified

    @property
    def integrity_note(self) -> str | None:
        """One line for the user when the file's integrity could not be checked, else None."""
        if self.checksummed:
            return None
        return (f"note: {self.path} is a version 1 checkpoint without checksums; its integrity cannot be "
                "checked (a resumed run saves it again with checksums)")


# ------------------------------------------------------------------------------------------ saving


def _tokenizer_dict(tokenizer) -> dict | None:
    if tokenizer is None or isinstance(tokenizer, dict):
        return tokenizer
    return tokenizer.to_dict()


def _state_to_json(value):
    """A bit generator state as plain JSON: arrays (Philox, SFC64, MT19937) as lists of ints."""
    if isinstance(value, dict):
        return {k: _state_to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()                                  # Python ints
    return value


def _rng_header(rng: dict | None) -> dict:
    out = {}
    for role, g in (rng or {}).items():
        if not isinstance(g, np.random.Generator):
            raise TypeError(f"rng[{role!r}] must be a numpy Generator, got {type(g).__name__}")
        bg = type(g.bit_generator)
        if BIT_GENERATORS.get(bg.__name__) is not bg:
            raise ValueError(f"rng[{role!r}] uses the bit generator {bg.__name__}; a checkpoint holds only "
                             f"{sorted(BIT_GENERATORS)}")
        out[role] = _state_to_json(g.bit_generator.state)
    return out


def _param_names(model: GPT) -> dict[int, str]:
    """id(Parameter) -> name, a tied Parameter under its first name (transformer.wte.weight)."""
    return {id(p): name for name, p in model.named_parameters()}


def save_checkpoint(path, model: GPT, optimizer=None, *, step: int = 0, tokenizer=None,
                    train_config: dict | None = None, rng: dict[str, np.random.Generator] | None = None,
                    best_val_loss: float | None = None, extra: dict | None = None) -> None:
    """Write model, optimizer moments and per-parameter steps, step, generator states, configs and
    tokenizer to `path`, atomically. `rng` maps a role ("train", "eval", "dropout") to a Generator."""
    for key, value in (("train_config", train_config), ("extra", extra)):
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"{key} must be a dict (or None), got {type(value).__name__}")
    names = _param_names(model)
    tensors: dict[str, np.ndarray] = {name: p.data for name, p in model.named_parameters()}
    opt_header = None
    if isinstance(optimizer, SGD):
        opt_header = _sgd_header(optimizer, names, tensors)
    elif optimizer is not None:
        groups, steps = [], {}
        for g in optimizer.param_groups:
            unknown = [p for p in g["params"] if id(p) not in names]
            if unknown:
                raise ValueError(f"the optimizer holds {len(unknown)} parameter(s) that are not the model's")
        listed = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
        twice = sorted({n for n in listed if listed.count(n) > 1})
        if twice:                                  # torch warns and updates such a parameter twice a step
            raise ValueError(f"the optimizer lists {twice} more than once; a checkpoint holds each parameter once "
                             "(build the optimizer with each parameter in one group, once)")
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
        "rng": _rng_header(rng),
        "train_config": train_config,
        "extra": extra or {},
    }
    for name, arr in tensors.items():
        _refuse_non_finite(path, name, arr, ValueError)
    save_file(tensors, path, metadata=seal(tensors, json.dumps(header, allow_nan=False)))


# ------------------------------------------------------------------------------------------ integrity


def _le_bytes(arr: np.ndarray) -> tuple[memoryview, str]:
    code = next(c for c, dt in DTYPES.items() if dt == arr.dtype.newbyteorder("<"))
    return memoryview(np.require(arr, dtype=DTYPES[code], requirements="C")).cast("B"), code


def tensor_digest(arr: np.ndarray) -> str:
    """SHA-256 of "<dtype code> <shape>\\n" followed by the tensor's little-endian C-order bytes: the
    exact bytes the file holds for it, with the header entry that gives them meaning."""
    arr = np.asarray(arr)
    data, code = _le_bytes(arr)
    h = hashlib.sha256(f"{code} {list(arr.shape)}\n".encode())
    h.update(data)
    return h.hexdigest()


def _field_digests(header: dict) -> dict[str, str]:
    return {k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest() for k, v in header.items()}


def seal(tensors: dict[str, np.ndarray], header_json: str) -> dict[str, str]:
    """The safetensors metadata of a checkpoint: its header and the checksums of header and tensors."""
    checksums = {"header": hashlib.sha256(header_json.encode()).hexdigest(),
                 "fields": _field_digests(json.loads(header_json)),
                 "tensors": {name: tensor_digest(arr) for name, arr in tensors.items()}}
    return {METADATA_KEY: header_json, CHECKSUM_KEY: json.dumps(checksums)}


def _refuse_non_finite(path, name: str, arr: np.ndarray, exc=CheckpointError) -> None:
    if arr.dtype.kind != "f":
        return
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad = arr[~finite]
    where = tuple(int(i) for i in np.argwhere(~finite)[0])
    raise exc(f"{path}: tensor {name!r} holds non-finite values ({int(np.isnan(bad).sum())} NaN, "
              f"{int(np.isinf(bad).sum())} inf; the first at index {where} is {arr[where]}); "
              "a checkpoint holds only finite values")


def _checksums(path, metadata: dict, raw_header: str) -> dict | None:
    """The recorded checksums, after checking the header against them; None for a version 1 file."""
    raw = metadata.get(CHECKSUM_KEY)
    if raw is None:
        return None
    try:
        sums = json.loads(raw)
    except ValueError as e:
        _fail(path, f"the checksums (metadata {CHECKSUM_KEY!r}) are not valid JSON: {e}")
    if not (isinstance(sums, dict) and isinstance(sums.get("header"), str) and isinstance(sums.get("fields"), dict)
            and isinstance(sums.get("tensors"), dict)):
        _fail(path, f"the checksums (metadata {CHECKSUM_KEY!r}) must be an object with 'header', 'fields' "
                    "and 'tensors'")
    found = hashlib.sha256(raw_header.encode()).hexdigest()
    if found != sums["header"]:
        detail = f"metadata {METADATA_KEY!r}"
        try:
            fields = _field_digests(json.loads(raw_header))
        except (ValueError, RecursionError, AttributeError):
            fields = None
        if isinstance(fields, dict):
            changed = sorted(k for k in set(fields) | set(sums["fields"]) if fields.get(k) != sums["fields"].get(k))
            if changed:
                k = changed[0]
                detail = (f"header field {k!r} (recorded SHA-256 {sums['fields'].get(k)}, found {fields.get(k)}); "
                          f"changed fields: {changed}")
        _fail(path, f"the header fails its checksum: {detail}; whole header recorded SHA-256 {sums['header']}, "
                    f"found {found}. The file is corrupt or was edited")
    return sums


def _verify_tensor(path, name: str, arr: np.ndarray, sums: dict | None) -> None:
    if sums is not None:
        recorded = sums["tensors"].get(name)
        if recorded is None:
            _fail(path, f"tensor {name!r} has no recorded checksum (metadata {CHECKSUM_KEY!r})")
        found = tensor_digest(arr)
        if found != recorded:
            _fail(path, f"tensor {name!r} fails its checksum: recorded SHA-256 {recorded}, found {found}. "
                        "The file is corrupt")
    _refuse_non_finite(path, name, arr)


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


# ------------------------------------------------------------------------------------------ loading


def model_tensor_names(config: GPTConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The tensors a checkpoint of `config` stores for the model: name -> (shape, dtype); tied once.

    Computed from the config alone, in `GPT(config).named_parameters()` order, without building the
    model: a header may claim any size, and nothing sized by it is allocated before the file's tensors
    are known to match it. (tests/test_checkpoint_more.py checks this against real models of every variant.)"""
    C, dtype = config.n_embd, np.dtype(config.dtype)
    shapes: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (config.vocab_size, C)}
    if config.pos == "learned":
        shapes["transformer.wpe.weight"] = (config.block_size, C)

    def linear(name: str, n_in: int, n_out: int) -> None:
        shapes[f"{name}.weight"] = (n_out, n_in)
        if config.bias:
            shapes[f"{name}.bias"] = (n_out,)

    def norm(name: str) -> None:
        shapes[f"{name}.weight"] = (C,)
        if config.norm == "layernorm" and config.bias:
            shapes[f"{name}.bias"] = (C,)

    for i in range(config.n_layer):
        h = f"transformer.h.{i}"
        norm(f"{h}.ln_1")
        linear(f"{h}.attn.c_attn", C, (config.n_head + 2 * config.kv_heads) * config.head_dim)
        linear(f"{h}.attn.c_proj", C, C)
        norm(f"{h}.ln_2")
        linear(f"{h}.mlp.c_fc", C, config.hidden)
        if config.mlp == "swiglu":
            linear(f"{h}.mlp.c_gate", C, config.hidden)
        linear(f"{h}.mlp.c_proj", config.hidden, C)
    norm("transformer.ln_f")
    if not config.tie_weights:
        shapes["lm_head.weight"] = (config.vocab_size, C)
    return {name: (shape, dtype) for name, shape in shapes.items()}


def model_tensor_count(config: GPTConfig) -> int:
    """len(model_tensor_names(config)), in constant time: a header claiming a billion layers is refused
    by counting, before a billion names are listed."""
    per_linear = 2 if config.bias else 1
    per_norm = 2 if config.norm == "layernorm" and config.bias else 1
    linears = 5 if config.mlp == "swiglu" else 4              # c_attn, c_proj, c_fc, (c_gate,) c_proj
    per_layer = 2 * per_norm + linears * per_linear
    return (1 + (config.pos == "learned") + config.n_layer * per_layer + per_norm
            + (not config.tie_weights))


def _fail(path, problem: str):
    raise CheckpointError(f"{path}: {problem}")


def _header(path, metadata: dict) -> dict:
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        _fail(path, f"not a numpy-gpt checkpoint: the safetensors metadata has no {METADATA_KEY!r} entry "
                    f"(keys: {sorted(metadata)})")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:                  # RecursionError: nested too deep
        _fail(path, f"the checkpoint header is not valid JSON: {e}")
    if not isinstance(header, dict):
        _fail(path, f"the checkpoint header must be a JSON object, got {type(header).__name__}")
    if header.get("format") != FORMAT:
        _fail(path, f"not a numpy-gpt checkpoint: format is {header.get('format')!r}, expected {FORMAT!r}")
    if header.get("version") not in READABLE_VERSIONS:
        _fail(path, f"unsupported checkpoint version {_brief(header.get('version'))}; this code reads versions "
                    f"{', '.join(map(str, READABLE_VERSIONS))}")
    for key in ("config", "step"):
        if key not in header:
            _fail(path, f"the checkpoint header has no {key!r}")
    return header


def _brief(value, limit: int = 60) -> str:
    """repr of a header value, cut short: a refusal should name the value, not print a megabyte of it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_tensor(path, name: str, arr: np.ndarray, shape, dtype) -> None:
    if arr.shape != tuple(shape):
        _fail(path, f"tensor {name!r} has shape {arr.shape}, expected {tuple(shape)} for this config")
    if arr.dtype != dtype:
        _fail(path, f"tensor {name!r} has dtype {arr.dtype}, expected {dtype} (config dtype)")


def _read_tensors(path, f: SafetensorsFile, header: dict, sums: dict | None) -> dict[str, np.ndarray]:
    """Every tensor, checked against its checksum and for finite values, read only once the file's
    tensor count is known to fit the header's config (a huge claimed model is not allocated)."""
    try:
        config = GPTConfig.from_dict(header["config"])
    except (TypeError, ValueError) as e:
        _fail(path, f"invalid model config in the checkpoint: {e}")
    needed = model_tensor_count(config)
    if needed > len(f.entries):
        _fail(path, f"the model config in the header ({config.n_layer} layers) has {needed} tensors, "
                    f"but the file holds only {len(f.entries)}")
    tensors = {}
    for name in f.entries:
        tensors[name] = f.tensor(name)
        _verify_tensor(path, name, tensors[name], sums)
    return tensors


def load_checkpoint(path) -> Checkpoint:
    """Read and validate a checkpoint; raise CheckpointError on anything wrong with it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory; expected a checkpoint file (e.g. {path}/ckpt.safetensors)")
    with SafetensorsFile(path) as f:                           # CheckpointError if truncated or malformed
        metadata = f.metadata
        raw_header = metadata.get(METADATA_KEY)
        sums = _checksums(path, metadata, raw_header) if isinstance(raw_header, str) else None
        header = _header(path, metadata)
        if sums is None and header["version"] != 1:
            _fail(path, f"a version {header['version']} checkpoint must carry checksums (metadata "
                        f"{CHECKSUM_KEY!r}), and this one has none")
        tensors = _read_tensors(path, f, header, sums)
    try:
        config = GPTConfig.from_dict(header["config"])
    except (TypeError, ValueError) as e:
        _fail(path, f"invalid model config in the checkpoint: {e}")
    step = header["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        _fail(path, f"step must be a non-negative integer, got {step!r}")

    needed = model_tensor_count(config)
    if needed > len(tensors):
        _fail(path, f"the model config in the header ({config.n_layer} layers) has {needed} tensors, "
                    f"but the file holds only {len(tensors)}")
    expected = model_tensor_names(config)                      # shapes from the config: nothing allocated
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
    if header.get("optimizer") is not None:
        optimizer, opt_names = _optimizer(path, header["optimizer"], tensors, expected)

    unexpected = sorted(set(tensors) - set(model_state) - opt_names)
    if unexpected:
        _fail(path, f"unexpected tensors {unexpected}")
    if config.tie_weights:
        model_state["lm_head.weight"] = model_state["transformer.wte.weight"]

    rng = {} if header.get("rng") is None else header["rng"]
    if not isinstance(rng, dict):
        _fail(path, "'rng' must be an object mapping a role to a bit generator state")
    states = {}
    for role, st in rng.items():
        try:
            states[role] = state_from_json(st)
        except (TypeError, ValueError) as e:
            _fail(path, f"invalid generator state for {role!r}: {e}")
    best = header.get("best_val_loss")
    if best is not None and not _is_finite_number(best):
        _fail(path, f"best_val_loss must be a finite number or null, got {_brief(best)}")
    train_config = header.get("train_config")
    if train_config is not None and not isinstance(train_config, dict):
        _fail(path, f"train_config must be an object (the training config's fields) or null, "
                    f"got {_brief(train_config)}")
    extra = {} if header.get("extra") is None else header["extra"]
    if not isinstance(extra, dict):
        _fail(path, f"extra must be an object, got {_brief(extra)}")
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
                      optimizer=optimizer, rng=states, train_config=train_config,
                      best_val_loss=None if best is None else float(best), extra=extra,
                      checksummed=sums is not None)


def _optimizer(path, opt_header, tensors: dict, expected: dict) -> tuple[dict, set[str]]:
    """The header's optimizer section, checked through and through, with its moment tensors:
    ({"type", "param_groups", "state"}, names of the optimizer tensors used)."""
    if isinstance(opt_header, dict) and opt_header.get("type") == "SGD":
        return _sgd_optimizer(path, opt_header, tensors, expected)
    if not isinstance(opt_header, dict) or not isinstance(opt_header.get("param_groups"), list) \
            or not isinstance(opt_header.get("steps"), dict):
        _fail(path, "the optimizer header must be an object with 'param_groups' (list) and 'steps' (object)")
    if not isinstance(opt_header.get("type"), str):
        _fail(path, f"the optimizer's 'type' must be a string (its class name), "
                    f"got {_brief(opt_header.get('type'))}")
    for i, g in enumerate(opt_header["param_groups"]):
        where = f"optimizer param group {i}"
        if not isinstance(g, dict):
            _fail(path, f"{where} must be an object with keys {list(GROUP_KEYS)}, got {_brief(g)}")
        missing = [k for k in GROUP_KEYS if k not in g]
        if missing:
            _fail(path, f"{where} has no {missing}; a group holds {list(GROUP_KEYS)}")
        for key in ("lr", "eps", "weight_decay"):
            if not _is_finite_number(g[key]):
                _fail(path, f"{where}: {key!r} must be a finite number, got {_brief(g[key])}")
        betas = g["betas"]
        if not isinstance(betas, list) or len(betas) != 2 or not all(_is_finite_number(b) for b in betas):
            _fail(path, f"{where}: 'betas' must be a list of two finite numbers, got {_brief(betas)}")
        if not isinstance(g["params"], list):
            _fail(path, f"{where}: 'params' must be a list of parameter names, got {_brief(g['params'])}")
        bad = [n for n in g["params"] if not isinstance(n, str)]
        if bad:
            _fail(path, f"{where}: 'params' holds {_brief(bad[0])}, not a parameter name (a string)")
    grouped = [n for g in opt_header["param_groups"] for n in g["params"]]
    if sorted(grouped) != sorted(expected):
        _fail(path, f"the optimizer's param groups name {sorted(grouped)}, expected each of {sorted(expected)} once")

    state, opt_names = {}, set()
    for name, t in opt_header["steps"].items():
        if name not in expected:
            _fail(path, f"optimizer state for {name!r}, which is not a parameter of this model")
        if not _is_int(t) or t < 0:
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
    return {"type": opt_header["type"], "param_groups": opt_header["param_groups"], "state": state}, opt_names


def _sgd_optimizer(path, opt_header: dict, tensors: dict, expected: dict) -> tuple[dict, set[str]]:
    """SGD's header section (see the module docstring), checked through, with its momentum buffers."""
    if not isinstance(opt_header.get("param_groups"), list) or not isinstance(opt_header.get("buffers"), list):
        _fail(path, "the SGD optimizer header must be an object with 'param_groups' (list) and 'buffers' (list)")
    for i, g in enumerate(opt_header["param_groups"]):
        where = f"optimizer param group {i}"
        if not isinstance(g, dict) or sorted(g) != sorted(SGD_GROUP_KEYS):
            _fail(path, f"{where} must be an object with exactly the keys {list(SGD_GROUP_KEYS)}, got {_brief(g)}")
        for key in ("lr", "momentum", "dampening", "weight_decay"):
            if not _is_finite_number(g[key]):
                _fail(path, f"{where}: {key!r} must be a finite number, got {_brief(g[key])}")
        for key in ("nesterov", "maximize"):
            if not isinstance(g[key], bool):
                _fail(path, f"{where}: {key!r} must be true or false, got {_brief(g[key])}")
        if not isinstance(g["params"], list) or not all(isinstance(n, str) for n in g["params"]):
            _fail(path, f"{where}: 'params' must be a list of parameter names, got {_brief(g['params'])}")
    grouped = [n for g in opt_header["param_groups"] for n in g["params"]]
    if sorted(grouped) != sorted(expected):
        _fail(path, f"the optimizer's param groups name {sorted(grouped)}, expected each of {sorted(expected)} once")
    state, opt_names = {}, set()
    for name in opt_header["buffers"]:
        if not isinstance(name, str) or name not in expected or name in state:
            _fail(path, f"SGD momentum buffer for {_brief(name)}, which is not a parameter of this model "
                        f"(or is listed twice)")
        tname = f"{OPT_PREFIX}{name}.{SGD_BUFFER}"
        if tname not in tensors:
            _fail(path, f"missing optimizer tensor {tname!r}")
        _check_tensor(path, tname, tensors[tname], *expected[name])
        state[name] = {SGD_BUFFER: tensors[tname]}
        opt_names.add(tname)
    return {"type": "SGD", "param_groups": opt_header["param_groups"], "state": state}, opt_names


def state_from_json(state) -> dict:
    """A bit generator state as read from a file, checked against its layout (STATE_LAYOUTS), with its
    lists back as the arrays numpy gives (uint64 / uint32). ValueError names what is wrong."""
    if not isinstance(state, dict):
        raise ValueError(f"a bit generator state must be an object {{'bit_generator': name, ...}}, "
                         f"got {_brief(state)}")
    name = state.get("bit_generator")
    if not isinstance(name, str) or name not in BIT_GENERATORS:          # (a list is not hashable)
        raise ValueError(f"unknown bit generator {_brief(name)}; expected one of {sorted(BIT_GENERATORS)}")
    rest = {k: v for k, v in state.items() if k != "bit_generator"}
    return {"bit_generator": name, **_state_value(rest, STATE_LAYOUTS[name], f"{name} state")}


def _state_value(value, layout, where: str):
    if isinstance(layout, dict):
        if not isinstance(value, dict) or set(value) != set(layout):
            got = sorted(value) if isinstance(value, dict) else _brief(value)
            raise ValueError(f"{where} must be an object with keys {sorted(layout)}, got {got}")
        return {k: _state_value(value[k], sub, f"{where}[{k!r}]") for k, sub in layout.items()}
    if isinstance(layout, tuple):
        n, dtype = layout
        bits = 8 * np.dtype(dtype).itemsize
        items = value.tolist() if isinstance(value, np.ndarray) else value
        if not isinstance(items, list) or len(items) != n or not all(_is_int(x) and 0 <= x < 2**bits for x in items):
            raise ValueError(f"{where} must be a list of {n} integers in [0, 2**{bits}), got {_brief(value)}")
        return np.array(items, dtype=dtype)
    if not _is_int(value) or not 0 <= value < layout:
        raise ValueError(f"{where} must be an integer in [0, {layout}), got {_brief(value)}")
    return value


def generator_from_state(state: dict) -> np.random.Generator:
    """A numpy Generator in exactly the saved state (a live `bit_generator.state`, or its JSON form)."""
    checked = state_from_json(state)
    bg = BIT_GENERATORS[checked["bit_generator"]]()
    bg.state = checked
    return np.random.Generator(bg)


def build_model(ckpt: Checkpoint, kernels: str = "fast") -> GPT:
    """The GPT of the checkpoint's config with its weights, on the `kernels` path ("fast" or "textbook":
    the choice is not stored in checkpoints)."""
    model = use_kernels(GPT(ckpt.config, seed=0), kernels)
    model.load_state_dict(ckpt.model_state)
    return model


def restore_optimizer(optimizer, model: GPT, ckpt: Checkpoint) -> None:
    """Put the checkpoint's moments and per-parameter steps into `optimizer` (built for `model` with the
    same param groups and of the same type: AdamW's moments and steps, or SGD's momentum buffers).
    Hyperparameters (lr, betas, eps, momentum, weight decay ...) stay the optimizer's own."""
    if ckpt.optimizer is None:
        raise CheckpointError(f"{ckpt.path}: the checkpoint holds no optimizer state")
    if ckpt.optimizer["type"] != type(optimizer).__name__:
        raise CheckpointError(f"{ckpt.path}: the checkpoint's optimizer is {ckpt.optimizer['type']}, this one is "
                              f"{type(optimizer).__name__} (resume with the optimizer the run was started with)")
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
            if st is not None and isinstance(optimizer, SGD):
                state[id(p)] = {SGD_BUFFER: st[SGD_BUFFER].copy()}
            elif st is not None:
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
