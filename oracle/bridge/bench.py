"""`python -m oracle bench`: time training steps of the NumPy GPT, on both paths, against its PyTorch twin.

For each configuration, dtype and path (`--kernels`: fast and textbook, reference/fast/kernels.py),
fresh child processes (`--runs`, one after another, their steps pooled; bench_children.py) build the
reference and its twin (bench_twin.py) with the same weights, and run one training step of each in
turn, with the same batch and the same number of threads (torch.set_num_threads = NumPy-GPT's own
pool, which also runs the matrix products, with OpenBLAS single-threaded:
fast.pool.products_on_pool, on the fast path only; the textbook path and `--products blas` leave the
products to OpenBLAS's threads, as many). A step is forward, mean cross-entropy, backward and an
AdamW step (nanoGPT's groups: weight decay on matrices only).

Reported per row: the median step time, tokens/s, achieved GFLOP/s and its fraction of NumPy's
matmul peak (a large GEMM in the same dtype, measured in the same children before and after the
steps, both ways the products can run, best value kept), the peak resident memory of each side
(each measured alone in a fresh child process), and the ratio of the two times.

Children start with OPENBLAS_THREAD_TIMEOUT=18 (--blas-thread-timeout): OpenBLAS's idle worker
threads then go to sleep after about 0.1 ms instead of spinning for about 0.1 s after every call,
which would take the cores from NumPy-GPT's elementwise threads (docs/performance.md measures
both; with the products on the pool OpenBLAS has no threads of its own while the steps run).
torch uses MKL and OpenMP, which this variable does not touch.

FLOPs per step use nanoGPT's / PaLM's count of the matmuls (forward 1x, backward 2x):

    FLOP/step = (6 N + 12 L T C) * B T

with N the parameters excluding the position table (the tied token table counts once, as the
LM head's matmul), L layers, T the context, C the width, B the batch. 6 N is 2 (multiply-add)
x 3 (forward, input gradient, weight gradient) per parameter and token; 12 L T C is the two
attention matmuls (q k^T and p v, full T x T as both sides compute them), forward and backward.

Also timed: generating T tokens with the KV cache (one token per forward) against recomputing the
whole context for every new token. torch is imported only in the children that time the twin:
the NumPy side's children (memory, profile, sampling) import neither torch nor the twins.

The results are printed; `--out PREFIX` also writes PREFIX.md and PREFIX.json, and `--record`
updates the recorded benchmarks/results/bench.md and .json (docs/performance.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from reference.programs.atomic import atomic_write
from reference.fast import KERNELS
from reference.fast.pool import blas_threads

from .bench_config import PRESETS, BenchConfig


def _whole(text: str, least: int) -> int:
    if not text.strip().isdigit() or int(text) < least:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}")
    return int(text)


def _at_least_one(text: str) -> int:
    return _whole(text, 1)


def _at_least_zero(text: str) -> int:
    return _whole(text, 0)


SPEC_KEYS = {"d": "n_embd", "layers": "n_layer", "heads": "n_head", "T": "block_size", "batch": "batch",
             "vocab": "vocab_size"}


def parse_config(text: str) -> BenchConfig:
    """A preset name, or `name:d=256,layers=4,heads=4,T=128,batch=8[,vocab=65]`. argparse.ArgumentTypeError
    names the key that is unknown, missing, not a whole number >= 1, or a model GPTConfig refuses."""
    if text in PRESETS:
        return BenchConfig(text, **PRESETS[text])
    name, _, spec = text.partition(":")
    usage = f"use a preset ({', '.join(PRESETS)}) or name:d=256,layers=4,heads=4,T=128,batch=8[,vocab=65]"
    fields = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in SPEC_KEYS:
            raise argparse.ArgumentTypeError(f"bad config {text!r}: {item!r} is not KEY=N with KEY one of "
                                             f"{', '.join(SPEC_KEYS)}; {usage}")
        value = value.strip()
        if not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"bad config {text!r}: {key.strip()}={value!r}, expected a whole "
                                             f"number >= 1; {usage}")
        fields[SPEC_KEYS[key.strip()]] = int(value)
    missing = [k for k, f in SPEC_KEYS.items() if f not in fields and k != "vocab"]
    if missing:
        raise argparse.ArgumentTypeError(f"bad config {text!r}: missing {', '.join(missing)}; {usage}")
    cfg = BenchConfig(name or "custom", **fields)
    try:
        cfg.gpt_config("float32")
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"bad config {text!r}: {e}") from None
    return cfg


def flops_per_step(cfg: BenchConfig, n_params: int) -> float:
    """(6 N + 12 L T C) B T, N without the position table (see the module docstring)."""
    n = n_params - cfg.block_size * cfg.n_embd
    return (6.0 * n + 12.0 * cfg.n_layer * cfg.block_size * cfg.n_embd) * cfg.tokens


# ---------------------------------------------------------------------------------------------
# Child processes


def child_env(threads: int, blas_thread_timeout: int) -> dict:
    """The environment of a benchmark child: every thread pool sized `threads`, the repo importable."""
    env = {**os.environ, "NUMPY_GPT_THREADS": str(threads)}
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    if blas_thread_timeout:
        env["OPENBLAS_THREAD_TIMEOUT"] = str(blas_thread_timeout)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def in_child(target: str, spec: dict, env: dict) -> dict:
    """Run `module:function`(spec) in a fresh interpreter and return its JSON result."""
    module, function = target.split(":")
    code = f"import json, sys; from {module} import {function} as f; print(json.dumps(f(json.loads(sys.argv[1]))))"
    out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env,
                         check=False)
    if out.returncode != 0:  # pragma: no cover - reported, not raised: the other rows are still worth writing
        return {"error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# The command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", type=parse_config, metavar="NAME|SPEC",
                        help="a preset (small, large, tiny) or name:d=256,layers=4,heads=4,T=128,batch=8; "
                             "repeat for several (default: small and large)")
    parser.add_argument("--dtype", nargs="+", choices=("float32", "float64"), default=["float32", "float64"],
                        help="one or both (default: float32 float64)")
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS),
                        help="the reference's paths to time, a row each (default: fast textbook; "
                             "reference/fast/kernels.py)")
    parser.add_argument("--steps", type=_at_least_one, default=7, help="timed steps per side (default 7; median reported)")
    parser.add_argument("--warmup", type=_at_least_zero, default=2, help="untimed steps per side first (default 2)")
    parser.add_argument("--threads", type=_at_least_one, default=None,
                        help="threads for both sides (default: numpy's BLAS thread count)")
    parser.add_argument("--runs", type=_at_least_one, default=3,
                        help="fresh timing processes per row, one after another; their timed steps are pooled "
                             "and the median reported (default 3)")
    parser.add_argument("--products", choices=("pool", "blas"), default="pool",
                        help="who runs NumPy's matrix products in parallel: NumPy-GPT's thread pool with BLAS "
                             "single-threaded (default, faster), or BLAS's own threads")
    parser.add_argument("--blas-thread-timeout", type=_at_least_zero, default=18, metavar="N",
                        help="OPENBLAS_THREAD_TIMEOUT for the children: idle OpenBLAS threads spin 2^N cycles "
                             "before sleeping (default 18, about 0.1 ms; 0 keeps OpenBLAS's default of 2^28)")
    parser.add_argument("--peak-size", type=_at_least_one, default=2048, metavar="N",
                        help="the N x N x N GEMM whose best rate is the matmul peak (default 2048)")
    parser.add_argument("--memory-steps", type=_at_least_zero, default=2,
                        help="steps each side runs alone in a child process for peak memory (default 2; 0 skips)")
    parser.add_argument("--sample-config", type=parse_config, default=None, metavar="NAME|SPEC",
                        help="config for the KV-cache sampling timing, generating block_size tokens (default: large)")
    parser.add_argument("--no-sample", action="store_true",
                        help="skip the KV-cache sampling timing (default: time it, on the first --kernels path)")
    parser.add_argument("--profile", action="store_true",
                        help="also report where the reference's step time goes (default: off)")
    parser.add_argument("--out", type=Path, default=None, metavar="PREFIX",
                        help="also write PREFIX.md and PREFIX.json (default: print only)")
    parser.add_argument("--record", action="store_true",
                        help=f"update the recorded results, {RECORDED}.md and .json (default: off)")


RECORDED = Path("benchmarks/results/bench")               # relative to the repository root


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("torch") is None:  # pragma: no cover - the test extra installs torch
        print("error: the benchmark needs torch for the twin.\n"
              "Install it with: pip install torch==2.13.0 && pip install -e '.[test]'", file=sys.stderr)
        return 2
    if args.out is not None:                                   # refused before minutes of timing, not after
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            print(f"error: --out {args.out}: cannot create its directory {args.out.parent}: {e.strerror or e}",
                  file=sys.stderr)
            return 2
    configs = args.config or [parse_config("small"), parse_config("large")]
    threads = args.threads or blas_threads()
    env = child_env(threads, args.blas_thread_timeout)
    rows = []
    for cfg in configs:
        for dtype in args.dtype:
            for kernels in args.kernels:
                rows.append(bench_row(cfg, dtype, args, threads, env, kernels))
                print(format_row(rows[-1]), flush=True)

    profiles = {}
    if args.profile:
        for cfg in configs:
            for dtype in args.dtype:
                for kernels in args.kernels:
                    spec = {"cfg": asdict(cfg), "dtype": dtype, "threads": threads, "products": args.products,
                            "kernels": kernels}
                    prof = profiles[f"{cfg.name} {dtype} {kernels}"] = in_child("oracle.bridge.bench_children:profile_child", spec, env)
                    print(f"\nwhere the reference's step goes: {cfg.name} ({cfg.label()}), {dtype}, {kernels} path")
                    for name, sec, share in prof:
                        print(f"  {name:<34} {1e3 * sec:9.1f} ms  {100 * share:5.1f}%")

    sampling = None
    if not args.no_sample:
        scfg = args.sample_config or parse_config("large")
        spec = {"cfg": asdict(scfg), "dtype": "float32", "threads": threads, "products": args.products,
                "kernels": args.kernels[0]}
        sampling = in_child("oracle.bridge.bench_children:sampling_child", spec, env)
        print(f"sampling {scfg.name}, T {sampling['T']}: KV cache {sampling['cached_ms_per_token']:.2f} ms/token, "
              f"recompute {sampling['recompute_ms_per_token']:.2f} ms/token, speedup {sampling['speedup']:.1f}x",
              flush=True)

    peaks = {dt: max(p for r in rows if r["dtype"] == dt for p in r["matmul_peaks"]) for dt in args.dtype}
    for r in rows:                                             # fractions of the best peak seen in the run
        r["numpy_peak_frac"] = r["numpy_gflops"] / peaks[r["dtype"]]
        r["torch_peak_frac"] = r["torch_gflops"] / peaks[r["dtype"]]
    environment = {"python": platform.python_version(), "numpy": np.__version__,
                   "torch": rows[0]["torch_version"], "machine": platform.machine(),
                   "processor": _cpu_name(), "cores": os.cpu_count(), "threads": threads,
                   "openblas_thread_timeout": args.blas_thread_timeout or "default", "products": args.products,
                   "runs": args.runs, "matmul_peak_size": args.peak_size,
                   "matmul_peak_gflops": peaks, "date": time.strftime("%Y-%m-%d %H:%M")}
    result = {"env": environment, "flop_formula": "(6 N + 12 L T C) B T per step, N = parameters without wpe",
              "rows": rows, "sampling": sampling, "profiles": profiles}
    markdown = to_markdown(result)
    print("\n" + markdown)
    print("NumPy matmul peak " + ", ".join(f"{dt} {g:.0f} GFLOP/s" for dt, g in peaks.items()))
    root = Path(__file__).resolve().parents[2]
    for prefix in ([args.out] if args.out else []) + ([root / RECORDED] if args.record else []):
        try:
            prefix.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(prefix.with_suffix(".json"), (json.dumps(result, indent=2) + "\n").encode())
            atomic_write(prefix.with_suffix(".md"), markdown.encode())
        except OSError as e:
            print(f"error: cannot write the results to {prefix}.md/.json: {e.strerror or e} "
                  f"({e.filename or prefix}); the table is printed above", file=sys.stderr)
            return 1
        print(f"wrote {prefix.with_suffix('.md')} and {prefix.with_suffix('.json')}")
    return 0


def bench_row(cfg: BenchConfig, dtype: str, args, threads: int, env: dict, kernels: str = "fast") -> dict:
    spec = {"cfg": asdict(cfg), "dtype": dtype, "threads": threads, "products": args.products,
            "steps": args.steps, "warmup": args.warmup, "kernels": kernels, "peak_size": args.peak_size}
    timing = pooled([in_child("oracle.bridge.bench_children:timing_child", spec, env) for _ in range(args.runs)])
    flops = flops_per_step(cfg, timing["n_params"])
    ref_s, twin_s = statistics.median(timing["numpy_times"]), statistics.median(timing["torch_times"])
    row = {"config": cfg.name, "label": cfg.label(), "dtype": dtype, "kernels": kernels, "tokens_per_step": cfg.tokens,
           "gflop_per_step": flops / 1e9, "numpy_s": ref_s, "torch_s": twin_s, "ratio": ref_s / twin_s,
           "numpy_tok_s": cfg.tokens / ref_s, "torch_tok_s": cfg.tokens / twin_s,
           "numpy_gflops": flops / ref_s / 1e9, "torch_gflops": flops / twin_s / 1e9,
           "numpy_min_s": min(timing["numpy_times"]), "torch_min_s": min(timing["torch_times"]), **timing}
    if args.memory_steps > 0:
        mem_spec = {**spec, "steps": args.memory_steps}
        row["numpy_mem"] = in_child("oracle.bridge.bench_children:memory_child", mem_spec, env)
        row["torch_mem"] = in_child("oracle.bridge.bench_twin:memory_child", mem_spec, env)
    return row


def pooled(runs: list[dict]) -> dict:
    """The timing children of one row as one: their step times and peaks pooled, in run order (a
    machine busy for a few seconds then moves the median by a step or two, not by a whole run)."""
    first = runs[0]
    return {**first, "runs": len(runs), **{key: [x for run in runs for x in run[key]]
                                          for key in ("numpy_times", "torch_times", "matmul_peaks")}}


def _mb(mem: dict | None, baseline: bool = False) -> str:
    """'peak' or 'peak (baseline)' in MB; '-' when not measured or when the child failed."""
    if not mem or "peak_mb" not in mem:
        return "-"
    return f"{mem['peak_mb']:.0f} ({mem['baseline_mb']:.0f})" if baseline else f"{mem['peak_mb']:.0f}"


def format_row(r: dict) -> str:
    peak = max(r["matmul_peaks"])
    return (f"{r['config']:<6} {r['dtype']} {r.get('kernels', 'fast')}: numpy {r['numpy_s']:.3f} s/step, torch {r['torch_s']:.3f} s/step, "
            f"ratio {r['ratio']:.2f}x, {r['numpy_gflops']:.0f} GFLOP/s ({100 * r['numpy_gflops'] / peak:.0f}% of "
            f"this row's peak {peak:.0f}), "
            f"peak RSS numpy {_mb(r.get('numpy_mem'))} MB, torch {_mb(r.get('torch_mem'))} MB")


def _cpu_name() -> str:
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:  # pragma: no cover - not Linux
        found = None
    return found.group(1).strip() if found else (platform.processor() or "unknown")


def to_markdown(result: dict) -> str:
    env = result["env"]
    peaks = ", ".join(f"{dt} {g:.0f} GFLOP/s" for dt, g in env["matmul_peak_gflops"].items())
    lines = [
        "# Benchmark: NumPy reference against the PyTorch twin (eager, CPU)",
        "",
        f"{env['processor']}, {env['cores']} cores, {env['threads']} threads on both sides; "
        f"Python {env['python']}, NumPy {env['numpy']}, torch {env['torch']}; {env['date']}.",
        f"NumPy's measured matmul peak ({env.get('matmul_peak_size', 2048)}^3 GEMM, best of the measurements taken around each row): {peaks}. "
        f"OPENBLAS_THREAD_TIMEOUT: {env['openblas_thread_timeout']}.",
        "",
        "One step = forward + mean cross-entropy + backward + AdamW. FLOP/step = (6 N + 12 L T C) B T "
        "(N: parameters without the position table). Median of the timed steps; the two sides alternate "
        f"in fresh processes, {env.get('runs', 1)} per row one after another, their steps pooled. "
        "Peak memory: peak RSS (VmHWM) of a fresh process running that side alone, "
        "including the interpreter and libraries (baseline after setup in brackets).",
        "",
        "| config | dtype | kernels | NumPy s/step | PyTorch s/step | ratio | NumPy tok/s | NumPy GFLOP/s "
        "| % of matmul peak (NumPy / PyTorch) | peak RSS MB NumPy | peak RSS MB PyTorch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    for r in result["rows"]:
        lines.append(f"| {r['label']} | {r['dtype']} | {r.get('kernels', 'fast')} | {r['numpy_s']:.3f} | {r['torch_s']:.3f} | {r['ratio']:.2f}x "
                     f"| {r['numpy_tok_s']:,.0f} | {r['numpy_gflops']:.0f} "
                     f"| {100 * r['numpy_peak_frac']:.0f}% / {100 * r['torch_peak_frac']:.0f}% "
                     f"| {_mb(r.get('numpy_mem'), True)} | {_mb(r.get('torch_mem'), True)} |")
    s = result.get("sampling")
    if s:
        lines += ["", f"Sampling ({s['config']}, {s['dtype']}, {s.get('kernels', 'fast')} path, batch {s['batch']}, {s['T']} tokens from a 1-token "
                      "prompt, greedy):", "",
                  "| method | ms/token | speedup |", "|---|---|---|",
                  f"| recompute the whole context per token | {s['recompute_ms_per_token']:.2f} | 1.0x |",
                  f"| KV cache, one token per forward | {s['cached_ms_per_token']:.2f} | {s['speedup']:.1f}x |",
                  "", f"Both methods produced the same tokens: {'yes' if s['same_tokens'] else 'no'}."]
    for key, prof in result.get("profiles", {}).items():
        lines += ["", f"Where the NumPy step goes ({key}): exclusive time per layer type", "",
                  "| part | ms/step | share |", "|---|---|---|"]
        lines += [f"| {name} | {1e3 * sec:.1f} | {100 * share:.1f}% |" for name, sec, share in prof]
    return "\n".join(lines) + "\n"
