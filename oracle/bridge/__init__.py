"""The oracle's bridge to this project: the reference's layers under oracle.core's checks.

- adapters.py: `compare`, `consistency`, `finite_difference_check`, `jacobian_check`, `directional_check`
  on a reference layer (the layer protocol of reference/module.py), `run_reference`, `run_twin`,
  `ReplayMasks`;
- twins.py: the PyTorch twins, from torch's own functions (imports nothing from `reference`);
- registry.py (`REGISTRY`, `Case`, `Dims`, `register`) and cases.py (every registered case);
- verify.py (`python -m oracle verify`), hf.py (transformers as the third oracle), and the benchmark:
  bench.py (the command), bench_children.py (the NumPy side's child processes), bench_twin.py (the torch
  side's), bench_config.py (what they share).

`from oracle.bridge import compare` (or any name below) imports torch and registers every case of
cases.py; the package itself imports nothing, so that the benchmark's NumPy children, which import
bench_children.py, never import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "REGISTRY": "registry", "Case": "registry", "Dims": "registry", "perturb": "registry", "register": "registry",
    "small_dims": "registry", "tiny": "registry", "unregister": "registry",
    "GPTWithLoss": "cases", "config_of": "cases",
    "ReplayMasks": "adapters", "compare": "adapters", "consistency": "adapters", "directional_check": "adapters",
    "finite_difference_check": "adapters", "jacobian_check": "adapters", "layer_arguments": "adapters",
    "run_reference": "adapters", "run_twin": "adapters",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """The names above, each from its module, after cases.py has filled the registry (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    importlib.import_module(".cases", __name__)
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
