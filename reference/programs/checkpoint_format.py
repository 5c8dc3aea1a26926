"""The checkpoint file format: what `ckpt.safetensors` holds, its constants, and its checksums.

tensors
    `<param name>`                        the model's weights under their torch names
                                          (`transformer.h.0.attn.c_attn.weight`, ...), exactly the
                                          names and shapes of `reference.model.parameter_shapes(config)`
                                          in the config's dtype. A tied `lm_head.weight` is stored once,
                                          as `transformer.wte.weight`, and restored by tying.
    `optimizer.<param name>.exp_avg`      AdamW's first and second moments, same shape and dtype
    `optimizer.<param name>.exp_avg_sq`   as the parameter.
    `optimizer.<param name>.momentum_buffer`  SGD's momentum buffer instead (only with momentum != 0,
                                          and only for parameters that have one, as in torch).
    With LoRA adapters (the header's "lora"), the names and shapes are
    `reference.lora.lora_parameter_shapes(config, r, layers)`: an adapted layer P holds `P.lora_A`,
    `P.lora_B`, `P.base_layer.weight` and `P.base_layer.bias`, and the optimizer's tensors are
    the adapters' only (every other weight is frozen).
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
         "train_config": {TrainConfig fields} | null, "extra": {...},
         "lora": {"r", "lora_alpha", "lora_dropout", "layers": [adapted layer names]}   (adapters only)}

    "numpy_gpt.sha256" holds the checksums, one JSON string::

        {"header": SHA-256 of the "numpy_gpt" string,
         "fields": {header key: SHA-256 of json.dumps(value, sort_keys=True)},
         "tensors": {tensor name: SHA-256 of "<dtype code> <shape>\n" + its little-endian C-order bytes}}

Versions: version 2 (written here) carries the checksums; version 1 is the same layout without
"numpy_gpt.sha256", and loads with `Checkpoint.checksummed` False.

Checksums catch accidents (bit rot, a truncated copy, a hand edit), not an attacker, who can recompute
them. Checking a file against this layout: reference/programs/checkpoint_check.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from ..config import GPTConfig
from .safetensors_io import DTYPES

__all__ = ["Checkpoint", "FORMAT", "VERSION", "READABLE_VERSIONS", "METADATA_KEY", "CHECKSUM_KEY", "OPT_PREFIX",
           "MOMENTS", "SGD_BUFFER", "GROUP_KEYS", "SGD_GROUP_KEYS", "BIT_GENERATORS", "STATE_LAYOUTS",
           "seal", "tensor_digest", "field_digests", "state_to_json", "tokenizer_dict", "param_names"]

FORMAT = "numpy-gpt-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)                        # 1: no checksums (loads, with checksummed=False)
METADATA_KEY = "numpy_gpt"
CHECKSUM_KEY = "numpy_gpt.sha256"
OPT_PREFIX = "optimizer."
MOMENTS = ("exp_avg", "exp_avg_sq")
SGD_BUFFER = "momentum_buffer"
GROUP_KEYS = ("lr", "betas", "eps", "weight_decay", "params")     # one AdamW param group in the header
SGD_GROUP_KEYS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "params")
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
    lora: dict | None = None                      # the adapters (reference.lora.lora_settings), if any

    @property
    def integrity_note(self) -> str | None:
        """One line for the user when the file's integrity could not be checked, else None."""
        if self.checksummed:
            return None
        return (f"note: {self.path} is a version 1 checkpoint without checksums; its integrity cannot be "
                "checked (a resumed run saves it again with checksums)")


# ------------------------------------------------------------------------------------------ checksums


def tensor_digest(arr: np.ndarray) -> str:
    """SHA-256 of "<dtype code> <shape>\\n" followed by the tensor's little-endian C-order bytes: the
    exact bytes the file holds for it, with the header entry that gives them meaning."""
    arr = np.asarray(arr)
    code = next(c for c, dt in DTYPES.items() if dt == arr.dtype.newbyteorder("<"))
    data = memoryview(np.require(arr, dtype=DTYPES[code], requirements="C")).cast("B")
    h = hashlib.sha256(f"{code} {list(arr.shape)}\n".encode())
    h.update(data)
    return h.hexdigest()


def field_digests(header: dict) -> dict[str, str]:
    """{header key: SHA-256 of json.dumps(value, sort_keys=True)}: names the field an edit changed."""
    return {k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest() for k, v in header.items()}


def seal(tensors: dict[str, np.ndarray], header_json: str) -> dict[str, str]:
    """The safetensors metadata of a checkpoint: its header and the checksums of header and tensors."""
    checksums = {"header": hashlib.sha256(header_json.encode()).hexdigest(),
                 "fields": field_digests(json.loads(header_json)),
                 "tensors": {name: tensor_digest(arr) for name, arr in tensors.items()}}
    return {METADATA_KEY: header_json, CHECKSUM_KEY: json.dumps(checksums)}


# ------------------------------------------------------------------------------------------ header values


def state_to_json(value):
    """A bit generator state as plain JSON: arrays (Philox, SFC64, MT19937) as lists of ints."""
    if isinstance(value, dict):
        return {k: state_to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()                                  # Python ints
    return value


def tokenizer_dict(tokenizer) -> dict | None:
    """The header's form of a tokenizer (its `to_dict()`); a dict or None as given."""
    if tokenizer is None or isinstance(tokenizer, dict):
        return tokenizer
    return tokenizer.to_dict()


def param_names(model) -> dict[int, str]:
    """id(Parameter) -> name, a tied Parameter under its first name (transformer.wte.weight): the names
    the header's optimizer section uses."""
    return {id(p): name for name, p in model.named_parameters()}
