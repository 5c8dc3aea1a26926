"""A GPT in pure NumPy with every backward pass written by hand.

The model (`GPT`), its layers, the loss and the optimizers import numpy and the standard library
only; `oracle/` proves each of them against PyTorch.
"""

from .config import GPTConfig
from .model import GPT, KVCache
from .optim import SGD, Adam, AdamW

__all__ = ["GPT", "GPTConfig", "KVCache", "Adam", "AdamW", "SGD"]
