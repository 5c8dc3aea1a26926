"""GPT-2 small at full size: our NumPy GPT against transformers' GPT2LMHeadModel, in float32.

    python benchmarks/gpt2_scale.py                     # 124M parameters, V=50257, T=1024
    python benchmarks/gpt2_scale.py --tiny              # a smoke test of the script (seconds)
    python benchmarks/gpt2_scale.py --dir DIR           # reuse a model directory (else a temporary one)

One random GPT-2-small (transformers' GPT2Config() defaults, seed 0) is saved with `save_pretrained`;
every measurement runs in its own process, so each peak resident memory (VmHWM) is that side's alone:

* import: reference.programs.hf.from_pretrained of the directory: seconds and peak memory against the size of
  the weights (it reads tensor by tensor into the model's arrays);
* sampling: greedy decoding of --new-tokens tokens after a --prompt-token prompt with the KV cache,
  ours (reference.programs.sampling.generation.generate) against transformers' `generate` with its cache.
  The ms per token is (time for N tokens - time for 1 token) / (N - 1): the prefill is not counted;
* fine-tuning step: forward, loss, backward and AdamW step on a (B, 1024) batch, ours against
  transformers' model with torch.optim.AdamW (same weights, same batch, dropout off; the first
  losses must agree); the median of --steps timed steps after one warm-up step.

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


def peak_mb() -> float:
    """Peak resident memory of this process (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource                                          # pragma: no cover - not Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hf_config(tiny: bool):
    from transformers import GPT2Config
    if tiny:
        return GPT2Config(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0,
                          embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)   # GPT-2 small: 124M, V=50257, T=1024


# ------------------------------------------------------------------------------------------ children


def child_make(a) -> dict:
    import torch
    from transformers import GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(hf_config(a.tiny))
    model.save_pretrained(a.dir)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def child_import(a) -> dict:
    from reference.programs.hf import from_pretrained
    base = peak_mb()
    t0 = time.perf_counter()
    model = from_pretrained(a.dir, dtype="float32")
    dt = time.perf_counter() - t0
    weights = sum(p.data.nbytes for p in model.parameters()) / 2**20
    return {"seconds": dt, "peak_mb": peak_mb(), "before_mb": base, "weights_mb": weights,
            "parameters": model.num_parameters(), "vocab_size": model.config.vocab_size,
            "block_size": model.config.block_size}


def _prompt(a, vocab: int):
    import numpy as np
    return np.random.default_rng(1).integers(0, vocab, a.prompt_tokens)


def child_ours_sample(a) -> dict:
    from reference.fast.pool import products_on_pool
    from reference.programs.hf import from_pretrained
    from reference.programs.sampling.generation import generate
    model = from_pretrained(a.dir, dtype="float32")
    ids = _prompt(a, model.config.vocab_size)
    times = {}
    with products_on_pool():
        generate(model, ids, 2, greedy=True)                   # warm-up
        for n in (1, a.new_tokens):
            t0 = time.perf_counter()
            out = generate(model, ids, n, greedy=True)
            times[n] = time.perf_counter() - t0
    return {"ms_per_token": 1e3 * (times[a.new_tokens] - times[1]) / (a.new_tokens - 1),
            "prefill_ms": 1e3 * times[1], "peak_mb": peak_mb(), "tokens": out[-a.new_tokens:].tolist()}


def child_hf_sample(a) -> dict:
    import torch
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(a.dir, dtype=torch.float32).eval()
    ids = torch.as_tensor(_prompt(a, model.config.vocab_size))[None]
    times = {}
    kw = dict(do_sample=False, use_cache=True, pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)
        for n in (1, a.new_tokens):
            t0 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
            times[n] = time.perf_counter() - t0
    return {"ms_per_token": 1e3 * (times[a.new_tokens] - times[1]) / (a.new_tokens - 1),
            "prefill_ms": 1e3 * times[1], "peak_mb": peak_mb(), "tokens": out[0, -a.new_tokens:].tolist(),
            "attn_implementation": model.config._attn_implementation, "torch_threads": torch.get_num_threads()}


def child_hf_loop(a) -> dict:
    """transformers' model stepped by hand with its KV cache (past_key_values), without `generate`."""
    import torch
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(a.dir, dtype=torch.float32).eval()
    ids = torch.as_tensor(_prompt(a, model.config.vocab_size))[None]

    def greedy(n: int) -> list[int]:
        out = model(input_ids=ids, use_cache=True)
        past, nxt, toks = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True), []
        for _ in range(n - 1):
            toks.append(int(nxt))
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        return toks + [int(nxt)]
    times = {}
    with torch.no_grad():
        greedy(2)
        for n in (1, a.new_tokens):
            t0 = time.perf_counter()
            toks = greedy(n)
            times[n] = time.perf_counter() - t0
    return {"ms_per_token": 1e3 * (times[a.new_tokens] - times[1]) / (a.new_tokens - 1),
            "prefill_ms": 1e3 * times[1], "peak_mb": peak_mb(), "tokens": toks}


def _batch(a, vocab: int, block: int):
    import numpy as np
    rng = np.random.default_rng(2)
    x = rng.integers(0, vocab, (a.batch, block + 1))
    return x[:, :-1], x[:, 1:]


def child_ours_step(a) -> dict:
    from reference.fast.pool import THREADS, products_on_pool
    from reference.programs.hf import from_pretrained
    from reference.optim import AdamW
    model = from_pretrained(a.dir, dtype="float32")
    decay = [p for p in model.parameters() if p.data.ndim >= 2]
    other = [p for p in model.parameters() if p.data.ndim < 2]
    opt = AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}], lr=1e-5)
    x, y = _batch(a, model.config.vocab_size, model.config.block_size)
    times, losses = [], []
    with products_on_pool():
        for _ in range(1 + a.steps):
            t0 = time.perf_counter()
            model.zero_grad()
            losses.append(model.loss_and_backward(x, y))
            opt.step()
            times.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(times[1:]), "first_loss": losses[0], "peak_mb": peak_mb(),
            "threads": THREADS}


def child_hf_step(a) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(a.dir, dtype=torch.float32).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-5)
    x, y = (torch.as_tensor(t) for t in _batch(a, model.config.vocab_size, model.config.n_positions))
    times, losses = [], []
    for _ in range(1 + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    return {"step_s": statistics.median(times[1:]), "first_loss": losses[0], "peak_mb": peak_mb(),
            "attn_implementation": model.config._attn_implementation, "torch_threads": torch.get_num_threads()}


CHILDREN = {"make": child_make, "import": child_import, "ours-sample": child_ours_sample,
            "hf-sample": child_hf_sample, "hf-loop": child_hf_loop, "ours-step": child_ours_step, "hf-step": child_hf_step}


# ------------------------------------------------------------------------------------------ parent


def spawn(name: str, a, **over) -> dict:
    argv = [sys.executable, __file__, "--child", name, "--dir", a.dir, "--prompt-tokens", str(a.prompt_tokens),
            "--new-tokens", str(a.new_tokens), "--steps", str(a.steps), "--batch", str(over.get("batch", a.batch))]
    argv += ["--tiny"] if a.tiny else []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"child {name} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {name} {over or ''}: {result}", file=sys.stderr)
    return result


def report(r: dict, tiny: bool) -> str:
    imp, so, sh, hl = r["import"], r["ours-sample"], r["hf-sample"], r["hf-loop"]
    lines = [
        "# GPT-2 small at full size: ours vs transformers (float32)",
        "",
        f"`python benchmarks/gpt2_scale.py{' --tiny' if tiny else ''}` on {r['machine']}, {r['date']}.",
        "The machine was shared with other jobs while this ran (a busy 2-core machine; load average "
        f"{r.get('load', '?')}): the figures are one run each, indicative, not a controlled measurement.",
        "Each row's peak memory is its own process's (VmHWM). The two sides ran at different moments of that",
        "load, so the ratios say how the two compared here, not on a quiet machine: rerun the script there.",
        "",
        f"Model: a random GPT-2 small made by transformers (`GPT2Config()`, seed 0), {r['parameters']:,} "
        f"parameters, V={imp['vocab_size']}, T={imp['block_size']}, saved with `save_pretrained` (float32, {imp['weights_mb']:.0f} MB of weights).",
        f"Threads: ours {r['ours-step'][0]['threads']} (reference.fast.pool), torch {sh['torch_threads']}; "
        f"transformers' attention: {sh['attn_implementation']}.",
        "",
        "## Import (reference/programs/hf.py, tensor by tensor)",
        "",
        "| seconds | peak memory (MB) | before loading (MB) | weights (MB) | (peak - before) / weights |",
        "|---:|---:|---:|---:|---:|",
        f"| {imp['seconds']:.1f} | {imp['peak_mb']:.0f} | {imp['before_mb']:.0f} | {imp['weights_mb']:.0f} | "
        f"{(imp['peak_mb'] - imp['before_mb']) / imp['weights_mb']:.2f} |",
        "",
        "(Before loading: the interpreter with numpy and the package imported.)",
        "",
        f"## Sampling: greedy, {r['prompt_tokens']}-token prompt, {r['new_tokens']} new tokens, KV cache",
        "",
        "| side | ms / token (decode) | prefill + 1 token (ms) | peak memory (MB) |",
        "|---|---:|---:|---:|",
        f"| ours (`generate`, KV cache) | {so['ms_per_token']:.1f} | {so['prefill_ms']:.0f} | {so['peak_mb']:.0f} |",
        f"| transformers `generate` (cache) | {sh['ms_per_token']:.1f} | {sh['prefill_ms']:.0f} | {sh['peak_mb']:.0f} |",
        f"| transformers, stepped by hand with `past_key_values` | {hl['ms_per_token']:.1f} | "
        f"{hl['prefill_ms']:.0f} | {hl['peak_mb']:.0f} |",
        f"| ratio ours / transformers `generate` | {so['ms_per_token'] / sh['ms_per_token']:.2f} | | "
        f"{so['peak_mb'] / sh['peak_mb']:.2f} |",
        "",
        f"Same greedy tokens on all three: {'yes' if so['tokens'] == sh['tokens'] == hl['tokens'] else 'no'}.",
        "",
        f"## Fine-tuning step: forward, loss, backward, AdamW (B x {imp['block_size']} tokens)",
        "",
        "| B | ours (s) | transformers + torch.optim.AdamW (s) | ours / theirs | peak MB ours | peak MB theirs "
        "| first loss ours | first loss theirs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o, h, b in zip(r["ours-step"], r["hf-step"], r["batches"]):
        lines.append(f"| {b} | {o['step_s']:.2f} | {h['step_s']:.2f} | {o['step_s'] / h['step_s']:.2f} | "
                     f"{o['peak_mb']:.0f} | {h['peak_mb']:.0f} | {o['first_loss']:.6f} | {h['first_loss']:.6f} |")
    lines += ["", f"Each step time is the median of {r['steps']} timed steps after one warm-up step."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", help="the GPT-2 model directory to use (made there if it has no config.json)")
    p.add_argument("--tiny", action="store_true", help="a tiny model: a smoke test of this script")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=2, help="timed fine-tuning steps (after one warm-up)")
    p.add_argument("--batches", default="1,4", help="batch sizes of the fine-tuning rows (default 1,4)")
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpt2_scale"),
                   help="results path without extension (.md and .json are written)")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json")
    a = p.parse_args(argv)
    if a.report_only:
        r = json.loads(Path(a.out + ".json").read_text())
        Path(a.out + ".md").write_text(report(r, a.tiny))
        return 0
    if a.child:
        print(json.dumps(CHILDREN[a.child](a)))
        return 0
    tmp = None
    if a.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gpt2-small-")
        a.dir = tmp.name
    r = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                         time.gmtime()),
         "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens, "steps": a.steps,
         "batches": [int(b) for b in a.batches.split(",")]}
    if not (Path(a.dir) / "config.json").is_file():
        r["parameters"] = spawn("make", a)["parameters"]
    for name in ("import", "ours-sample", "hf-sample", "hf-loop"):
        r[name] = spawn(name, a)
    r.setdefault("parameters", r["import"]["parameters"])
    for side in ("ours-step", "hf-step"):
        r[side] = [spawn(side, a, batch=b) for b in r["batches"]]
    r["load"] = f"{os.getloadavg()[1]:.1f} over the last 5 minutes at the end"
    text = report(r, a.tiny)
    Path(a.out + ".md").write_text(text)
    Path(a.out + ".json").write_text(json.dumps(r, indent=1) + "\n")
    print(text)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
