"""Parameters and modules: the minimum needed to name, hold and save weights like torch does.

A `Parameter` holds `data` and its accumulated gradient `grad` (same shape and dtype).
A `Module` finds its parameters and children from its attributes, so names come out as
torch's `state_dict()` keys: `transformer.h.0.attn.c_attn.weight`. Lists of modules are
numbered like `nn.ModuleList`.

Every layer follows one protocol (llm.c's): `forward(x, ...) -> (out, cache)` and
`backward(dout, cache) -> dx`. The cache is returned, never stored on the layer, so a layer
can run forward twice before either backward. Gradients always accumulate (`+=`), which
makes weight tying correct for free: a shared Parameter receives both contributions.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

DTYPES = {"float32": np.float32, "float64": np.float64}


def as_dtype(dtype) -> np.dtype:
    """Resolve 'float32'/'float64' (or the numpy types) to a numpy dtype; refuse anything else."""
    resolved = np.dtype(DTYPES.get(dtype, dtype)) if isinstance(dtype, str) else np.dtype(dtype)
    if resolved not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {resolved}")
    return resolved


class Parameter:
    """An array and the gradient accumulated into it (grad None: frozen, no gradient kept)."""

    __slots__ = ("data", "grad")

    def __init__(self, data: np.ndarray):
        self.data = data
        # np.zeros, not zeros_like: calloc'ed pages, resident only once a backward writes them, so a
        # model that only samples never holds its gradients' memory (zeros_like writes every page).
        self.grad = np.zeros(data.shape, data.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: parameter discovery, naming, zeroing and (de)serialisation."""

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, value in vars(self).items():
            children = [(f"{name}.{i}", m) for i, m in enumerate(value)] if isinstance(value, list) else [(name, value)]
            for child_name, child in children:
                if isinstance(child, Module):
                    yield from child.named_modules(f"{prefix}.{child_name}" if prefix else child_name)

    def named_parameters(self, remove_duplicate: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(name, Parameter) pairs in definition order; a tied Parameter is listed once unless asked."""
        seen: set[int] = set()
        for prefix, module in self.named_modules():
            for name, value in vars(module).items():
                if isinstance(value, Parameter):
                    if remove_duplicate and id(value) in seen:
                        continue
                    seen.add(id(value))
                    yield (f"{prefix}.{name}" if prefix else name), value

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            if p.grad is not None:                             # None: frozen (reference/lora.py), no gradient
                p.grad.fill(0)

    def num_parameters(self) -> int:
        return sum(p.data.size for p in self.parameters())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every parameter by its torch name, tied ones under each of their names (as torch does)."""
        return {name: p.data for name, p in self.named_parameters(remove_duplicate=False)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy arrays into the parameters in place; names, shapes and dtypes must match exactly."""
        params = dict(self.named_parameters(remove_duplicate=False))
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(f"state dict mismatch: missing keys {missing}, unexpected keys {unexpected}")
        for name, p in params.items():
            value = np.asarray(state[name])
            if value.shape != p.data.shape:
                raise ValueError(f"shape mismatch for {name}: expected {p.data.shape}, got {value.shape}")
            if value.dtype != p.data.dtype:
                raise ValueError(f"dtype mismatch for {name}: expected {p.data.dtype}, got {value.dtype}")
            p.data[...] = value


class ModuleDict(Module):
    """A named bag of submodules, like `nn.ModuleDict`: `ModuleDict(wte=..., h=[...])`."""

    def __init__(self, **modules):
        for name, module in modules.items():
            setattr(self, name, module)
