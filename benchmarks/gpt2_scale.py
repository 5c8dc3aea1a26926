"""GPT-2 small at full size: our NumPy GPT against transformers' GPT2LMHeadModel, in float32, side by side.

    python benchmarks/gpt2_scale.py                     # 124M parameters, V=50257, T=1024
    python benchmarks/gpt2_scale.py --tiny              # a smoke test of the script (seconds)
    python benchmarks/gpt2_scale.py --dir DIR           # reuse a model directory (else a temporary one)

One random GPT-2-small (transformers' GPT2Config() defaults, seed 0) is saved with `save_pretrained`.

Speed is measured side by side, as `python -m oracle bench` does: one process loads both models and
alternates them, A B A B, for several rounds (--rounds, --step-rounds), so both sides meet the same
state of the machine; the report gives the median and the spread (lowest to highest) of each side and
of the per-round ratio. It is measured twice: with one thread each (NUMPY_GPT_THREADS, OpenBLAS, OpenMP
and MKL at 1, torch.set_num_threads(1)) and with all threads each (every one of those at the CPU
count). The machine's load average (/proc/loadavg) is read before and after each phase.

* sampling: greedy decoding of --new-tokens tokens after a --prompt-tokens prompt with the KV cache,
  ours (reference.programs.sampling.generation.generate) against transformers' `generate` with its
  cache and against transformers' model stepped by hand with `past_key_values`. The ms per token is
  (time for N tokens - time for 1 token) / (N - 1) within one round: the prefill is not counted;
* fine-tuning step: forward, loss, backward and AdamW step on a (B, 1024) batch (B = --step-batch),
  ours against transformers' model with torch.optim.AdamW (same weights, same batch, dropout off; the
  first losses must agree); one warm-up step each, then --step-rounds rounds of one step each.

Memory is measured apart, each side alone in its own process (all threads), so each peak resident
memory (VmHWM) is that side's alone: the import (reference.programs.hf.from_pretrained, tensor by
tensor), one sampling run, one fine-tuning step.

Writes benchmarks/results/gpt2_scale.md and .json (or --out). Needs the hf extra (torch, transformers).
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


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (/proc/loadavg)."""
    return [round(x, 2) for x in os.getloadavg()]


def hf_config(tiny: bool):
    from transformers import GPT2Config
    if tiny:
        return GPT2Config(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0,
                          embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)   # GPT-2 small: 124M, V=50257, T=1024


# ------------------------------------------------------------------------------------------ the two sides


def _prompt(a, vocab: int):
    import numpy as np
    return np.random.default_rng(1).integers(0, vocab, a.prompt_tokens)


def _batch(a, vocab: int, block: int):
    import numpy as np
    rng = np.random.default_rng(2)
    x = rng.integers(0, vocab, (a.step_batch, block + 1))
    return x[:, :-1], x[:, 1:]


def ours_model(a):
    from reference.programs.hf import from_pretrained
    return from_pretrained(a.dir, dtype="float32")


def hf_model(a, train: bool):
    import torch
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(a.dir, dtype=torch.float32)
    return model.train() if train else model.eval()


def ours_decoder(a, model):
    """n -> (seconds, tokens): our `generate`, greedy, with the KV cache."""
    from reference.programs.sampling.generation import generate
    ids = _prompt(a, model.config.vocab_size)

    def run(n: int):
        t0 = time.perf_counter()
        out = generate(model, ids, n, greedy=True)
        return time.perf_counter() - t0, out[-n:].tolist()
    return run


def hf_generate_decoder(a, model):
    """n -> (seconds, tokens): transformers' `generate`, greedy, with its cache."""
    import torch
    ids = torch.as_tensor(_prompt(a, model.config.vocab_size))[None]
    kw = dict(do_sample=False, use_cache=True, pad_token_id=0)

    def run(n: int):
        with torch.no_grad():
            t0 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
            return time.perf_counter() - t0, out[0, -n:].tolist()
    return run


def hf_loop_decoder(a, model):
    """n -> (seconds, tokens): transformers' model stepped by hand with past_key_values, no `generate`."""
    import torch
    ids = torch.as_tensor(_prompt(a, model.config.vocab_size))[None]

    def run(n: int):
        with torch.no_grad():
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            past, nxt, toks = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True), []
            for _ in range(n - 1):
                toks.append(int(nxt))
                out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            return time.perf_counter() - t0, toks + [int(nxt)]
    return run


def ours_stepper(a, model):
    """() -> (seconds, loss): one forward, loss, backward and AdamW step of our model."""
    from reference.optim import AdamW
    decay = [p for p in model.parameters() if p.data.ndim >= 2]
    other = [p for p in model.parameters() if p.data.ndim < 2]
    opt = AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}], lr=1e-5)
    x, y = _batch(a, model.config.vocab_size, model.config.block_size)

    def step():
        t0 = time.perf_counter()
        model.zero_grad()
        loss = model.loss_and_backward(x, y)
        opt.step()
        return time.perf_counter() - t0, float(loss)
    return step


def hf_stepper(a, model):
    """() -> (seconds, loss): the same step of transformers' model with torch.optim.AdamW."""
    import torch
    import torch.nn.functional as F
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-5)
    x, y = (torch.as_tensor(t) for t in _batch(a, model.config.vocab_size, model.config.n_positions))

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        return time.perf_counter() - t0, loss.item()
    return step


def _threads_info() -> dict:
    import torch
    from reference.fast.pool import THREADS, blas_threads
    return {"ours": THREADS, "ours_blas": blas_threads(), "torch": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------ children


def child_make(a) -> dict:
    import torch
    from transformers import GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(hf_config(a.tiny))
    model.save_pretrained(a.dir)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def child_import(a) -> dict:
    """Memory: our import alone."""
    from reference.programs.hf import from_pretrained
    base = peak_mb()
    t0 = time.perf_counter()
    model = from_pretrained(a.dir, dtype="float32")
    dt = time.perf_counter() - t0
    weights = sum(p.data.nbytes for p in model.parameters()) / 2**20
    return {"seconds": dt, "peak_mb": peak_mb(), "before_mb": base, "weights_mb": weights,
            "parameters": model.num_parameters(), "vocab_size": model.config.vocab_size,
            "block_size": model.config.block_size}


def child_mem_ours_sample(a) -> dict:
    from reference.fast.pool import products_on_pool
    model = ours_model(a)
    with products_on_pool():
        _, tokens = ours_decoder(a, model)(a.new_tokens)
    return {"peak_mb": peak_mb(), "tokens": tokens}


def child_mem_hf_sample(a) -> dict:
    model = hf_model(a, train=False)
    _, tokens = hf_generate_decoder(a, model)(a.new_tokens)
    return {"peak_mb": peak_mb(), "tokens": tokens, "attn_implementation": model.config._attn_implementation}


def child_mem_ours_step(a) -> dict:
    from reference.fast.pool import products_on_pool
    model = ours_model(a)
    with products_on_pool():
        _, loss = ours_stepper(a, model)()
    return {"peak_mb": peak_mb(), "first_loss": loss}


def child_mem_hf_step(a) -> dict:
    _, loss = hf_stepper(a, hf_model(a, train=True))()
    return {"peak_mb": peak_mb(), "first_loss": loss}


def child_sample_pair(a) -> dict:
    """Speed: ours, transformers' generate and the hand-stepped loop in one process, alternated."""
    import torch
    from reference.fast.pool import products_on_pool
    torch.set_num_threads(a.threads)
    sides = {"ours": ours_decoder(a, ours_model(a)), "hf_generate": None, "hf_loop": None}
    theirs = hf_model(a, train=False)
    sides["hf_generate"], sides["hf_loop"] = hf_generate_decoder(a, theirs), hf_loop_decoder(a, theirs)
    ms = {k: [] for k in sides}
    prefill = {k: [] for k in sides}
    tokens = {}
    with products_on_pool():
        for run in sides.values():                               # warm-up
            run(2)
        for _ in range(a.rounds):                                # A B C A B C ...
            for name, run in sides.items():
                t1, _ = run(1)
                tn, tokens[name] = run(a.new_tokens)
                ms[name].append(1e3 * (tn - t1) / (a.new_tokens - 1))
                prefill[name].append(1e3 * t1)
    return {"ms_per_token": ms, "prefill_ms": prefill, "tokens": tokens, "threads": _threads_info(),
            "attn_implementation": theirs.config._attn_implementation}


def child_step_pair(a) -> dict:
    """Speed: our fine-tuning step and transformers' in one process, alternated."""
    import torch
    from reference.fast.pool import products_on_pool
    torch.set_num_threads(a.threads)
    sides = {"ours": ours_stepper(a, ours_model(a)), "hf": hf_stepper(a, hf_model(a, train=True))}
    seconds = {k: [] for k in sides}
    losses = {k: [] for k in sides}
    with products_on_pool():
        for i in range(1 + a.step_rounds):                       # one warm-up step each, then A B A B ...
            for name, step in sides.items():
                dt, loss = step()
                losses[name].append(loss)
                if i:
                    seconds[name].append(dt)
    return {"step_s": seconds, "losses": losses, "threads": _threads_info()}


CHILDREN = {"make": child_make, "import": child_import, "mem-ours-sample": child_mem_ours_sample,
            "mem-hf-sample": child_mem_hf_sample, "mem-ours-step": child_mem_ours_step,
            "mem-hf-step": child_mem_hf_step, "sample-pair": child_sample_pair, "step-pair": child_step_pair}


# ------------------------------------------------------------------------------------------ parent


def child_env(threads: int) -> dict:
    """Every thread pool of a child sized `threads`; the repository importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMPY_GPT_THREADS": str(threads)}
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def spawn(name: str, a, threads: int) -> dict:
    argv = [sys.executable, __file__, "--child", name, "--dir", a.dir, "--prompt-tokens", str(a.prompt_tokens),
            "--new-tokens", str(a.new_tokens), "--rounds", str(a.rounds), "--step-rounds", str(a.step_rounds),
            "--step-batch", str(a.step_batch), "--threads", str(threads)]
    argv += ["--tiny"] if a.tiny else []
    before, t0 = loadavg(), time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=child_env(threads))
    if out.returncode:
        raise SystemExit(f"child {name} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(load_before=before, load_after=loadavg(), wall_s=time.perf_counter() - t0)
    print(f"  {name} ({threads} threads): {json.dumps(result)[:300]}", file=sys.stderr)
    return result


def spread(xs: list[float], fmt: str) -> str:
    """'median (lowest to highest)' of xs."""
    return f"{format(statistics.median(xs), fmt)} ({format(min(xs), fmt)} to {format(max(xs), fmt)})"


def ratios(ours: list[float], theirs: list[float]) -> list[float]:
    """The per-round ratios ours / theirs (round i of one side against round i of the other)."""
    return [o / t for o, t in zip(ours, theirs)]


def _load(row: dict) -> str:
    return f"{row['load_before'][0]:.1f} / {row['load_after'][0]:.1f}"


def report(r: dict, tiny: bool) -> str:
    imp, mo, mh = r["import"], r["mem-ours-sample"], r["mem-hf-sample"]
    so, sh = r["mem-ours-step"], r["mem-hf-step"]
    lines = [
        "# GPT-2 small at full size: ours vs transformers (float32), side by side",
        "",
        f"`python benchmarks/gpt2_scale.py{' --tiny' if tiny else ''}` on {r['machine']}, {r['date']}, "
        f"{r['wall_s'] / 60:.1f} minutes in all. Python {r['python']}, NumPy {r['numpy']}, torch {r['torch']}, "
        f"transformers {r['transformers']}.",
        "",
        f"Load average of the machine (1, 5, 15 minutes, /proc/loadavg): {r['load_start']} at the start, "
        f"{r['load_end']} at the end; each row gives its own 1-minute load before / after it ran. "
        "The machine is shared with other jobs: a load above its CPU count means the two sides' threads "
        "waited for cores, so read the spread before the median.",
        "",
        f"Model: a random GPT-2 small made by transformers (`GPT2Config()`, seed 0), {r['parameters']:,} "
        f"parameters, V={imp['vocab_size']}, T={imp['block_size']}, saved with `save_pretrained` "
        f"(float32, {imp['weights_mb']:.0f} MB of weights). transformers' attention: {mh['attn_implementation']}.",
        "",
        "## Speed, side by side in one process (A B A B)",
        "",
        "Each cell: median (lowest to highest) over the rounds. The ratio column is ours / theirs taken "
        "round by round (the same round of each side), then its median and spread.",
        "",
        "| measurement | threads (ours / torch) | rounds | ours | transformers | ours / transformers | load before / after |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in r["sample-pair"]:
        m, th = row["ms_per_token"], row["threads"]
        tag = f"{th['ours']} / {th['torch']}"
        lines.append(f"| sampling, ms / token vs `generate` | {tag} | {len(m['ours'])} | {spread(m['ours'], '.1f')} | "
                     f"{spread(m['hf_generate'], '.1f')} | {spread(ratios(m['ours'], m['hf_generate']), '.2f')} | "
                     f"{_load(row)} |")
        lines.append(f"| sampling, ms / token vs stepped by hand (`past_key_values`) | {tag} | {len(m['ours'])} | "
                     f"{spread(m['ours'], '.1f')} | {spread(m['hf_loop'], '.1f')} | "
                     f"{spread(ratios(m['ours'], m['hf_loop']), '.2f')} | {_load(row)} |")
    for row in r["step-pair"]:
        s, th = row["step_s"], row["threads"]
        lines.append(f"| fine-tuning step, s, B={r['step_batch']} x {imp['block_size']} | {th['ours']} / {th['torch']} | "
                     f"{len(s['ours'])} | {spread(s['ours'], '.2f')} | {spread(s['hf'], '.2f')} | "
                     f"{spread(ratios(s['ours'], s['hf']), '.2f')} | {_load(row)} |")
    same = all(row["tokens"]["ours"] == row["tokens"]["hf_generate"] == row["tokens"]["hf_loop"]
               for row in r["sample-pair"]) and mo["tokens"] == mh["tokens"]
    first = r["step-pair"][0]["losses"]
    lines += [
        "",
        f"Sampling: greedy, {r['prompt_tokens']}-token prompt, {r['new_tokens']} new tokens, KV cache; the "
        "ms per token is (N tokens - 1 token) / (N - 1) within a round, so the prefill is not counted. "
        f"Same greedy tokens on every side and round: {'yes' if same else 'no'}.",
        f"Fine-tuning: forward, loss, backward, AdamW; one warm-up step each, then one step per round. "
        f"First losses: ours {first['ours'][0]:.6f}, transformers {first['hf'][0]:.6f}.",
        "",
        "## Memory, each side alone in its own process (all threads)",
        "",
        "| measurement | ours (MB) | transformers (MB) | ours / transformers |",
        "|---|---:|---:|---:|",
        f"| import (reference/programs/hf.py, tensor by tensor), {imp['seconds']:.1f} s: peak = "
        f"{imp['before_mb']:.0f} MB before loading + {(imp['peak_mb'] - imp['before_mb']) / imp['weights_mb']:.2f} x "
        f"the {imp['weights_mb']:.0f} MB of weights | {imp['peak_mb']:.0f} | | |",
        f"| sampling, peak | {mo['peak_mb']:.0f} | {mh['peak_mb']:.0f} | {mo['peak_mb'] / mh['peak_mb']:.2f} |",
        f"| fine-tuning step B={r['step_batch']}, peak | {so['peak_mb']:.0f} | {sh['peak_mb']:.0f} | "
        f"{so['peak_mb'] / sh['peak_mb']:.2f} |",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", help="the GPT-2 model directory to use (made there if it has no config.json)")
    p.add_argument("--tiny", action="store_true", help="a tiny model: a smoke test of this script")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5, help="sampling rounds, each side once per round (default 5)")
    p.add_argument("--step-rounds", type=int, default=2,
                   help="fine-tuning rounds after one warm-up step, each side once per round (default 2)")
    p.add_argument("--step-batch", type=int, default=1, help="batch of the fine-tuning step (default 1)")
    p.add_argument("--threads", default=f"1,{os.cpu_count()}",
                   help="thread counts to time, each side the same (default 1 and the CPU count)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpt2_scale"),
                   help="results path without extension (.md and .json are written)")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json")
    a = p.parse_args(argv)
    if a.report_only:
        r = json.loads(Path(a.out + ".json").read_text())
        Path(a.out + ".md").write_text(report(r, r.get("tiny", a.tiny)))
        return 0
    if a.child:
        a.threads = int(a.threads)
        print(json.dumps(CHILDREN[a.child](a)))
        return 0
    threads = [int(t) for t in str(a.threads).split(",")]
    tmp = None
    if a.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gpt2-small-")
        a.dir = tmp.name
    import numpy
    import torch
    import transformers
    t0 = time.perf_counter()
    r = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "tiny": a.tiny,
         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
         "numpy": numpy.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
         "load_start": loadavg(), "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
         "step_batch": a.step_batch}
    every = os.cpu_count() or 1
    if not (Path(a.dir) / "config.json").is_file():
        r["parameters"] = spawn("make", a, every)["parameters"]
    for name in ("import", "mem-ours-sample", "mem-hf-sample"):
        r[name] = spawn(name, a, every)
    r.setdefault("parameters", r["import"]["parameters"])
    r["sample-pair"] = [spawn("sample-pair", a, n) for n in threads]
    r["step-pair"] = [spawn("step-pair", a, n) for n in threads]
    for name in ("mem-ours-step", "mem-hf-step"):
        r[name] = spawn(name, a, every)
    r["load_end"], r["wall_s"] = loadavg(), time.perf_counter() - t0
    text = report(r, a.tiny)
    Path(a.out + ".md").write_text(text)
    Path(a.out + ".json").write_text(json.dumps(r, indent=1) + "\n")
    print(text)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
