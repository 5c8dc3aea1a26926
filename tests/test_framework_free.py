"""The reference is framework-free: no module under reference/ (reference/fast/ included) imports torch
(or any framework) or the oracle, module level imports are numpy, the standard library and the
file-format library (safetensors, a core dependency: checkpoints are part of training, so it is imported
at module level where files are read or written), and the model trains, on both paths, in an interpreter
where importing torch raises."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted((ROOT / "reference").rglob("*.py"))
FRAMEWORKS = {"torch", "jax", "tensorflow", "cupy", "mlx"}
# Optional conveniences that a command may import lazily, inside a function, with a clear message if absent.
LAZY_OPTIONAL = {"tqdm", "matplotlib", "tokenizers", "mpi4py"}
# Well-kept file-format libraries, core dependencies (pyproject.toml), allowed at module level.
FILE_FORMATS = {"safetensors"}


def imports(tree: ast.AST, top_level_only: bool):
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT / "reference")))
def test_reference_imports_no_framework(path):
    tree = ast.parse(path.read_text())
    assert not FRAMEWORKS & set(imports(tree, top_level_only=False)), f"{path.name} imports a framework"
    allowed = set(sys.stdlib_module_names) | {"numpy", "__future__"} | FILE_FORMATS
    outside = set(imports(tree, top_level_only=True)) - allowed
    assert not outside, f"{path.name} imports {sorted(outside)} at module level; only numpy, the stdlib and {sorted(FILE_FORMATS)} allowed"
    lazy = set(imports(tree, top_level_only=False)) - allowed
    assert lazy <= LAZY_OPTIONAL, f"{path.name} imports {sorted(lazy - LAZY_OPTIONAL)}"


def oracle_references(source: str) -> list[str]:
    """Every way a module could reach the oracle: an import of it, a dynamic import (importlib,
    __import__) naming it, or a "module:function" / "oracle.x" string that a subprocess could import."""
    tree = ast.parse(source)
    found = [f"import {name}" for name in imports(tree, top_level_only=False) if name == "oracle"]
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.strip()
            if re.fullmatch(r"oracle(\.\w+)*(:\w+)?", text) or re.search(r"(from|import)\s+oracle\b", text):
                found.append(f"string {node.value!r}")          # a module path, or code for `python -c`
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__", "find_spec", "run_module"):
            found.append(f"dynamic import {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT / "reference")))
def test_reference_never_reaches_the_oracle(path):
    """reference/ must not depend on the oracle, not even through a string a subprocess imports."""
    found = oracle_references(path.read_text())
    allowed_dynamic = {"dynamic import importlib.import_module(module_name)",            # reference/programs/cli.py's own
                       "dynamic import importlib.import_module(commands[name][0])",     # commands, from its table
                       "dynamic import importlib.import_module(f'.{name}', __name__)"}  # lazy submodules: relative
    found = [f for f in found if f not in allowed_dynamic]
    assert not found, f"{path.relative_to(ROOT)} reaches the oracle: {found}"


def test_oracle_check_can_fail():
    """The check above sees each way in (a check that cannot fail is a defect)."""
    assert oracle_references("import oracle.bench_twin") == ["import oracle"]
    assert oracle_references("from oracle import twins") == ["import oracle"]
    assert oracle_references("x = 'oracle.bench_twin:memory_child'")
    assert oracle_references("code = 'import json; from oracle.bench import f'")
    assert oracle_references("import importlib\nm = importlib.import_module(name)")
    assert not oracle_references('"""They load into `oracle.twins.GPT`."""\nx = "the oracle proves it"')


def test_model_runs_without_torch():
    script = """
import sys
sys.modules['torch'] = None          # any `import torch` now raises ImportError
import numpy as np
from reference import GPT, GPTConfig, AdamW
from reference.fast import use_kernels
from reference.layers import DropoutMasks
from reference.optim import clip_grad_norm_
for kernels in ('fast', 'textbook'):
    m = use_kernels(GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, dropout=0.1,
                      n_kv_head=1, pos='rope', norm='rmsnorm', mlp='swiglu')), kernels)
    opt = AdamW(m.parameters(), lr=1e-2)
    idx = np.random.default_rng(0).integers(0, 11, (2, 8))
    losses = []
    for _ in range(5):
        opt.zero_grad()
        losses.append(m.loss_and_backward(idx, idx, DropoutMasks(np.random.default_rng(1))))
        clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
    assert losses[-1] < losses[0], losses
import tempfile, os
from reference.programs.checkpoint import save_checkpoint, load_checkpoint
with tempfile.TemporaryDirectory() as d:                 # checkpoints (the safetensors library) need no torch
    save_checkpoint(os.path.join(d, 'c.safetensors'), m, opt, step=5)
    assert load_checkpoint(os.path.join(d, 'c.safetensors')).step == 5
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit('torch was importable')
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_importing_the_model_loads_only_the_model():
    """`import reference` loads the textbook model alone: no fast path (no OpenBLAS through ctypes), no
    programs, no oracle and no optional library; `GPT(config)` is the textbook model."""
    script = """
import sys
import reference
loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'safetensors', 'tokenizers', 'oracle')
          or m.startswith(('reference.fast', 'reference.programs'))]
assert not loaded, loaded
model = reference.GPT(reference.GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4))
assert all(type(m).__module__.count('.') == 1 for _, m in model.named_modules()), 'a layer of another path'
assert not [m for m in sys.modules if m.startswith(('reference.fast', 'reference.programs'))]
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
