"""The torch side of `check`: the reference function or module run on our inputs and parameter values, in
a given dtype, with our parameters loaded into theirs through a name map (whole tensors, parts of them,
transposed), and the order in which the forward first uses each tensor recorded (the report's
forward order).
"""

from __future__ import annotations

import copy
import inspect
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from . import masks as _masks
from .dropout import RecordedDropout
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
    function: bool = False                     # the reference is a plain function taking them as named tensors

    def shared(self) -> list[list[str]]:
        """Groups of our names loaded into the same part of one of their tensors (tied by the map)."""
        groups: dict[tuple, list[str]] = {}
        for name, (their, index, transpose) in self.targets.items():
            groups.setdefault((their, index_text(index) if index is not None else None, transpose), []).append(name)
        return [g for g in groups.values() if len(g) > 1]


def target_of(name: str, name_map) -> tuple | None:
    """What name_map says for one of our names: a target tuple, or None when it says nothing."""
    if name_map is None:
        return None
    if isinstance(name_map, Mapping):
        return name_map.get(name)
    if callable(name_map):
        return name_map(name)
    for rule in name_map:                      # [(regex, target), ...]: the first that matches all of the name
        if not (isinstance(rule, tuple) and len(rule) == 2):
            raise CheckError(f"name_map rule {rule!r}: expected (regex, target), the target as a dict entry takes "
                             f"it, with \\1 for the regex's groups")
        pattern, target = rule
        m = re.fullmatch(pattern, name)
        if m:
            if isinstance(target, str):
                return m.expand(target)
            target = tuple(target)
            return (m.expand(target[0]), *target[1:])
    return None


def resolve_mapping(reference, params: dict[str, Param], name_map, aliases=frozenset()) -> ParamMapping:
    """Each of our parameters' place in the reference, by `name_map` (check's docstring gives its forms).
    Raises CheckError for a map entry naming none of our parameters, a target the reference does not
    have (one error listing every unmatched name and the reference's names) or a shape that differs."""
    if isinstance(name_map, Mapping):
        unknown = sorted(set(name_map) - set(params) - set(aliases))     # a tied weight's other names: no error
        if unknown:
            raise CheckError(f"name_map names {unknown}, which are not among the params {sorted(params)}")
    module = isinstance(reference, torch.nn.Module)
    if not params:
        return ParamMapping({}, {n: tuple(p.shape) for n, p in reference.named_parameters()} if module else {})
    theirs = {n: tuple(p.shape) for n, p in reference.named_parameters()} if module else {}
    targets, unmatched = {}, []
    for name, p in params.items():
        target = target_of(name, name_map)
        target = name if target is None else target
        target = (target,) if isinstance(target, str) else tuple(target)
        if not 1 <= len(target) <= 3 or not isinstance(target[0], str) or (len(target) == 3 and target[2] != "T"):
            raise CheckError(f"name_map[{name!r}]: expected 'their name', (their name, index) or "
                             f"(their name, index, 'T'), got {target!r}")
        their_name, index, transpose = (*target, None, None)[:3]
        if not module:
            if index is not None:
                raise CheckError(f"parameter {name!r} maps to part of {their_name!r}, but the reference is a plain "
                                 f"function: it takes whole tensors, by name")
            shape = tuple(np.shape(p.value))[::-1] if transpose else tuple(np.shape(p.value))
            if theirs.setdefault(their_name, shape) != shape:
                raise CheckError(f"parameters mapped to {their_name!r} have shapes {theirs[their_name]} and {shape}")
            targets[name] = (their_name, None, bool(transpose))
            continue
        if their_name not in theirs:
            unmatched.append(f"{name!r} maps to {their_name!r}")
            continue
        shape = tuple(torch.empty(theirs[their_name], device="meta")[index].shape) if index is not None \
            else theirs[their_name]
        shape = shape[::-1] if transpose else shape
        if tuple(np.shape(p.value)) != shape:
            where = their_name if index is None else f"{their_name}[{index_text(index)}]"
            raise CheckError(f"parameter {name!r}: shape {tuple(np.shape(p.value))} here, {shape} in the reference "
                             f"({where}{', transposed' if transpose else ''})")
        targets[name] = (their_name, index, bool(transpose))
    if unmatched:
        raise CheckError(f"{'parameter' if len(unmatched) == 1 else 'parameters'} {', '.join(unmatched)}, which the "
                         f"reference module does not have; it has {sorted(theirs)} (name_map takes a dict, "
                         f"(regex, target) rules or a callable)")
    return ParamMapping(targets, theirs, not module)


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


def takes_masks(reference) -> bool:
    """Whether the reference accepts masks= (older references read the draws that way; RecordedDropout
    needs no argument)."""
    fn = reference.forward if isinstance(reference, torch.nn.Module) else reference
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    return "masks" in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


class Where:
    """The innermost submodule of the reference running now (forward hooks), to name it in errors."""

    def __init__(self, module):
        self.stack, self.handles = [], []
        if isinstance(module, torch.nn.Module):
            for name, sub in module.named_modules():
                self.handles.append(sub.register_forward_pre_hook(lambda m, a, n=name: self.stack.append(n)))
                self.handles.append(sub.register_forward_hook(self.leave))

    def leave(self, module, args, output) -> None:          # returns None: the output is left as it is
        self.stack.pop()

    def text(self) -> str:
        inner = [n for n in self.stack if n]
        return f" in submodule {inner[-1]!r}" if inner else ""

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def shapes_text(tensors) -> str:
    return ", ".join(f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in tensors)


def run_torch(reference, subject: Subject, mapping: ParamMapping, values: dict[str, np.ndarray],
              dout: np.ndarray, dtype: torch.dtype, masks, order: list | None = None, inputs=None):
    """The reference on our inputs (or `inputs`) and parameter values, in `dtype`: (output, [input grads],
    {our name: grad}). A plain function gets the parameters as named tensors (their names as keywords).
    An exception inside the reference is re-raised as one CheckError naming the call, the submodule
    running and the original message."""
    module = isinstance(reference, torch.nn.Module)
    fn = copy.deepcopy(reference).to(dtype) if module else reference
    if module:
        theirs = dict(fn.named_parameters())
    else:
        theirs = {n: torch.zeros(shape, dtype=dtype, requires_grad=True) for n, shape in mapping.theirs.items()}
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
    kwargs = {} if masks is None or not takes_masks(reference) else {"masks": masks}
    if not module:
        kwargs.update(theirs)
    if isinstance(masks, _masks.Draws):
        masks.cursor = 0                                   # each run takes the draws from the first
    for path, sub in fn.named_modules() if module else ():
        if isinstance(sub, RecordedDropout) and sub.name == "dropout" and path:   # named by its path in errors
            sub.name = path
    where = Where(fn)
    call = f"reference({shapes_text(tin)}{', masks=...' if 'masks' in kwargs else ''})"
    try:
        with _masks.active(masks if isinstance(masks, _masks.Draws) else None):
            if order is not None:
                watched = {id(p): n for n, p in theirs.items()}
                watched.update({id(tin[i]): subject.input_names[i] for i in subject.grad_inputs})
                with FirstUse(watched) as mode:
                    out = fn(*tin, **kwargs)
                order.extend(mode.order)
            else:
                out = fn(*tin, **kwargs)
    except CheckError:
        raise
    except Exception as e:
        raise CheckError(f"the reference raised {type(e).__name__}{where.text()} during {call}: {e}") from e
    finally:
        where.close()
    if not isinstance(out, torch.Tensor):
        raise CheckError(f"the reference returned {type(out).__name__}, expected one torch.Tensor")
    if tuple(out.shape) != tuple(np.shape(dout)):
        raise CheckError(f"output: shape {tuple(np.shape(dout))} here, {tuple(out.shape)} in the reference")
    if out.requires_grad:
        try:
            (out * torch.from_numpy(np.array(dout)).to(dtype)).sum().backward()
        except Exception as e:
            raise CheckError(f"the reference's backward (autograd) raised {type(e).__name__} after {call}: {e}") from e
    dx = [None if tin[i].grad is None else tin[i].grad.numpy() for i in subject.grad_inputs]
    grads = {}
    for name, (their_name, index, transpose) in mapping.targets.items():
        g = theirs[their_name].grad
        g = torch.zeros(theirs[their_name].shape, dtype=dtype) if g is None else g
        g = g if index is None else g[index]
        grads[name] = (g.T if transpose else g).detach().numpy()
    return out.detach().numpy(), dx, grads
