"""PyTorch twins of the reference layers and the harness that compares them number by number.

Any NumPy code against any torch function or module (docs/verifying-your-own-code.md):

    from oracle import check
    report = check(forward, backward, torch_reference, inputs, params={"W": (W, lambda: layer.grad_W)})

The project's own layers against their twins (a thin user of `check`):

    from oracle import REGISTRY, compare
    report = compare(ref_layer, twin_module, inputs)

Taking any of the names below from `oracle` imports torch and registers every case in
`oracle.cases`. The package itself imports nothing heavy, so that its command line
(`python -m oracle`, `numpy-gpt`, oracle/cli.py) can run `train` without importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "REGISTRY": "registry", "Case": "registry", "Dims": "registry", "register": "registry", "unregister": "registry",
    "compare": "adapters", "finite_difference_check": "adapters",
    "directional_check": "fd", "jacobian_check": "fd", "sampled_check": "fd",
    "CheckError": "harness", "MaskTape": "harness", "NumpyRandomReplay": "harness", "Param": "harness",
    "Report": "harness", "TensorCheck": "harness", "check": "harness", "consistency_check": "harness",
    "params_of": "harness", "rel_error": "harness",
}

__all__ = ["REGISTRY", "Case", "CheckError", "Dims", "MaskTape", "NumpyRandomReplay", "Param", "Report", "TensorCheck",
           "check", "compare", "consistency_check", "directional_check", "finite_difference_check", "jacobian_check",
           "params_of", "register", "rel_error", "sampled_check", "unregister"]


_SUBMODULES = ("adapters", "bench", "bench_twin", "cases", "cli", "fd", "harness", "hf", "registry", "tolerance", "twins",
               "verify")


def __getattr__(name: str):
    if name in _SUBMODULES:                                    # `import oracle; oracle.fd.jacobian_check` (PEP 562)
        return importlib.import_module(f".{name}", __name__)
    if name not in _EXPORTS:
        raise AttributeError(f"module 'oracle' has no attribute {name!r}")
    importlib.import_module(".cases", __name__)                # fills the registry
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
