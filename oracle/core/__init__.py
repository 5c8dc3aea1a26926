"""The oracle's core: checks anyone's NumPy code, and imports nothing from `reference`.

- `check` (check.py): a NumPy forward and backward against a torch function or module; `torch_side.py`
  runs the torch side.
- `consistency_check` (consistency.py): backward twice, non-contiguous inputs; no torch.
- `sampled_check`, `jacobian_check`, `directional_check` (fd.py): float64 central differences; no torch.
- `Report`, `TensorCheck`, `rel_error`, `CheckError` (report.py); `Param`, `params_of` (params.py);
  `MaskTape`, `NumpyRandomReplay` (masks.py); `Subject`, `make_subject` (subject.py); the tolerance
  policy (tolerance.py, docs/tolerance.md).

The project's own layers, twins and registered cases are in oracle.bridge, which builds on this package.
"""

from __future__ import annotations

from . import tolerance
from .check import check
from .consistency import consistency_check
from .fd import directional_check, jacobian_check, sampled_check
from .masks import MaskTape, NumpyRandomReplay
from .params import Param, params_of
from .report import CheckError, Report, TensorCheck, rel_error, tensor_check

__all__ = ["CheckError", "MaskTape", "NumpyRandomReplay", "Param", "Report", "TensorCheck", "check",
           "consistency_check", "directional_check", "jacobian_check", "params_of", "rel_error", "sampled_check",
           "tensor_check", "tolerance"]
