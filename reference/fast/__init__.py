"""The fast path: the textbook layers' forward and backward rewritten for speed, proven equal to them.

- kernels.py: `use_kernels(model, "fast" | "textbook")`, the one switch between the paths.
- pool.py: the thread pool, cache-sized blocks, products on the pool, BLAS thread control and
  recycled memory (`empty`).
- functional.py: erf, GELU with its derivative in one pass, softmax and its backward, blocked.
- layers.py, attention.py, model.py, loss.py, lora.py: subclasses of the textbook classes that override only
  forward and backward (and fast attention's `attention_probs`, which reads its own cache layout):
  same parameters, state_dict and cache contract.

    from reference import GPT, GPTConfig
    from reference.fast import use_kernels
    model = use_kernels(GPT(GPTConfig()), "fast")

This package imports the textbook (reference/); the textbook never imports it. What each kernel
changes, why it is faster and what proves it equal: docs/performance.md.
"""

from .kernels import KERNELS, use_kernels

__all__ = ["KERNELS", "use_kernels"]
