"""A GPT in pure NumPy with every backward pass written by hand: the textbook model.

This package's top level is the model a learner reads, each module beside its page in docs/:
module (Parameter, Module), config (GPTConfig), functional (erf, GELU, softmax), layers (Linear,
Embedding, LayerNorm, RMSNorm, GELU, MLP, SwiGLU, Dropout), positions (RoPE, ALiBi, sinusoidal),
attention, loss (cross-entropy), optim (SGD, Adam, AdamW, clipping, the cosine schedule) and model
(Block, GPT, KVCache). They import numpy, the standard library and each other only.

Beside it: `reference.fast` (the same layers rewritten for speed, `use_kernels(model, "fast")`) and
`reference.programs` (train, sample, checkpoints, data, Hugging Face, export, plot: the command line,
`python -m reference`). Both import this package; it imports neither. The map: docs/architecture.md.
"""

from .config import GPTConfig
from .model import GPT, KVCache
from .optim import SGD, Adam, AdamW

__all__ = ["GPT", "GPTConfig", "KVCache", "Adam", "AdamW", "SGD"]
