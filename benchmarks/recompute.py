"""Activation checkpointing at GPT-2-small size: peak memory and step time, ours and PyTorch's, with and without.

    python benchmarks/recompute.py                       # GPT-2 small, V=50257, T=1024, B=4 then B=1, float32
    python benchmarks/recompute.py --tiny                # a smoke test of the script (seconds)
    python benchmarks/recompute.py --report-only         # rewrite the .md from the .json

One random GPT-2 small (transformers' `GPT2Config()` defaults, dropout off, seed 0) is saved with
`save_pretrained`; four sides train on the same weights and the same (B, T) batch, each in a fresh child
process, so each peak resident memory (VmHWM, as oracle/bridge/bench_config.py's peak_rss_mb reads it) is
that side's alone:

* ours: reference.programs.hf.from_pretrained on the fast path (`train`'s default), AdamW;
* ours, recompute: the same with `model.recompute = True` (docs/checkpointing.md);
* torch eager: transformers' GPT2LMHeadModel, F.cross_entropy, torch.optim.AdamW;
* torch checkpoint: the same after `gradient_checkpointing_enable()` (torch.utils.checkpoint around each
  block, non-reentrant).

A step is zero_grad, forward, loss, backward and the AdamW step. Each child runs --warmup steps, then
--steps timed ones; the sides run one after the other in a round (A B C D), --rounds rounds per batch size
(A B C D A B C D): the load of a shared machine falls on all four alike. Reported: the median step time
and its spread (min-max over every timed step of every round), the peak memory (the largest over the
rounds), the first losses (ours and torch's must agree), the threads, and /proc/loadavg before and after.
Results go to benchmarks/results/recompute.md and .json (written after every child, so a run cut short
keeps what it measured). Needs torch and transformers. Never run by the tests: timings are not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oracle.bridge.bench_config import peak_rss_mb as peak_mb  # noqa: E402  (VmHWM, MB)

SIDES = ("ours", "ours-recompute", "torch", "torch-checkpoint")
LABELS = {"ours": "ours (fast path)", "ours-recompute": "ours, `recompute=True`", "torch": "torch eager",
          "torch-checkpoint": "torch, `gradient_checkpointing_enable()`"}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:  # pragma: no cover - not Linux
        return "?"


def hf_config(tiny: bool):
    from transformers import GPT2Config
    off = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if tiny:
        return GPT2Config(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=4, **off)
    return GPT2Config(**off)                                   # GPT-2 small: 124M, V=50257, T=1024


def batch(a, vocab: int, block: int):
    import numpy as np
    x = np.random.default_rng(2).integers(0, vocab, (a.batch, block + 1))
    return x[:, :-1], x[:, 1:]


# ------------------------------------------------------------------------------------------ children


def child_make(a) -> dict:
    import torch
    from transformers import GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(hf_config(a.tiny))
    model.save_pretrained(a.dir)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def child_ours(a, recompute: bool) -> dict:
    from reference.fast import use_kernels
    from reference.fast.pool import THREADS, products_on_pool
    from reference.optim import AdamW
    from reference.programs.hf import from_pretrained
    model = use_kernels(from_pretrained(a.dir, dtype="float32"), "fast")
    model.recompute = recompute
    decay = [p for p in model.parameters() if p.data.ndim >= 2]
    other = [p for p in model.parameters() if p.data.ndim < 2]
    opt = AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}], lr=1e-5)
    x, y = batch(a, model.config.vocab_size, model.config.block_size)
    before = peak_mb()
    times, losses = [], []
    with products_on_pool():
        for _ in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            model.zero_grad()
            losses.append(model.loss_and_backward(x, y))
            opt.step()
            times.append(time.perf_counter() - t0)
    return {"step_s": times[a.warmup:], "first_loss": losses[0], "peak_mb": peak_mb(), "before_mb": before,
            "threads": THREADS}


def child_torch(a, checkpoint: bool) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import GPT2LMHeadModel
    torch.set_num_threads(a.threads)
    model = GPT2LMHeadModel.from_pretrained(a.dir, dtype=torch.float32).train()
    if checkpoint:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-5)
    x, y = (torch.as_tensor(t) for t in batch(a, model.config.vocab_size, model.config.n_positions))
    before = peak_mb()
    times, losses = [], []
    for _ in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        del logits
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    return {"step_s": times[a.warmup:], "first_loss": losses[0], "peak_mb": peak_mb(), "before_mb": before,
            "threads": torch.get_num_threads(), "attn_implementation": model.config._attn_implementation,
            "checkpointing": model.is_gradient_checkpointing}


CHILDREN = {"make": child_make, "ours": lambda a: child_ours(a, False), "ours-recompute": lambda a: child_ours(a, True),
            "torch": lambda a: child_torch(a, False), "torch-checkpoint": lambda a: child_torch(a, True)}


# ------------------------------------------------------------------------------------------ parent


def spawn(name: str, a, batch_size: int = 1) -> dict:
    argv = [sys.executable, __file__, "--child", name, "--dir", a.dir, "--batch", str(batch_size),
            "--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(a.threads)]
    argv += ["--tiny"] if a.tiny else []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMPY_GPT_THREADS": str(a.threads)}
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"child {name} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {name} B={batch_size}: {result}", file=sys.stderr, flush=True)
    return result


def summary(runs: list[dict]) -> dict:
    times = [t for r in runs for t in r["step_s"]]
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times),
            "peak_mb": max(r["peak_mb"] for r in runs), "first_loss": runs[0]["first_loss"]}


def report(r: dict) -> str:
    tiny = " --tiny" if r.get("tiny") else ""
    lines = [
        "# Activation checkpointing at GPT-2-small size: ours and PyTorch's (float32)",
        "",
        f"`python benchmarks/recompute.py{tiny}` on {r['machine']}, {r['date']}.",
        f"Threads: ours {r['threads']} (NUMPY_GPT_THREADS, matrix products on the pool), torch {r['threads']} "
        f"(torch.set_num_threads); transformers' attention: {r.get('attn_implementation', '?')}.",
        f"Load (/proc/loadavg, 1, 5, 15 minutes): {r['load_before']} before, {r.get('load_after', '?')} after. "
        "The machine was shared with other jobs: the sides ran in turn (A B C D per round), so the load fell on all "
        "alike, but the times are indicative, not a controlled measurement.",
        "",
        f"Model: a random GPT-2 small made by transformers (`GPT2Config()`, dropout off, seed 0), "
        f"{r['parameters']:,} parameters, T={r['block_size']}. A step: zero_grad, forward, loss, backward, AdamW. "
        f"Each child process runs {r['warmup']} warm-up step(s) then {r['steps']} timed step(s); "
        "time: the median over every timed step of every round, and the spread (min-max); peak: the process's "
        "VmHWM (the largest over the rounds), weights, gradients and AdamW's moments included. The torch sides "
        "drop their logits before the backward (`del logits`), as ours does: a leaner eager baseline than "
        "benchmarks/gpt2_scale.py's, which keeps them alive through the backward.",
        "",
    ]
    if r.get("note"):
        lines += [r["note"], ""]
    for b in r["batches"]:
        rows = r["results"].get(str(b), {})
        if not rows:
            continue
        rounds = max(len(v) for v in rows.values())
        lines += [f"## B = {b} (x {r['block_size']} tokens), {rounds} round(s)", "",
                  "| side | step (s), median | spread (s) | timed steps | peak MB | peak / torch eager | "
                  "time / its side without | first loss |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        s = {k: summary(v) for k, v in rows.items()}
        eager = s.get("torch", {}).get("peak_mb")
        for side in SIDES:
            if side not in s:
                continue
            x = s[side]
            base = {"ours-recompute": "ours", "torch-checkpoint": "torch"}.get(side)
            ratio_t = f"{x['median_s'] / s[base]['median_s']:.2f}" if base in s else ""
            ratio_m = f"{x['peak_mb'] / eager:.2f}" if eager else ""
            lines.append(f"| {LABELS[side]} | {x['median_s']:.2f} | {x['min_s']:.2f}-{x['max_s']:.2f} | {x['n']} | "
                         f"{x['peak_mb']:.0f} | {ratio_m} | {ratio_t} | {x['first_loss']:.6f} |")
        if "ours-recompute" in s and eager:
            x = s["ours-recompute"]
            lines += ["", f"Target: ours with recompute at most half of torch eager's peak, for at most "
                      f"+40% step time. Here: {x['peak_mb'] / eager:.2f} of torch eager's peak"
                      + (f", {100 * (x['median_s'] / s['ours']['median_s'] - 1):+.0f}% step time against ours "
                         "without." if "ours" in s else ".")]
        lines.append("")
    for extra in r.get("more_runs", []):                       # further runs, added to the .json by hand
        lines += ["---", "", report(extra).replace("\n# ", "\n## ").replace("\n## B", "\n### B")]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", help="the GPT-2 model directory to use (made there if it has no config.json)")
    p.add_argument("--tiny", action="store_true", help="a tiny model: a smoke test of this script")
    p.add_argument("--batches", default="4,1", help="batch sizes, in the order run (default 4,1)")
    p.add_argument("--rounds", default="1,2", help="rounds per batch size, in the same order (default 1,2)")
    p.add_argument("--steps", type=int, default=1, help="timed steps per child (default 1)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up steps per child (default 1)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="threads of both sides (default: the cores this process may use)")
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "recompute"),
                   help="results path without extension (.md and .json are written)")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json")
    a = p.parse_args(argv)
    if a.report_only:
        Path(a.out + ".md").write_text(report(json.loads(Path(a.out + ".json").read_text())))
        return 0
    if a.child:
        print(json.dumps(CHILDREN[a.child](a)))
        return 0
    tmp = None
    if a.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gpt2-small-")
        a.dir = tmp.name
    batches = [int(b) for b in a.batches.split(",")]
    rounds = [int(n) for n in a.rounds.split(",")]
    r = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "tiny": a.tiny, "threads": a.threads,
         "steps": a.steps, "warmup": a.warmup, "batches": batches, "load_before": loadavg(), "results": {}}
    r["parameters"] = spawn("make", a)["parameters"] if not (Path(a.dir) / "config.json").is_file() else None
    cfg = json.loads((Path(a.dir) / "config.json").read_text())
    r["parameters"] = r["parameters"] or cfg.get("parameters")
    r["block_size"] = cfg["n_positions"]

    def save() -> None:
        Path(a.out + ".json").write_text(json.dumps(r, indent=1) + "\n")
        Path(a.out + ".md").write_text(report(r))
    for b, n in zip(batches, rounds + [rounds[-1]] * len(batches)):
        rows = r["results"].setdefault(str(b), {})
        for _ in range(n):
            for side in SIDES:
                out = spawn(side, a, b)
                rows.setdefault(side, []).append(out)
                if "attn_implementation" in out:
                    r["attn_implementation"] = out["attn_implementation"]
                r["load_after"] = loadavg()
                save()
    print(report(r))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
