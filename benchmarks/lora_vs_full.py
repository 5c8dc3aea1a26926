"""LoRA against full fine-tuning at GPT-2-small size: step time and peak memory, side by side.

    python benchmarks/lora_vs_full.py                   # GPT-2 small (124M), float32, B=4, T=256
    python benchmarks/lora_vs_full.py --tiny            # a smoke test of the script (seconds)

Each side runs in its own process (so each peak resident memory, VmHWM, is that side's alone), and
the sides alternate A B A B (--rounds): full, lora, full, lora. A side builds GPT(config) (GPT-2
small: V=50257, C=768, 12 layers, tied head, seed 0) on the fast path and times --steps steps of
forward, loss, backward and AdamW after one warm-up step:

* full: AdamW over every parameter (reference.optim.AdamW: two moments per weight);
* lora: apply_lora(rank, alpha, targets) first, AdamW over the adapters only. Every other
  parameter is frozen (apply_lora freezes them, as peft does): the embedding, the norms, the tied
  head and every Linear compute no weight gradient and store none, only dx.

Reports, per side, the median step time of each run with the spread (min-max over all timed steps),
and each run's peak memory. Writes benchmarks/results/lora_vs_full.md and .json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oracle.bridge.bench_config import peak_rss_mb as peak_mb  # noqa: E402  (VmHWM, MB)


def child(a) -> dict:
    import numpy as np

    from reference import GPT, GPTConfig
    from reference.fast import use_kernels
    from reference.fast.pool import THREADS
    from reference.lora import apply_lora, lora_parameters
    from reference.optim import AdamW

    if a.tiny:
        config = GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=64, dtype="float32")
    else:
        config = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, dtype="float32")
    model = GPT(config, seed=0)
    adapted = []
    if a.side == "lora":
        adapted = apply_lora(model, a.rank, a.alpha, targets=a.targets.split(","))
        params = list(lora_parameters(model).values())
    else:
        params = model.parameters()
    use_kernels(model, "fast")
    opt = AdamW(params, lr=1e-4, weight_decay=0.0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, config.vocab_size, (a.batch, a.seq))
    y = rng.integers(0, config.vocab_size, (a.batch, a.seq))
    times, losses = [], []
    for step in range(a.steps + 1):
        t0 = time.perf_counter()
        model.zero_grad()
        losses.append(model.loss_and_backward(x, y))
        opt.step()
        if step:                                             # step 0: warm-up
            times.append(time.perf_counter() - t0)
    return {"side": a.side, "times": times, "median_s": statistics.median(times), "peak_mb": peak_mb(),
            "trainable": sum(p.data.size for p in params), "parameters": model.num_parameters(),
            "adapted_layers": len(adapted), "first_loss": losses[0], "threads": THREADS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--targets", default="c_attn,c_proj,c_fc")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lora_vs_full"))
    p.add_argument("--child", choices=["full", "lora"], dest="side")
    a = p.parse_args(argv)
    if a.tiny:
        a.seq = min(a.seq, 64)
    if a.side:
        print(json.dumps(child(a)))
        return 0
    flags = [f"--batch={a.batch}", f"--seq={a.seq}", f"--steps={a.steps}", f"--rank={a.rank}",
             f"--alpha={a.alpha}", f"--targets={a.targets}"] + (["--tiny"] if a.tiny else [])
    runs = []
    for r in range(a.rounds):
        for side in ("full", "lora"):                        # A B A B
            out = subprocess.run([sys.executable, __file__, "--child", side, *flags], check=True,
                                 capture_output=True, text=True, cwd=ROOT).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r} {side}: median {runs[-1]['median_s']:.3f} s/step, peak {runs[-1]['peak_mb']:.0f} MB",
                  flush=True)
    load = os.getloadavg()
    result = {"command": "python benchmarks/lora_vs_full.py " + " ".join(argv or sys.argv[1:]), "runs": runs,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "load_average": load,
              "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **vars(a)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(a.out + ".md").write_text(report(result))
    print(report(result))
    return 0


def report(res: dict) -> str:
    by = {s: [r for r in res["runs"] if r["side"] == s] for s in ("full", "lora")}

    def cell(side):
        rs = by[side]
        all_t = [t for r in rs for t in r["times"]]
        med = statistics.median(all_t)
        return med, (f"{med:.3f} ({min(all_t):.3f}-{max(all_t):.3f}); runs: "
                     + ", ".join(f"{r['median_s']:.3f}" for r in rs)), statistics.median(r["peak_mb"] for r in rs)

    (tf, sf, mf), (tl, sl, ml) = cell("full"), cell("lora")
    f0, l0 = by["full"][0], by["lora"][0]
    return "\n".join([
        "# LoRA against full fine-tuning (float32, fast path)", "",
        f"`{res['command'].strip()}` on {res['machine']}, {res['time']}; threads {f0['threads']} (reference.fast.pool); "
        f"load average at the end {res['load_average'][0]:.1f} (1 minute). Sides alternate full, lora, ... "
        f"({res['rounds']} rounds), each in its own process; {res['steps']} timed steps per run after one warm-up.", "",
        f"Model: GPT(config), {f0['parameters']:,} parameters; batch {res['batch']} x {res['seq']} tokens. "
        f"LoRA: rank {res['rank']}, alpha {res['alpha']}, targets {res['targets']} ({l0['adapted_layers']} layers).", "",
        "| side | trainable parameters | s / step: median (min-max); each run's median | peak memory (MB) |",
        "|---|---:|---|---:|",
        f"| full fine-tuning | {f0['trainable']:,} | {sf} | {mf:.0f} |",
        f"| LoRA | {l0['trainable']:,} | {sl} | {ml:.0f} |",
        f"| LoRA / full | {l0['trainable'] / f0['trainable']:.4f} | {tl / tf:.2f} | {ml / mf:.2f} |", "",
        f"First losses equal (same weights, B = 0): {abs(f0['first_loss'] - l0['first_loss']) <= 1e-5 * abs(f0['first_loss'])}"
        f" ({f0['first_loss']:.6f}, {l0['first_loss']:.6f}).", ""])


if __name__ == "__main__":
    raise SystemExit(main())
