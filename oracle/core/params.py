"""The parameters of the code under test, as `check` and `oracle.core.fd` take them: `Param(value, grad)`,
where `grad` is the gradient array, a callable returning it, or an attribute name; `params_of(obj)` finds
the parameters stored on an object (nested objects, lists and dicts, dotted paths), their gradients by a
rule, and the arrays reached by two names (tied weights). NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .report import CheckError


@dataclass
class Param:
    """One parameter of the code under test.

    `value` is the array the code reads (the very object: finite differences perturb it in place).
    `grad` says where its gradient is after a backward: the gradient array itself (an accumulation
    buffer such as `Parameter.grad`, zeroed by the harness before each run), a callable returning
    it (`lambda: layer.grad_W`), or the dotted attribute path of its gradient on `owner`
    (`"grad_W"`, `"attn.W_q.grad_weight"`). `home` is (object, attribute) where the code finds
    `value` (params_of fills it): the harness then learns the order in which the forward first
    touches each parameter by lending it a watched view for one run. `tied` names the other paths
    that reach the same array, each with its own gradient (a tied weight: see `params_of`)."""

    value: np.ndarray
    grad: np.ndarray | Callable[[], np.ndarray] | str
    owner: Any = None
    home: tuple | None = None
    tied: dict = field(default_factory=dict)         # {other name: Param of the same array, its own gradient}

    def read_grad(self, name: str = "") -> np.ndarray | None:
        if isinstance(self.grad, np.ndarray):
            return self.grad
        if isinstance(self.grad, str):
            if self.owner is None:
                raise CheckError(f"parameter {name!r}: its gradient is named {self.grad!r} but no object holds it; "
                                 f"give Param(value, {self.grad!r}, owner) or params_of(owner)")
            found = resolve(self.owner, self.grad, default=_MISSING)
            return None if found is _MISSING else found
        return self.grad()

    def zero(self) -> None:
        if isinstance(self.grad, np.ndarray):
            self.grad[...] = 0


_MISSING = object()
_RAISE = object()


def resolve(obj, path: str, default=_RAISE):
    """obj's item at a dotted path: attributes, list indices and dict keys ("h.0.attn.W_q.weight")."""
    for part in path.split(".") if path else []:
        if isinstance(obj, Mapping) and part in obj:
            obj = obj[part]
        elif isinstance(obj, (list, tuple)) and part.lstrip("-").isdigit() and -len(obj) <= int(part) < len(obj):
            obj = obj[int(part)]
        elif hasattr(obj, part):
            obj = getattr(obj, part)
        elif default is not _RAISE:
            return default
        else:
            raise CheckError(f"{type(obj).__name__} has no attribute {part!r} (in the path {path!r})")
    return obj


def _children(obj):
    """(key, child) of a container or an object's attributes, in definition order."""
    if isinstance(obj, Mapping):
        return [(str(k), v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(obj)]
    if hasattr(obj, "__dict__") and not isinstance(obj, type) and not callable(getattr(obj, "__func__", None)):
        return list(vars(obj).items())
    return []


def _walkable(obj) -> bool:
    return isinstance(obj, (Mapping, list, tuple)) or (
        hasattr(obj, "__dict__") and not isinstance(obj, type) and type(obj).__module__ not in ("builtins",)
        and not callable(obj) and not isinstance(obj, np.random.Generator))


def walk(obj, prefix: str = "", seen=None):
    """(dotted path, holder, key, array) for every floating array reachable from obj, depth first in
    definition order; each object visited once."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    for key, child in _children(obj):
        path = f"{prefix}{key}"
        if isinstance(child, np.ndarray):
            if child.dtype.kind == "f":
                yield path, obj, key, child
        elif _walkable(child):
            yield from walk(child, path + ".", seen)


class Params(dict):
    """{name: Param}, as params_of found them, with what it found: `found` (every array, in walk order),
    `no_grad` (names whose gradient was not there when params_of looked: a backward not run yet, or
    an array that is not a parameter), `tied` ({name: [other names of the same array]})."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.found: list[str] = []
        self.no_grad: list[str] = []
        self.skipped: list[str] = []
        self.tied: dict[str, list[str]] = {}

    def describe(self) -> str:
        lines = [f"params_of found {len(self)} parameter(s): {', '.join(self)}"]
        if self.tied:
            lines.append("tied (one array, several names; checked once): "
                         + "; ".join(f"{k} = {', '.join(v)}" for k, v in self.tied.items()))
        if self.no_grad:
            lines.append(f"no gradient yet: {', '.join(self.no_grad)}")
        if self.skipped:
            lines.append(f"not parameters (no gradient, while the others have one): {', '.join(self.skipped)}")
        return "\n".join(lines)

    __str__ = describe


def grad_path(rule, name: str) -> str:
    """Where a parameter's gradient lives, by the rule: a format string over {leaf} (the last part of the
    name), {name} (all of it) and {} (the same as {leaf}), the path then taken from the parameter's
    holder ("grad_{leaf}": attn.W_q.weight -> attn.W_q.grad_weight); a dict {name: path from the
    object}; or a callable name -> path from the object."""
    head, _, leaf = name.rpartition(".")
    if isinstance(rule, str):
        local = rule.format(leaf, leaf=leaf, name=name)
        return f"{head}.{local}" if head and "{name}" not in rule else local
    if isinstance(rule, Mapping):
        if name not in rule:
            raise CheckError(f"grad rule: no entry for parameter {name!r}; it has {sorted(rule)}")
        return rule[name]
    if callable(rule):
        return rule(name)
    raise CheckError(f"grad: give a format string such as 'grad_{{leaf}}', a dict or a callable, got {type(rule).__name__}")


def params_of(obj, names: Sequence[str] | None = None, grad="grad_{leaf}") -> Params:
    """The parameters stored on `obj` and where their gradients are, found by walking it.

    names: dotted paths through attributes, list indices and dict keys ("W_q", "attn.W_q.weight",
        "h.0.ln_1.gamma"); None finds every floating array reachable from obj (nested objects, lists,
        dicts), except those that are some other array's gradient by the rule.
    grad: where each gradient is, read after the backward: a format string over {leaf} and {name}
        ("grad_{leaf}": attn.W_q.weight -> attn.W_q.grad_weight; "{name}_grad"), a dict
        {name: path}, or a callable name -> path (paths from obj).

    The same array reached by two paths (an embedding tied to the output head) is one parameter,
    named by the first path, checked once; the others are kept as `Param.tied`, each with its own
    gradient, so a report can say when the code did not sum them. Walk a freshly built object, or one
    after a backward (then arrays without a gradient, such as cached activations, are skipped and
    listed in `skipped`); after a forward alone, the arrays it cached would be taken for parameters.
    Returns `Params` (a dict of Param with `found`, `no_grad`, `skipped`, `tied` and `describe()`).
    Raises CheckError for a path that does not exist."""
    if names is None:
        arrays = [(p, holder, key, a) for p, holder, key, a in walk(obj)]
        grads = set()
        for p, *_ in arrays:
            try:
                grads.add(grad_path(grad, p))
            except CheckError:
                pass
        arrays = [t for t in arrays if t[0] not in grads]          # none at all: a layer without parameters
    else:
        if isinstance(names, str):
            names = [names]
        missing = [n for n in names if resolve(obj, n, default=_MISSING) is _MISSING]
        if missing:
            raise CheckError(f"{type(obj).__name__} has no attribute(s) {missing}: no such parameter")
        arrays = []
        for n in names:
            head, _, key = n.rpartition(".")
            holder = resolve(obj, head)
            value = resolve(obj, n)
            if not isinstance(value, np.ndarray):
                raise CheckError(f"parameter {n!r} is a {type(value).__name__}, not a NumPy array")
            arrays.append((n, holder, key, value))
    params = Params()
    if names is None:                                 # after a backward: arrays without a gradient are not parameters
        has = {path: resolve(obj, grad_path(grad, path), default=None) is not None for path, *_ in arrays}
        if any(has.values()):
            params.skipped = [path for path, *_ in arrays if not has[path]]
            arrays = [t for t in arrays if has[t[0]] or id(t[3]) in {id(u[3]) for u in arrays if has[u[0]]}]
    first_of: dict[int, str] = {}
    for path, holder, key, value in arrays:
        params.found.append(path)
        param = Param(value, grad_path(grad, path), obj, (holder, key))
        if param.read_grad(path) is None:
            params.no_grad.append(path)
        if id(value) in first_of:
            canonical = first_of[id(value)]
            params[canonical].tied[path] = param
            params.tied.setdefault(canonical, []).append(path)
            continue
        first_of[id(value)] = path
        params[path] = param
    return params


def as_param(name: str, spec) -> Param:
    """A Param from what `check` accepts for one parameter: a Param or a (value, grad) pair, where grad is
    an array or a callable (an attribute name needs an object to read it from: Param(value, name, owner))."""
    if isinstance(spec, Param):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        if isinstance(spec[1], str):
            raise CheckError(f"parameter {name!r}: the gradient is named {spec[1]!r} but no object holds it; "
                             f"give Param(value, {spec[1]!r}, owner), (value, lambda: owner.{spec[1]}) "
                             f"or params_of(owner)")
        return Param(np.asarray(spec[0]) if not isinstance(spec[0], np.ndarray) else spec[0], spec[1])
    raise CheckError(f"parameter {name!r}: give a Param or a (value, grad) pair, got {type(spec).__name__}")


def tie(params: dict[str, Param]) -> dict[str, Param]:
    """The same array given under several names is one parameter, the first name's, checked once; the
    other names become its `tied` entries (their gradients kept for the report)."""
    out: dict[str, Param] = {}
    first_of: dict[int, str] = {}
    for name, p in params.items():
        key = id(p.value)
        if key in first_of:
            out[first_of[key]].tied[name] = p
            continue
        first_of[key] = name
        out[name] = p
    return out
