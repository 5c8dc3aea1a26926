"""The PyTorch side of `python -m oracle bench`: the twin GPT trained with torch.optim.AdamW.

Eager mode, torch's defaults (no torch.compile, no foreach/fused optimizer flags: on the CPU torch
runs its per-parameter loop), the thread count set to NumPy's. Imported only in the child processes
that time the twin (bench_children.py's timing_child) or measure its memory (`memory_child` here), so
the NumPy side's children never import torch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .bench_config import BETAS, LR, WEIGHT_DECAY, BenchConfig, batch_of, peak_rss_mb, rss_mb
from .twins import GPT as TwinGPT
from .twins import load_reference_state

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def set_threads(n: int) -> None:
    torch.set_num_threads(n)


def torch_version() -> str:
    return torch.__version__


def make_optimizer(twin: torch.nn.Module, lr: float, betas, weight_decay: float) -> torch.optim.AdamW:
    """nanoGPT's groups: weight decay on matrices (dim >= 2), none on biases and norm weights."""
    params = list(twin.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


class TwinTrainer:
    """The twin of a reference GPT (same weights, `dtype`) and its optimizer; `step` trains once."""

    def __init__(self, ref_model, dtype: str, *, lr: float, betas, weight_decay: float, twin=None):
        if twin is None:
            twin = TwinGPT(ref_model.config)
            load_reference_state(twin, ref_model.state_dict(), TORCH_DTYPES[dtype])
        self.model = twin.to(TORCH_DTYPES[dtype])
        self.opt = make_optimizer(self.model, lr, betas, weight_decay)

    def step(self, idx: np.ndarray, targets: np.ndarray) -> float:
        idx_t, tgt_t = torch.from_numpy(idx), torch.from_numpy(targets)
        self.opt.zero_grad(set_to_none=True)
        logits = self.model(idx_t)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_t.reshape(-1))
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def memory_child(spec: dict) -> dict:
    """Child process body for the PyTorch side's peak memory: torch's own init, since the weights'
    values do not change the memory, and no NumPy model is built."""
    set_threads(spec["threads"])
    cfg = BenchConfig(**spec["cfg"])
    trainer = TwinTrainer(None, spec["dtype"], lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY,
                          twin=TwinGPT(cfg.gpt_config(spec["dtype"])))
    idx, targets = batch_of(cfg)
    baseline = rss_mb()
    for _ in range(spec["steps"]):
        trainer.step(idx, targets)
    return {"peak_mb": peak_rss_mb(), "baseline_mb": baseline}
