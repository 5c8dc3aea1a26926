"""The oracle's core: checks anyone's NumPy code, and imports nothing from `reference`.

- `check`, `check_loss` (check.py): a NumPy forward and backward (or a loss returning (loss, dlogits))
  against a torch function or module; `torch_side.py` runs the torch side.
- `consistency_check` (consistency.py): backward twice, non-contiguous inputs; no torch.
- `sampled_check`, `jacobian_check`, `directional_check` (fd.py): float64 central differences; no torch.
- `Report`, `TensorCheck`, `rel_error`, `CheckError` (report.py); `Param`, `params_of`, `Params`
  (params.py); `MaskTape`, `NumpyRandomReplay`, `Draws` (masks.py); `RecordedDropout`, `replay_dropout`
  (dropout.py: nn.Dropout's drop-in that replays the NumPy draws); `Subject`, `make_subject` (subject.py); the tolerance
  policy (tolerance.py, docs/tolerance.md).

The project's own layers, twins and registered cases are in oracle.bridge, which builds on this package.
"""

from __future__ import annotations

from . import tolerance
from .check import check, check_loss
from .consistency import consistency_check
from .dropout import RecordedDropout, replay_dropout
from .fd import directional_check, jacobian_check, sampled_check
from .masks import Draws, MaskTape, NumpyRandomReplay
from .params import Param, Params, params_of
from .report import CheckError, Report, TensorCheck, rel_error, tensor_check

__all__ = ["CheckError", "Draws", "MaskTape", "NumpyRandomReplay", "Param", "Params", "RecordedDropout", "Report",
           "TensorCheck", "check", "check_loss", "consistency_check", "directional_check", "jacobian_check",
           "params_of", "rel_error", "replay_dropout", "sampled_check", "tensor_check", "tolerance"]
