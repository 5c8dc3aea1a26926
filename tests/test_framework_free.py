"""The reference runs without any framework: the model trains, on both paths, and its checkpoints save and
load, in an interpreter where importing torch raises; `import reference` loads the textbook model alone.
(Which modules may import what, statically, lazily or by name: tests/test_architecture.py.)"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
