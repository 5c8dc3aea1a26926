"""The fast path: the textbook layers' forward and backward rewritten for speed, proven equal to them.

- pool.py: the thread pool, cache-sized blocks, products on the pool, BLAS thread control and
  recycled memory (`empty`).
- functional.py: erf, GELU with its derivative in one pass, softmax and its backward, blocked.
- layers.py, attention.py, model.py: subclasses of the textbook classes that override only
  forward and backward (same parameters, state_dict and cache contract).

Select it with `GPT(config, kernels="fast")` (the default) or `reference.kernels.use_kernels`.
What each kernel changes, why it is faster and what proves it equal: docs/performance.md.
"""

import importlib
from pathlib import Path


def __getattr__(name: str):
    """`reference.fast.pool.products_on_pool()` after `import reference`: a submodule is imported on first use."""
    if not name.startswith("_") and (Path(__file__).parent / f"{name}.py").is_file():
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'reference.fast' has no attribute {name!r}")
