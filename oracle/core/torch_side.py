"""The torch side of `check`: the reference function or module run on our inputs and parameter values, in
a given dtype, with our parameters loaded into theirs through a name map (whole tensors, parts of them,
transposed), and the order in which the forward first uses each tensor recorded (the report's
forward order).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from .params import Param
from .report import CheckError
from .subject import Subject

TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


class FirstUse(TorchFunctionMode):
    """Records the order in which given tensors are first used by torch functions: forward order."""

    def __init__(self, watched: dict[int, str]):
        super().__init__()
        self.watched, self.order = watched, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in (*args, *kwargs.values()):
            for t in (a if isinstance(a, (list, tuple)) else (a,)):
                name = self.watched.get(id(t))
                if name is not None and name not in self.order:
                    self.order.append(name)
        return func(*args, **kwargs)


@dataclass
class ParamMapping:
    """Where each of our parameters lives in the reference: (their name, index or None, transposed)."""

    targets: dict[str, tuple[str, Any, bool]]
    theirs: dict[str, tuple]                   # their parameter names and shapes


def resolve_mapping(reference, params: dict[str, Param], name_map: Mapping | None) -> ParamMapping:
    name_map = dict(name_map or {})
    unknown = sorted(set(name_map) - set(params))
    if unknown:
        raise CheckError(f"name_map names {unknown}, which are not among the params {sorted(params)}")
    if not params:
        return ParamMapping({}, {n: tuple(p.shape) for n, p in reference.named_parameters()}
                        if isinstance(reference, torch.nn.Module) else {})
    if not isinstance(reference, torch.nn.Module):
        raise CheckError("params were given but the reference is a plain function, not a torch.nn.Module: "
                         "pass the parameters as inputs instead")
    theirs = {n: tuple(p.shape) for n, p in reference.named_parameters()}
    targets = {}
    for name, p in params.items():
        target = name_map.get(name, name)
        target = (target,) if isinstance(target, str) else tuple(target)
        if not 1 <= len(target) <= 3 or not isinstance(target[0], str) or (len(target) == 3 and target[2] != "T"):
            raise CheckError(f"name_map[{name!r}]: expected 'their name', (their name, index) or "
                             f"(their name, index, 'T'), got {target!r}")
        their_name, index, transpose = (*target, None, None)[:3]
        if their_name not in theirs:
            raise CheckError(f"parameter {name!r} maps to {their_name!r}, which the reference module does not have; "
                             f"it has {sorted(theirs)}")
        shape = tuple(torch.empty(theirs[their_name], device="meta")[index].shape) if index is not None \
            else theirs[their_name]
        shape = shape[::-1] if transpose else shape
        if tuple(np.shape(p.value)) != shape:
            where = their_name if index is None else f"{their_name}[{index_text(index)}]"
            raise CheckError(f"parameter {name!r}: shape {tuple(np.shape(p.value))} here, {shape} in the reference "
                             f"({where}{', transposed' if transpose else ''})")
        targets[name] = (their_name, index, bool(transpose))
    return ParamMapping(targets, theirs)


def index_text(index) -> str:
    parts = index if isinstance(index, tuple) else (index,)
    text = []
    for s in parts:
        if isinstance(s, slice):
            text.append(f"{'' if s.start is None else s.start}:{'' if s.stop is None else s.stop}"
                        + (f":{s.step}" if s.step not in (None, 1) else ""))
        else:
            text.append(str(s))
    return ", ".join(text)


def uncovered(mapping: ParamMapping) -> list[str]:
    """Their parameters, or parts of them, that none of ours is loaded into (a gradient left uncompared)."""
    covered = {n: np.zeros(shape, bool) for n, shape in mapping.theirs.items()}
    for their_name, index, _ in mapping.targets.values():
        if index is None:
            covered[their_name][...] = True
        else:
            covered[their_name][index] = True
    return [n if not c.any() else f"{n} ({int((~c).sum())} of {c.size} elements)"
            for n, c in covered.items() if not c.all()]


def run_torch(reference, subject: Subject, mapping: ParamMapping, values: dict[str, np.ndarray],
                   dout: np.ndarray, dtype: torch.dtype, masks, order: list | None = None, inputs=None):
    """The reference on our inputs (or `inputs`) and parameter values, in `dtype`: (output, [input grads],
    {our name: grad})."""
    module = isinstance(reference, torch.nn.Module)
    fn = copy.deepcopy(reference).to(dtype) if module else reference
    theirs = dict(fn.named_parameters()) if module else {}
    with torch.no_grad():
        for name, (their_name, index, transpose) in mapping.targets.items():
            target = theirs[their_name] if index is None else theirs[their_name][index]
            value = torch.from_numpy(np.array(values[name])).to(dtype)
            target.copy_(value.T if transpose else value)
    tin = []
    for i, x in enumerate(subject.inputs if inputs is None else inputs):
        t = torch.from_numpy(np.array(x))
        if t.is_floating_point():
            t = t.to(dtype).requires_grad_(i in subject.grad_inputs)
        tin.append(t)
    kwargs = {} if masks is None else {"masks": masks}
    if order is not None:
        watched = {id(p): n for n, p in theirs.items()}
        watched.update({id(tin[i]): subject.input_names[i] for i in subject.grad_inputs})
        with FirstUse(watched) as mode:
            out = fn(*tin, **kwargs)
        order.extend(mode.order)
    else:
        out = fn(*tin, **kwargs)
    if not isinstance(out, torch.Tensor):
        raise CheckError(f"the reference returned {type(out).__name__}, expected one torch.Tensor")
    if tuple(out.shape) != tuple(np.shape(dout)):
        raise CheckError(f"output: shape {tuple(np.shape(dout))} here, {tuple(out.shape)} in the reference")
    if out.requires_grad:
        (out * torch.from_numpy(np.array(dout)).to(dtype)).sum().backward()
    dx = [None if tin[i].grad is None else tin[i].grad.numpy() for i in subject.grad_inputs]
    grads = {}
    for name, (their_name, index, transpose) in mapping.targets.items():
        g = theirs[their_name].grad
        g = torch.zeros(theirs[their_name].shape, dtype=dtype) if g is None else g
        g = g if index is None else g[index]
        grads[name] = (g.T if transpose else g).detach().numpy()
    return out.detach().numpy(), dx, grads
