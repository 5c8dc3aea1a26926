"""Checking a checkpoint file against its format (reference/programs/checkpoint_format.py).

Loading reads bytes and parses JSON, nothing else: no pickle, no code from the file is ever run (a bit
generator is chosen by name from a fixed list, and its state checked against that generator's layout).
The safetensors library parses and validates the file itself (reference/programs/safetensors_io.py);
everything above it is checked here, and a problem raises `CheckpointError` naming the file and the
problem: a missing or foreign header, an unknown format version, checksums, an invalid model config,
every header field's type (generator states, best_val_loss, train_config, extra), missing or unexpected
tensors, wrong shapes or dtypes, non-finite values, and, with `check_compatible`, another model config or
another vocabulary than the run expects. The optimizer's section and its tensors are checked in
reference/programs/checkpoint_optimizer.py.

Integrity. Every tensor (its bytes, dtype and shape) and the header are covered by SHA-256 checksums.
Loading recomputes them and refuses a mismatch naming the file, the tensor or the header field, and the
recorded and found digests: one flipped bit anywhere in a tensor, or an edited header value, is caught.
Non-finite values in any tensor (weights or optimizer moments) are refused, naming the tensor.

Sizes. The tensors are compared with the names and shapes the header's config implies
(`reference.model.parameter_shapes`, arithmetic on the config; with a "lora" section,
`reference.lora.lora_parameter_shapes`, the same list with the adapted layers' names) before anything
sized by the header is allocated: a small file claiming a huge model is refused without building it.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from ..config import GPTConfig, _is_finite_number, _is_int
from ..lora import lora_parameter_shapes
from ..model import parameter_count, parameter_shapes
from .checkpoint_format import (BIT_GENERATORS, CHECKSUM_KEY, FORMAT, METADATA_KEY, MOMENTS, OPT_PREFIX,
                                READABLE_VERSIONS, SGD_BUFFER, STATE_LAYOUTS, field_digests, tensor_digest,
                                tokenizer_dict)
from .tokenizers import tokenizer_from_dict
from .safetensors_io import CheckpointError, SafetensorsFile

__all__ = ["check_compatible", "state_from_json", "refuse_non_finite", "read_header", "read_checksums",
           "read_tensors", "model_config", "header_step", "model_state", "header_fields", "fail",
           "lora_header", "expected_shapes"]


def fail(path, problem: str):
    raise CheckpointError(f"{path}: {problem}")


def _brief(value, limit: int = 60) -> str:
    """repr of a header value, cut short: a refusal should name the value, not print a megabyte of it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def refuse_non_finite(path, name: str, arr: np.ndarray, exc=CheckpointError) -> None:
    """Raise `exc` naming the tensor, the count of NaN and inf, and the first one, if `arr` holds any."""
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


# ------------------------------------------------------------------------------------------ header


def read_header(path, metadata: dict) -> dict:
    """The header (metadata "numpy_gpt") as a dict, of a known format and version, with config and step."""
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        fail(path, f"not a numpy-gpt checkpoint: the safetensors metadata has no {METADATA_KEY!r} entry "
                   f"(keys: {sorted(metadata)})")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:                  # RecursionError: nested too deep
        fail(path, f"the checkpoint header is not valid JSON: {e}")
    if not isinstance(header, dict):
        fail(path, f"the checkpoint header must be a JSON object, got {type(header).__name__}")
    if header.get("format") != FORMAT:
        fail(path, f"not a numpy-gpt checkpoint: format is {header.get('format')!r}, expected {FORMAT!r}")
    if header.get("version") not in READABLE_VERSIONS:
        fail(path, f"unsupported checkpoint version {_brief(header.get('version'))}; this code reads versions "
                   f"{', '.join(map(str, READABLE_VERSIONS))}")
    for key in ("config", "step"):
        if key not in header:
            fail(path, f"the checkpoint header has no {key!r}")
    return header


def read_checksums(path, metadata: dict, raw_header: str) -> dict | None:
    """The recorded checksums, after checking the header against them; None for a version 1 file."""
    raw = metadata.get(CHECKSUM_KEY)
    if raw is None:
        return None
    try:
        sums = json.loads(raw)
    except ValueError as e:
        fail(path, f"the checksums (metadata {CHECKSUM_KEY!r}) are not valid JSON: {e}")
    if not (isinstance(sums, dict) and isinstance(sums.get("header"), str) and isinstance(sums.get("fields"), dict)
            and isinstance(sums.get("tensors"), dict)):
        fail(path, f"the checksums (metadata {CHECKSUM_KEY!r}) must be an object with 'header', 'fields' "
                   "and 'tensors'")
    found = hashlib.sha256(raw_header.encode()).hexdigest()
    if found != sums["header"]:
        detail = f"metadata {METADATA_KEY!r}"
        try:
            fields = field_digests(json.loads(raw_header))
        except (ValueError, RecursionError, AttributeError):
            fields = None
        if isinstance(fields, dict):
            changed = sorted(k for k in set(fields) | set(sums["fields"]) if fields.get(k) != sums["fields"].get(k))
            if changed:
                k = changed[0]
                detail = (f"header field {k!r} (recorded SHA-256 {sums['fields'].get(k)}, found {fields.get(k)}); "
                          f"changed fields: {changed}")
        fail(path, f"the header fails its checksum: {detail}; whole header recorded SHA-256 {sums['header']}, "
                   f"found {found}. The file is corrupt or was edited")
    return sums


def model_config(path, header: dict) -> GPTConfig:
    """The header's model config; CheckpointError naming what GPTConfig refuses."""
    try:
        return GPTConfig.from_dict(header["config"])
    except (TypeError, ValueError) as e:
        fail(path, f"invalid model config in the checkpoint: {e}")


def lora_header(path, header: dict, config: GPTConfig) -> dict | None:
    """The header's "lora" section (reference.lora.lora_settings: r, lora_alpha, lora_dropout and the adapted
    layers' full names), checked against the config; None for a model without adapters."""
    lora = header.get("lora")
    if lora is None:
        return None
    keys = ("r", "lora_alpha", "lora_dropout", "layers")
    if not isinstance(lora, dict) or sorted(lora) != sorted(keys):
        fail(path, f"'lora' must be an object with exactly the keys {list(keys)}, got {_brief(lora)}")
    if not _is_int(lora["r"]) or lora["r"] < 1:
        fail(path, f"lora 'r' must be an integer >= 1, got {_brief(lora['r'])}")
    if not _is_finite_number(lora["lora_alpha"]) or lora["lora_alpha"] <= 0:
        fail(path, f"'lora_alpha' must be a finite number > 0, got {_brief(lora['lora_alpha'])}")
    if not _is_finite_number(lora["lora_dropout"]) or not 0 <= lora["lora_dropout"] < 1:
        fail(path, f"'lora_dropout' must be a number in [0, 1), got {_brief(lora['lora_dropout'])}")
    layers = lora["layers"]
    if not isinstance(layers, list) or not layers or not all(isinstance(n, str) for n in layers) \
            or len(set(layers)) != len(layers):
        fail(path, f"lora 'layers' must be a non-empty list of distinct layer names, got {_brief(layers)}")
    try:
        shapes = lora_parameter_shapes(config, lora["r"], layers)
    except ValueError as e:
        fail(path, f"the LoRA adapters in the header do not fit its model config: {e}")
    adapted = [n.rpartition(".")[0] for n in shapes if n.endswith(".lora_A")]
    if adapted != layers:
        fail(path, f"lora 'layers' must name each adapted layer in model order, got {_brief(layers)}; "
                   f"the config's layers they match are {_brief(adapted)}")
    return {**lora, "lora_alpha": float(lora["lora_alpha"]), "lora_dropout": float(lora["lora_dropout"])}


def expected_shapes(config: GPTConfig, lora: dict | None) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of the model: parameter_shapes(config), or with adapters
    lora_parameter_shapes(config, r, layers)."""
    return parameter_shapes(config) if lora is None else lora_parameter_shapes(config, lora["r"], lora["layers"])


def header_step(path, header: dict) -> int:
    """The header's step: optimizer steps done, a non-negative integer."""
    value = header["step"]
    if not _is_int(value) or value < 0:
        fail(path, f"step must be a non-negative integer, got {value!r}")
    return value


def header_fields(path, header: dict, config: GPTConfig) -> dict:
    """The header's generator states, best_val_loss, train_config, extra and tokenizer, each checked:
    keyword arguments for `Checkpoint`."""
    rng = {} if header.get("rng") is None else header["rng"]
    if not isinstance(rng, dict):
        fail(path, "'rng' must be an object mapping a role to a bit generator state")
    states = {}
    for role, st in rng.items():
        try:
            states[role] = state_from_json(st)
        except (TypeError, ValueError) as e:
            fail(path, f"invalid generator state for {role!r}: {e}")
    best = header.get("best_val_loss")
    if best is not None and not _is_finite_number(best):
        fail(path, f"best_val_loss must be a finite number or null, got {_brief(best)}")
    train_config = header.get("train_config")
    if train_config is not None and not isinstance(train_config, dict):
        fail(path, f"train_config must be an object (the training config's fields) or null, "
                   f"got {_brief(train_config)}")
    extra = {} if header.get("extra") is None else header["extra"]
    if not isinstance(extra, dict):
        fail(path, f"extra must be an object, got {_brief(extra)}")
    tokenizer = header.get("tokenizer")
    if tokenizer is not None:
        if not isinstance(tokenizer, dict):
            fail(path, f"tokenizer must be an object, got {tokenizer!r}")
        try:
            tok = tokenizer_from_dict(tokenizer)
        except (TypeError, ValueError, KeyError) as e:
            fail(path, f"invalid tokenizer: {e}")
        if tok.vocab_size != config.vocab_size:
            fail(path, f"the tokenizer has {tok.vocab_size} symbols but the model's vocab_size is {config.vocab_size}")
    return dict(rng=states, best_val_loss=None if best is None else float(best),
                train_config=train_config, extra=extra, tokenizer=tokenizer)


# ------------------------------------------------------------------------------------------ tensors


def _verify_tensor(path, name: str, arr: np.ndarray, sums: dict | None) -> None:
    if sums is not None:
        recorded = sums["tensors"][name]                        # read_tensors refused a name without one
        found = tensor_digest(arr)
        if found != recorded:
            fail(path, f"tensor {name!r} fails its checksum: recorded SHA-256 {recorded}, found {found}. "
                       "The file is corrupt")
    refuse_non_finite(path, name, arr)


def _check_tensor(path, name: str, arr: np.ndarray, shape, dtype) -> None:
    if arr.shape != tuple(shape):
        fail(path, f"tensor {name!r} has shape {arr.shape}, expected {tuple(shape)} for this config")
    if arr.dtype != dtype:
        fail(path, f"tensor {name!r} has dtype {arr.dtype}, expected {dtype} (config dtype)")


def read_tensors(path, f: SafetensorsFile, header: dict, sums: dict | None) -> dict[str, np.ndarray]:
    """Every tensor, checked against its checksum and for finite values, read only once the file's
    tensor count is known to fit the header's config (a huge claimed model is not allocated)."""
    config = model_config(path, header)
    needed = parameter_count(config)
    if needed > len(f.entries):
        fail(path, f"the model config in the header ({config.n_layer} layers) has {needed} tensors, "
                   f"but the file holds only {len(f.entries)}")
    if sums is not None:                                      # a tensor without a checksum: added, or its sum lost
        shapes = expected_shapes(config, lora_header(path, header, config))
        known = set(shapes) | {f"{OPT_PREFIX}{n}.{m}" for n in shapes for m in (*MOMENTS, SGD_BUFFER)}
        unsummed = sorted(set(f.entries) - set(sums["tensors"]))
        unexpected = [n for n in unsummed if n not in known]
        if unexpected:
            fail(path, f"unexpected tensors {unexpected}: not among the {len(sums['tensors'])} tensors this "
                       f"checkpoint was written with (its checksums, metadata {CHECKSUM_KEY!r}, list every one)")
        if unsummed:
            fail(path, f"tensor {unsummed[0]!r} has no recorded checksum (metadata {CHECKSUM_KEY!r})")
    tensors = {}
    for name in f.entries:
        tensors[name] = f.tensor(name)
        _verify_tensor(path, name, tensors[name], sums)
    return tensors


def model_state(path, config: GPTConfig, tensors: dict[str, np.ndarray], lora: dict | None = None) -> dict[str, np.ndarray]:
    """The model's tensors: each name and shape of parameter_shapes(config) (with `lora`, the header's
    checked "lora" section: lora_parameter_shapes), in the config's dtype (a tied head once, under
    transformer.wte.weight)."""
    needed = parameter_count(config)
    if needed > len(tensors):
        fail(path, f"the model config in the header ({config.n_layer} layers) has {needed} tensors, "
                   f"but the file holds only {len(tensors)}")
    shapes, dtype = expected_shapes(config, lora), np.dtype(config.dtype)   # from the config: nothing allocated
    state = {}
    for name, shape in shapes.items():
        if name in tensors:
            _check_tensor(path, name, tensors[name], shape, dtype)
            state[name] = tensors[name]
    missing = sorted(set(shapes) - set(state))
    if missing:
        fail(path, f"missing model tensors {missing}")
    return state


# ------------------------------------------------------------------------------------------ generators


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


# ------------------------------------------------------------------------------------------ compatibility


def _diff(a: dict, b: dict) -> list[str]:
    return [f"{k}: checkpoint {a.get(k)!r}, here {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_compatible(ckpt, config: GPTConfig | None = None, tokenizer=None) -> None:
    """Refuse to resume `ckpt` (a Checkpoint) into a run with another model config or another vocabulary."""
    tok = tokenizer_dict(tokenizer)
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
