"""PyTorch twins of the reference layers and the harness that compares them number by number.

    from oracle import REGISTRY, compare
    report = compare(ref_layer, twin_module, inputs)

Taking any of the names below from `oracle` imports torch and registers every case in
`oracle.cases`. The package itself imports nothing heavy, so that its command line
(`python -m oracle`, `numpy-gpt`, oracle/cli.py) can run `train` without importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"REGISTRY": "registry", "Case": "registry", "Dims": "registry", "register": "registry",
            "unregister": "registry", "Report": "harness", "compare": "harness", "rel_error": "harness"}

__all__ = ["REGISTRY", "Case", "Dims", "Report", "compare", "register", "rel_error", "unregister"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'oracle' has no attribute {name!r}")
    importlib.import_module(".cases", __name__)                # fills the registry
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
