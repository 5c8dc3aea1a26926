"""Data-parallel training on this machine, and a projection for GPT-2 small on many.

    python benchmarks/data_parallel.py                  # N = 1 and N = 2, alternating, 3 rounds
    python benchmarks/data_parallel.py --rounds 5 --steps 40 --out /tmp/dp

Measured (each run its own `mpiexec -n N python -m reference train`, single-threaded ranks:
NUMPY_GPT_THREADS=OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=1):

* tokens/s of the training steps (the run's "end" record: steps x tokens per step / time inside steps, the
  all-reduce included) for N = 1 and N = 2 with the same global batch, runs alternating A B A B; the
  median and the spread (min..max) over rounds; scaling efficiency tokens/s(N) / (N x tokens/s(1));
* peak resident memory per rank (ru_maxrss) and the optimizer state each rank holds, plain data parallel
  against `--zero_stage 1`.

Projected (no measurement): GPT-2 small (124,439,808 parameters, float32) for N = 8 to 64 ranks over 10 and
100 Gb/s links: step time = compute + ring all-reduce, 2 (N - 1)/N x P x 4 bytes / bandwidth (this
implementation does not overlap the two); compute = the measured GPT-2-small step of our NumPy model, one
1024-token row per rank (benchmarks/results/gpt2_scale.json).

Writes PREFIX.md and PREFIX.json (default benchmarks/results/data_parallel). Needs the dist extra.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")
GPT2_PARAMS = 124_439_808
MODEL = ["--n_layer", "4", "--n_head", "4", "--n_embd", "128", "--block_size", "64", "--dtype", "float32",
         "--dropout", "0.0"]


def child(out: str, argv: list[str]) -> int:
    """One rank: the train command, then this rank's peak memory and optimizer bytes to OUT.rank<r>.json."""
    from reference.programs.cli import main
    from reference.programs.training import trainer as trainer_mod
    seen = {}
    run = trainer_mod.Trainer.run

    def keep(self, *a, **k):
        seen["trainer"] = self
        return run(self, *a, **k)
    trainer_mod.Trainer.run = keep
    rc = main(argv)
    if "trainer" not in seen:       # this process watched the rank's worker (reference/programs/rank_watch.py),
        return rc                   # which ran this function too and wrote the record
    t = seen["trainer"]
    if t.dist.zero is not None:
        opt_bytes = t.dist.zero.nbytes()
    else:
        opt_bytes = sum(v.nbytes for st in t.optimizer.state.values() for v in st.values() if hasattr(v, "nbytes"))
    rec = {"rank": t.dist.rank, "ranks": t.dist.size, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "optimizer_mb": opt_bytes / 2**20, "params": t.model.num_parameters(),
           "tokens_per_s": t.train_time and (t.step - (t.resumed_from or 0)) * t.config.batch_size
           * t.config.gradient_accumulation_steps * t.config.block_size / t.train_time}
    Path(f"{out}.rank{t.dist.rank}.json").write_text(json.dumps(rec))
    return rc


def launch(n: int, data: Path, work: Path, tag: str, args: list[str]) -> list[dict]:
    out = work / tag
    cmd = [sys.executable, __file__, "--child", str(out), "--", "train", "--data_dir", str(data), "--out_dir",
           str(out), "--no-progress", *MODEL, *args]
    if n > 1:
        cmd = [shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec"), "-n", str(n), *cmd]
    env = {**os.environ, "NUMPY_GPT_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(n)]


def prepare_data(work: Path) -> Path:
    import importlib.util
    spec = importlib.util.spec_from_file_location("data_prepare", ROOT / "data" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    raw = SHAKESPEARE.read_bytes() if SHAKESPEARE.exists() else (b"to be or not to be that is the question " * 20000)
    module.prepare(raw, work / "data", kind="char")
    return work / "data"


def projection(compute_s: float) -> list[dict]:
    rows = []
    for gbps in (10, 100):
        for n in (8, 16, 32, 64):
            comm = 2 * (n - 1) / n * GPT2_PARAMS * 4 / (gbps * 1e9 / 8)
            step = compute_s + comm
            rows.append({"link_gbps": gbps, "ranks": n, "compute_s": compute_s, "allreduce_s": comm, "step_s": step,
                         "tokens_per_s": n * 1024 / step, "efficiency": compute_s / step,
                         "adamw_mb_per_rank_plain": 2 * GPT2_PARAMS * 4 / 2**20,
                         "adamw_mb_per_rank_zero1": 2 * -(-GPT2_PARAMS // n) * 4 / 2**20})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=24, help="global batch rows per step (default 24)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_parallel"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.rest)
    work = Path(tempfile.mkdtemp(prefix="dp-bench-"))
    try:
        data = prepare_data(work)
        steps = ["--max_iters", str(args.steps), "--eval_interval", str(10 * args.steps), "--eval_iters", "1",
                 "--batch_size", str(args.batch)]
        tps = {1: [], 2: []}
        for r in range(args.rounds):                          # A B A B: the machine's load hits both alike
            for n in (1, 2):
                recs = launch(n, data, work, f"t{n}-{r}", steps)
                tps[n].append(recs[0]["tokens_per_s"])
                print(f"round {r}: N={n} {tps[n][-1]:,.0f} tokens/s", file=sys.stderr)
        memory = {z: launch(2, data, work, f"m{z}", steps[:1] + ["5"] + steps[2:] + ["--zero_stage", str(z)])
                  for z in (0, 1)}
        single = launch(1, data, work, "single", steps[:1] + ["5"] + steps[2:])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {n: statistics.median(v) for n, v in tps.items()}
    eff = med[2] / (2 * med[1])
    recorded = json.loads((ROOT / "benchmarks" / "results" / "gpt2_scale.json").read_text())
    one_thread = next(r for r in recorded["step-pair"] if r["threads"]["ours"] == 1)      # the one-thread rank
    compute_s = statistics.median(one_thread["step_s"]["ours"])
    proj = projection(compute_s)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "load_avg": os.getloadavg(), "threads_per_rank": 1, "global_batch_rows": args.batch, "block_size": 64,
              "steps": args.steps, "rounds": args.rounds, "tokens_per_s": tps, "median": med, "efficiency": eff,
              "memory": {"plain": memory[0], "zero1": memory[1], "one": single},
              "gpt2_compute_s": compute_s, "projection": proj}
    Path(args.out + ".json").write_text(json.dumps(result, indent=1))
    md = ["# Data parallel on MPI: N = 1 against N = 2, and a projection",
          "", f"`python benchmarks/data_parallel.py` on {result['machine']}, {result['when']}; load average "
          f"{', '.join(f'{x:.1f}' for x in result['load_avg'])} at the end (a shared machine: indicative).",
          f"Model: 4 layers, 128 wide, context 64, float32 ({memory[0][0]['params']:,} parameters); a step's batch "
          f"{args.batch} rows ({args.batch * 64} tokens) whatever N; {args.steps} steps a run; one thread per rank; "
          f"{args.rounds} rounds, N = 1 and N = 2 alternating.", "",
          "| N | tokens/s median | min .. max | efficiency tokens/s(N) / (N x tokens/s(1)) |", "|---:|---:|---:|---:|"]
    for n in (1, 2):
        md.append(f"| {n} | {med[n]:,.0f} | {min(tps[n]):,.0f} .. {max(tps[n]):,.0f} | "
                  f"{'1' if n == 1 else f'{eff:.2f}'} |")
    md += ["", "Memory per rank (5 steps, N = 2; peak resident memory, ru_maxrss; optimizer state held):", "",
           "| run | rank | peak MiB | AdamW moments MiB |", "|---|---:|---:|---:|"]
    for name, recs in (("one process", single), ("N=2 plain", memory[0]), ("N=2 ZeRO-1", memory[1])):
        for rec in recs:
            md.append(f"| {name} | {rec['rank']} | {rec['peak_mb']:.1f} | {rec['optimizer_mb']:.3f} |")
    ratio = max(r["optimizer_mb"] for r in memory[1]) / memory[0][0]["optimizer_mb"]
    md += ["", f"ZeRO-1's optimizer state per rank / plain data parallel's: {ratio:.4f} (1/N = 0.5).", "",
           f"## Projection: GPT-2 small ({GPT2_PARAMS:,} parameters, float32), one 1024-token row per rank", "",
           f"compute {compute_s:.1f} s a step (our measured GPT-2-small step, benchmarks/results/gpt2_scale.json); "
           "all-reduce 2 (N - 1)/N x P x 4 bytes over the link, not overlapped with compute.", "",
           "| link | N | all-reduce s | step s | tokens/s | efficiency | AdamW MiB/rank plain | ZeRO-1 |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in proj:
        md.append(f"| {row['link_gbps']} Gb/s | {row['ranks']} | {row['allreduce_s']:.3f} | {row['step_s']:.2f} | "
                  f"{row['tokens_per_s']:,.0f} | {row['efficiency']:.3f} | {row['adamw_mb_per_rank_plain']:.0f} | "
                  f"{row['adamw_mb_per_rank_zero1']:.1f} |")
    Path(args.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
