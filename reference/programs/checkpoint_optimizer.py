"""Checking a checkpoint's optimizer section (reference/programs/checkpoint_format.py: "optimizer" in the
header, the `optimizer.<param name>.*` tensors) against the model it belongs to.

AdamW's section names its param groups (lr, betas, eps, weight_decay, params) and each parameter's step,
with the moments exp_avg and exp_avg_sq as tensors; SGD's names its groups (lr, momentum, dampening,
weight_decay, nesterov, maximize, params) and the parameters that hold a momentum_buffer. Every group
key's type, each parameter named once over the groups, each moment's shape and dtype (the parameter's)
are checked; a problem raises `CheckpointError` naming the file, the group or the tensor
(reference/programs/checkpoint_check.py: the rest of the file's checks).
"""

from __future__ import annotations

import numpy as np

from ..config import GPTConfig, _is_finite_number, _is_int
from ..lora import ADAPTER_PARAMS
from .checkpoint_check import _brief, _check_tensor, expected_shapes, fail
from .checkpoint_format import GROUP_KEYS, MOMENTS, OPT_PREFIX, SGD_BUFFER, SGD_GROUP_KEYS

__all__ = ["optimizer_state"]


def optimizer_state(path, opt_header, tensors: dict, config: GPTConfig,
                    lora: dict | None = None) -> tuple[dict, set[str]]:
    """The header's optimizer section, checked through and through, with its moment tensors:
    ({"type", "param_groups", "state"}, names of the optimizer tensors used). With `lora` (the header's
    checked "lora" section) the optimizer holds the adapters' A and B only: every other weight is frozen."""
    expected, dtype = expected_shapes(config, lora), np.dtype(config.dtype)
    if lora is not None:
        expected = {n: s for n, s in expected.items() if n.rpartition(".")[2] in ADAPTER_PARAMS}
    if isinstance(opt_header, dict) and opt_header.get("type") == "SGD":
        return _sgd_state(path, opt_header, tensors, expected, dtype)
    if not isinstance(opt_header, dict) or not isinstance(opt_header.get("param_groups"), list) \
            or not isinstance(opt_header.get("steps"), dict):
        fail(path, "the optimizer header must be an object with 'param_groups' (list) and 'steps' (object)")
    if not isinstance(opt_header.get("type"), str):
        fail(path, f"the optimizer's 'type' must be a string (its class name), "
                   f"got {_brief(opt_header.get('type'))}")
    for i, g in enumerate(opt_header["param_groups"]):
        where = f"optimizer param group {i}"
        if not isinstance(g, dict):
            fail(path, f"{where} must be an object with keys {list(GROUP_KEYS)}, got {_brief(g)}")
        missing = [k for k in GROUP_KEYS if k not in g]
        if missing:
            fail(path, f"{where} has no {missing}; a group holds {list(GROUP_KEYS)}")
        for key in ("lr", "eps", "weight_decay"):
            if not _is_finite_number(g[key]):
                fail(path, f"{where}: {key!r} must be a finite number, got {_brief(g[key])}")
        betas = g["betas"]
        if not isinstance(betas, list) or len(betas) != 2 or not all(_is_finite_number(b) for b in betas):
            fail(path, f"{where}: 'betas' must be a list of two finite numbers, got {_brief(betas)}")
        if not isinstance(g["params"], list):
            fail(path, f"{where}: 'params' must be a list of parameter names, got {_brief(g['params'])}")
        bad = [n for n in g["params"] if not isinstance(n, str)]
        if bad:
            fail(path, f"{where}: 'params' holds {_brief(bad[0])}, not a parameter name (a string)")
    _check_grouped(path, opt_header["param_groups"], expected)

    state, opt_names = {}, set()
    for name, t in opt_header["steps"].items():
        if name not in expected:
            fail(path, f"optimizer state for {name!r}, which is not a parameter of this model")
        if not _is_int(t) or t < 0:
            fail(path, f"optimizer step for {name!r} must be a non-negative integer, got {t!r}")
        entry = {"step": t}
        for key in MOMENTS:
            tname = f"{OPT_PREFIX}{name}.{key}"
            if tname not in tensors:
                fail(path, f"missing optimizer tensor {tname!r}")
            _check_tensor(path, tname, tensors[tname], expected[name], dtype)
            entry[key] = tensors[tname]
            opt_names.add(tname)
        state[name] = entry
    return {"type": opt_header["type"], "param_groups": opt_header["param_groups"], "state": state}, opt_names


def _check_grouped(path, groups: list, expected: dict) -> None:
    grouped = [n for g in groups for n in g["params"]]
    if sorted(grouped) != sorted(expected):
        fail(path, f"the optimizer's param groups name {sorted(grouped)}, expected each of {sorted(expected)} once")


def _sgd_state(path, opt_header: dict, tensors: dict, expected: dict, dtype) -> tuple[dict, set[str]]:
    """SGD's header section (checkpoint_format's docstring), checked through, with its momentum buffers."""
    if not isinstance(opt_header.get("param_groups"), list) or not isinstance(opt_header.get("buffers"), list):
        fail(path, "the SGD optimizer header must be an object with 'param_groups' (list) and 'buffers' (list)")
    for i, g in enumerate(opt_header["param_groups"]):
        where = f"optimizer param group {i}"
        if not isinstance(g, dict) or sorted(g) != sorted(SGD_GROUP_KEYS):
            fail(path, f"{where} must be an object with exactly the keys {list(SGD_GROUP_KEYS)}, got {_brief(g)}")
        for key in ("lr", "momentum", "dampening", "weight_decay"):
            if not _is_finite_number(g[key]):
                fail(path, f"{where}: {key!r} must be a finite number, got {_brief(g[key])}")
        for key in ("nesterov", "maximize"):
            if not isinstance(g[key], bool):
                fail(path, f"{where}: {key!r} must be true or false, got {_brief(g[key])}")
        if not isinstance(g["params"], list) or not all(isinstance(n, str) for n in g["params"]):
            fail(path, f"{where}: 'params' must be a list of parameter names, got {_brief(g['params'])}")
    _check_grouped(path, opt_header["param_groups"], expected)
    state, opt_names = {}, set()
    for name in opt_header["buffers"]:
        if not isinstance(name, str) or name not in expected or name in state:
            fail(path, f"SGD momentum buffer for {_brief(name)}, which is not a parameter of this model "
                       f"(or is listed twice)")
        tname = f"{OPT_PREFIX}{name}.{SGD_BUFFER}"
        if tname not in tensors:
            fail(path, f"missing optimizer tensor {tname!r}")
        _check_tensor(path, tname, tensors[tname], expected[name], dtype)
        state[name] = {SGD_BUFFER: tensors[tname]}
        opt_names.add(tname)
    return {"type": "SGD", "param_groups": opt_header["param_groups"], "state": state}, opt_names
