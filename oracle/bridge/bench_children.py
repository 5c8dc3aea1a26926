"""The bodies of `python -m oracle bench`'s child processes on the NumPy side, each run in a fresh
interpreter by bench.py's `in_child("oracle.bridge.bench_children:<name>", spec, env)`, `spec` a JSON dict
(the configuration, dtype, path, threads, steps).

- `timing_child`: the reference and its twin from the same weights, one training step of each in turn
  (the only child here that imports torch, through bench_twin.py);
- `memory_child`: the NumPy side alone, for its peak resident memory (bench_twin.py has the torch side's);
- `profile_child`: exclusive time per layer type (`profile_reference`);
- `sampling_child`: generation with the KV cache against recomputing the context (`time_sampling`).

A step is forward, mean cross-entropy, backward and an AdamW step with nanoGPT's groups (weight decay
on matrices only). `matmul_peak` measures NumPy's GEMM rate in the same children.
"""

from __future__ import annotations

import gc
import math
import sys
import threading
import time

import numpy as np

from reference.fast import use_kernels
from reference.fast.pool import for_products, products_on_pool, set_blas_threads
from reference.model import GPT, KVCache
from reference.optim import AdamW

from .bench_config import BETAS, LR, WEIGHT_DECAY, BenchConfig, batch_of, peak_rss_mb, rss_mb


def make_reference(cfg: BenchConfig, dtype: str, seed: int = 0, kernels: str = "fast"):
    """The NumPy GPT on the `kernels` path and its AdamW, with nanoGPT's groups (decay matrices, not vectors)."""
    model = use_kernels(GPT(cfg.gpt_config(dtype), seed=seed), kernels)
    params = model.parameters()
    groups = [{"params": [p for p in params if p.data.ndim >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.data.ndim < 2], "weight_decay": 0.0}]
    return model, AdamW(groups, lr=LR, betas=BETAS)


def on_pool(spec: dict) -> bool:
    """Whether a child runs the products on the pool: the fast path with `--products pool`."""
    return spec["products"] == "pool" and spec.get("kernels", "fast") == "fast"


def reference_step(model: GPT, opt: AdamW, idx: np.ndarray, targets: np.ndarray) -> float:
    opt.zero_grad()
    loss = model.loss_and_backward(idx, targets)
    opt.step()
    return loss


def memory_child(spec: dict) -> dict:
    """Child body: `steps` training steps of the NumPy side alone; peak RSS, and RSS after setup."""
    set_blas_threads(spec["threads"])
    cfg = BenchConfig(**spec["cfg"])
    model, opt = make_reference(cfg, spec["dtype"], kernels=spec.get("kernels", "fast"))
    idx, targets = batch_of(cfg)
    baseline = rss_mb()
    with products_on_pool(on_pool(spec)):
        for _ in range(spec["steps"]):
            reference_step(model, opt, idx, targets)
    return {"peak_mb": peak_rss_mb(), "baseline_mb": baseline, "torch_imported": "torch" in sys.modules}


def timing_child(spec: dict) -> dict:
    """Child body: both sides from the same weights, one step each in turn; times, first losses, peaks."""
    from . import bench_twin                                   # torch, in this child only

    set_blas_threads(spec["threads"])
    bench_twin.set_threads(spec["threads"])
    cfg, dtype = BenchConfig(**spec["cfg"]), spec["dtype"]
    peaks = [matmul_peak(dtype, spec.get("peak_size", 2048))]
    model, opt = make_reference(cfg, dtype, kernels=spec.get("kernels", "fast"))
    twin = bench_twin.TwinTrainer(model, dtype, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    idx, targets = batch_of(cfg)
    ref_t, twin_t, ref_loss, twin_loss = [], [], [], []
    with products_on_pool(on_pool(spec)):
        for i in range(spec["warmup"] + spec["steps"]):       # alternate: both sides see the same machine state
            gc.collect()
            t0 = time.perf_counter()
            ref_loss.append(reference_step(model, opt, idx, targets))
            t1 = time.perf_counter()
            twin_loss.append(twin.step(idx, targets))
            t2 = time.perf_counter()
            if i >= spec["warmup"]:
                ref_t.append(t1 - t0)
                twin_t.append(t2 - t1)
    n_params = model.num_parameters()
    del model, opt, twin
    gc.collect()
    peaks.append(matmul_peak(dtype, spec.get("peak_size", 2048)))
    return {"numpy_times": ref_t, "torch_times": twin_t, "loss_first_step": {"numpy": ref_loss[0], "torch": twin_loss[0]},
            "n_params": n_params, "matmul_peaks": peaks, "torch_version": bench_twin.torch_version()}


def profile_child(spec: dict) -> list:
    """Child body: `profile_reference` with the benchmark's threads."""
    set_blas_threads(spec["threads"])
    with products_on_pool(on_pool(spec)):
        return profile_reference(BenchConfig(**spec["cfg"]), spec["dtype"], kernels=spec.get("kernels", "fast"))


def sampling_child(spec: dict) -> dict:
    """Child body: `time_sampling` with the benchmark's threads."""
    set_blas_threads(spec["threads"])
    cfg = BenchConfig(**spec["cfg"])
    with products_on_pool(on_pool(spec)):
        return time_sampling(cfg, spec["dtype"], cfg.block_size, kernels=spec.get("kernels", "fast"))


def matmul_peak(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """NumPy's GEMM throughput (GFLOP/s): the best of `repeats` n x n x n products in `dtype`, run
    both ways a step can run its products (one call threaded by BLAS; rows split over the pool with
    BLAS single-threaded, see functional.SPLIT_PRODUCTS), so the peak is the faster of the two."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype)

    def product() -> None:
        for_products(lambda lo, hi: np.matmul(a[lo:hi], b, out=out[lo:hi]), n)
    best = math.inf
    for on_pool in (False, True):
        with products_on_pool(on_pool):
            product()
            for _ in range(repeats):
                t0 = time.perf_counter()
                product()
                best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


# ---------------------------------------------------------------------------------------------
# Sampling: KV cache against recomputing the context


def time_sampling(cfg: BenchConfig, dtype: str, n_tokens: int, batch: int = 1, kernels: str = "fast") -> dict:
    """Greedy generation of n_tokens from a 1-token prompt, both ways; seconds per token."""
    model = use_kernels(GPT(cfg.gpt_config(dtype), seed=0), kernels)
    n_tokens = min(n_tokens, cfg.block_size)
    prompt = np.zeros((batch, 1), dtype=np.int64)

    def cached() -> np.ndarray:
        cache = KVCache(model.config, batch)
        idx, nxt = prompt, prompt
        for _ in range(n_tokens - 1):
            logits, _ = model.forward(nxt, kv_cache=cache)     # only the new token goes through
            nxt = logits[:, -1].argmax(-1)[:, None]
            idx = np.concatenate([idx, nxt], axis=1)
        return idx

    def recompute() -> np.ndarray:
        idx = prompt
        for _ in range(n_tokens - 1):
            logits, _ = model.forward(idx)                     # the whole context again
            idx = np.concatenate([idx, logits[:, -1].argmax(-1)[:, None]], axis=1)
        return idx

    times = {}
    for name, fn in (("cached", cached), ("recompute", recompute)):
        t0 = time.perf_counter()
        tokens = fn()
        times[name] = (time.perf_counter() - t0) / (n_tokens - 1)
        times[name + "_tokens"] = tokens
    return {"config": cfg.name, "dtype": dtype, "kernels": kernels, "T": n_tokens, "batch": batch,
            "cached_ms_per_token": 1e3 * times["cached"], "recompute_ms_per_token": 1e3 * times["recompute"],
            "speedup": times["recompute"] / times["cached"],
            "same_tokens": bool(np.array_equal(times["cached_tokens"], times["recompute_tokens"]))}


# ---------------------------------------------------------------------------------------------
# Profile: exclusive time per layer type, forward and backward


def profile_reference(cfg: BenchConfig, dtype: str, steps: int = 3,
                      kernels: str = "fast") -> list[tuple[str, float, float]]:
    """Exclusive seconds per step spent in each layer type's forward and backward, and the optimizer.

    Wraps the forward/backward of every layer class with a timer that subtracts the time of the
    layers it calls, so the rows add up to the step. Only calls on the main thread outside the pool's
    items are timed: with the products on the pool, attention's softmax runs inside the blocks of
    `attend` (on the pool's thread, or on this one running its share), and its time is in the
    attention rows. Returns [(name, seconds, share)], largest first.
    """
    from reference import attention, layers, loss, model as model_mod, optim
    from reference.fast import attention as fast_attention
    from reference.fast import layers as fast_layers
    from reference.fast import model as fast_model
    from reference.fast.pool import in_task

    totals: dict[str, float] = {}
    stack: list[float] = []                                    # child time accumulated per open frame

    def wrap(owner, name: str, label: str):
        original = getattr(owner, name)

        def timed(*a, **k):
            if threading.current_thread() is not threading.main_thread() or in_task():
                return original(*a, **k)                       # on the pool: counted in the caller's row
            stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                elapsed = time.perf_counter() - t0
                child = stack.pop()
                totals[label] = totals.get(label, 0.0) + elapsed - child
                if stack:
                    stack[-1] += elapsed
        setattr(owner, name, timed)
        return owner, name, original

    patched = []
    path = ({"layers": fast_layers, "attention": fast_attention, "model": fast_model} if kernels == "fast" else
            {"layers": layers, "attention": attention, "model": model_mod})   # the classes whose methods run
    targets = [(path["layers"].Linear, "Linear"), (path["layers"].LayerNorm, "LayerNorm"),
               (path["layers"].GELU, "GELU"), (path["layers"].Embedding, "Embedding"),
               (path["layers"].MLP, "MLP (glue)"), (path["attention"].CausalSelfAttention, "attention core"),
               (loss.CrossEntropyLoss, "cross-entropy"), (path["model"].Block, "Block (residuals)"),
               (model_mod.GPT, "GPT (glue)")]
    for cls, label in targets:
        patched.append(wrap(cls, "forward", f"{label} forward"))
        patched.append(wrap(cls, "backward", f"{label} backward"))
    patched.append(wrap(optim.Adam, "step", "AdamW step"))
    patched.append(wrap(optim.Adam, "zero_grad", "zero_grad"))
    # The elementwise kernels, inside the layers above (their time is taken out of the layer's row).
    elementwise = ((path["layers"], "gelu_and_grad", "GELU and GELU' (in MLP forward)"),
                   (path["attention"], "softmax", "softmax (in attention)"),
                   (path["attention"], "softmax_backward", "softmax backward (in attention)"))
    patched += [wrap(module, name, label) for module, name, label in elementwise if hasattr(module, name)]
    try:
        model, opt = make_reference(cfg, dtype, kernels=kernels)
        idx, tgt = batch_of(cfg)
        reference_step(model, opt, idx, tgt)                   # warm up (first-touch of buffers)
        totals.clear()
        t0 = time.perf_counter()
        for _ in range(steps):
            reference_step(model, opt, idx, tgt)
        total = (time.perf_counter() - t0) / steps
    finally:
        for owner, name, original in patched:
            setattr(owner, name, original)
    rows = sorted(((k, v / steps) for k, v in totals.items()), key=lambda r: -r[1])
    accounted = sum(v for _, v in rows)
    rows.append(("(outside any layer)", total - accounted))
    return [(k, v, v / total) for k, v in rows] + [("total step", total, 1.0)]
