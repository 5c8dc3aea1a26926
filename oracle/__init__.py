"""PyTorch twins of the reference layers and the harness that compares them number by number.

Any NumPy code against any torch function or module (docs/verifying-your-own-code.md):

    from oracle import check
    report = check(forward, backward, torch_reference, inputs, params={"W": (W, lambda: layer.grad_W)})

The project's own layers against their twins (a thin user of `check`):

    from oracle import REGISTRY, compare
    report = compare(ref_layer, twin_module, inputs)

Importing `oracle` registers every case in `oracle.cases`.
"""

from . import cases as _cases  # noqa: F401  (fills the registry)
from .adapters import compare, finite_difference_check
from .fd import directional_check, jacobian_check, sampled_check
from .harness import (CheckError, MaskTape, NumpyRandomReplay, Param, Report, TensorCheck, check, consistency_check,
                      params_of, rel_error)
from .registry import REGISTRY, Case, Dims, register, unregister

__all__ = ["REGISTRY", "Case", "CheckError", "Dims", "MaskTape", "NumpyRandomReplay", "Param", "Report", "TensorCheck",
           "check", "compare", "consistency_check", "directional_check", "finite_difference_check", "jacobian_check",
           "params_of", "register", "rel_error", "sampled_check", "unregister"]
