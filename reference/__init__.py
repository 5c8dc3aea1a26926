"""A GPT in pure NumPy with every backward pass written by hand.

The model (`GPT`), its layers, the loss and the optimizers import numpy and the standard library
only; `oracle/` proves each of them against PyTorch.
"""

import importlib
from pathlib import Path

from .config import GPTConfig
from .model import GPT, KVCache
from .optim import SGD, Adam, AdamW

__all__ = ["GPT", "GPTConfig", "KVCache", "Adam", "AdamW", "SGD"]


def __getattr__(name: str):
    """`import reference; reference.hf.from_pretrained(...)`, `reference.fast.pool...`: a submodule is imported
    on first use (PEP 562), so `import reference` stays light and imports no optional library."""
    here = Path(__file__).parent
    if not name.startswith("_") and ((here / f"{name}.py").is_file() or (here / name / "__init__.py").is_file()):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'reference' has no attribute {name!r}")
