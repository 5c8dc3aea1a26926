"""What both sides of `python -m oracle bench` share: the benchmark configurations (presets and
`BenchConfig`), the optimizer's settings, the batch, and this process's resident memory. bench.py
times the NumPy side and bench_twin.py the torch side, each in its own child processes; both import
this module, which imports neither of them, nor torch.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reference.config import GPTConfig

# nanoGPT's Shakespeare-char settings (vocab 65, learned positions, exact GELU, no dropout, biases,
# tied head), at two sizes; `tiny` is for the CI smoke test.
PRESETS = {
    "small": dict(n_embd=128, n_layer=4, n_head=4, block_size=64, batch=32),
    "large": dict(n_embd=384, n_layer=6, n_head=6, block_size=256, batch=16),
    "tiny": dict(n_embd=32, n_layer=2, n_head=2, block_size=16, batch=4),
}
LR, WEIGHT_DECAY, BETAS = 1e-3, 0.1, (0.9, 0.99)


@dataclass(frozen=True)
class BenchConfig:
    name: str
    n_embd: int
    n_layer: int
    n_head: int
    block_size: int
    batch: int
    vocab_size: int = 65

    def gpt_config(self, dtype: str) -> GPTConfig:
        return GPTConfig(vocab_size=self.vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=0.0, bias=True, tie_weights=True,
                         pos="learned", gelu_approximate="none", dtype=dtype)

    @property
    def tokens(self) -> int:
        return self.batch * self.block_size

    def label(self) -> str:
        return (f"d{self.n_embd}, {self.n_layer} layers, {self.n_head} heads, "
                f"T {self.block_size}, batch {self.batch}")


def batch_of(cfg: BenchConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, cfg.vocab_size, (cfg.batch, cfg.block_size + 1))
    return idx[:, :-1].copy(), idx[:, 1:].copy()


def _proc_status_mb(key: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:  # pragma: no cover - not Linux
        return None
    found = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) / 1024 if found else None


def peak_rss_mb() -> float:
    """Peak resident set of this process (VmHWM: this interpreter only, not its parent), in MB."""
    mb = _proc_status_mb("VmHWM")
    if mb is None:  # pragma: no cover - not Linux: ru_maxrss (KiB, or bytes on macOS)
        import resource
        scale = 1 if sys.platform == "darwin" else 1024
        mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
    return mb


def rss_mb() -> float:
    """Current resident set of this process, in MB (nan where /proc is missing)."""
    mb = _proc_status_mb("VmRSS")
    return float("nan") if mb is None else mb
