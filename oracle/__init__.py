"""PyTorch twins of the reference layers and the checks that compare them number by number.

Two layers, imported one way (docs/verifying-your-own-code.md):

- oracle.core checks anyone's NumPy code against any torch function or module, and imports nothing
  from `reference`:

      from oracle import check
      report = check(forward, backward, torch_reference, inputs, params={"W": (W, lambda: layer.grad_W)})

- oracle.bridge puts this project's layers under those checks: the twins, the registered cases,
  `compare`, `python -m oracle verify` and the benchmark:

      from oracle import REGISTRY, compare
      report = compare(ref_layer, twin_module, inputs)

Taking a name of the core from `oracle` imports torch and the core only; taking a name of the bridge
also registers every case in oracle/bridge/cases.py (and so imports `reference`). The package itself
imports nothing heavy, so that its command line (`python -m oracle`, `numpy-gpt`, oracle/cli.py) can
run `train` without importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "REGISTRY": "bridge.registry", "Case": "bridge.registry", "Dims": "bridge.registry",
    "register": "bridge.registry", "unregister": "bridge.registry",
    "compare": "bridge.adapters", "finite_difference_check": "bridge.adapters",
    "directional_check": "core.fd", "jacobian_check": "core.fd", "sampled_check": "core.fd",
    "CheckError": "core.report", "Report": "core.report", "TensorCheck": "core.report", "rel_error": "core.report",
    "MaskTape": "core.masks", "NumpyRandomReplay": "core.masks", "Param": "core.params", "params_of": "core.params",
    "check": "core.check", "check_loss": "core.check", "consistency_check": "core.consistency",
    "Params": "core.params", "Draws": "core.masks", "RecordedDropout": "core.dropout", "replay_dropout": "core.dropout",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """The names above, each from its module (PEP 562); a bridge name after oracle/bridge/cases.py has
    filled the registry."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'oracle' has no attribute {name!r}")
    if _EXPORTS[name].startswith("bridge."):
        importlib.import_module(".bridge.cases", __name__)
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
