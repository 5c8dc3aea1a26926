"""PyTorch twins of the reference layers and the harness that compares them number by number.

    from oracle import REGISTRY, compare
    report = compare(ref_layer, twin_module, inputs)

Importing `oracle` registers every case in `oracle.cases`.
"""

from . import cases as _cases  # noqa: F401  (fills the registry)
from .harness import Report, compare, rel_error
from .registry import REGISTRY, Case, Dims, register, unregister

__all__ = ["REGISTRY", "Case", "Dims", "Report", "compare", "register", "rel_error", "unregister"]
