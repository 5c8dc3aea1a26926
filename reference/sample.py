"""Sampling: `python -m reference sample --ckpt out/ckpt.safetensors --prompt "ROMEO:"`, and `generate()`.

`generate` decodes with a key/value cache: the prompt is run once (prefill), then each new token is a
one-position forward at the position after the cache's. Every next-token distribution is conditioned on
the last `block_size` tokens at most, exactly as nanoGPT's `idx[:, -block_size:]`:

* a prompt longer than the context is cropped to its last block_size tokens (the output still holds
  the whole prompt);
* once the sequence fills the context, each step re-prefills a fresh cache with the last block_size
  tokens, at positions 0..block_size-1. That is the same computation as recomputing the window, so it
  is right for learned positions, RoPE and ALiBi alike (a cache cannot be shifted under learned
  positions, which are absolute).

tests/test_sample.py proves the cached logits equal recomputing the whole window at every step.

Next-token rule, in this order: logits / temperature; keep the top_k largest (ties at the k-th value
kept, as nanoGPT); keep the smallest set of most likely tokens whose probability reaches top_p
(nucleus; the most likely token is always kept); sample from what is left, renormalised. `greedy`
takes the argmax of the logits instead (first on ties), ignoring temperature, top_k and top_p.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from .kernels import add_kernels_argument
from .model import GPT, KVCache

__all__ = ["generate", "next_token_probs", "sample_next", "check_sampling_args", "check_logits", "load_hf_dir",
           "add_arguments", "run"]


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None, greedy: bool) -> None:
    if not greedy and not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r} "
                         "(use greedy decoding for the argmax)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None for no limit), got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] (or None for no limit), got {top_p!r}")


def check_logits(logits: np.ndarray, what: str = "logits") -> None:
    """Refuse logits that no distribution can come from, as torch.multinomial refuses a probability
    tensor with inf or NaN: ValueError for NaN or +inf anywhere, or a row that is -inf throughout.
    (-inf alone is a masked token: probability 0.) A model with non-finite weights gives NaN logits."""
    z = np.asarray(logits)
    if z.size and z.dtype.kind == "f" and not np.isfinite(z).all():
        bad = np.isnan(z) | (z == np.inf)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{what} hold non-finite values ({int(np.isnan(z).sum())} NaN, "
                             f"{int((z == np.inf).sum())} +inf; {z[where]} at index {where}); sampling needs "
                             "finite logits (-inf masks a token). Non-finite weights give NaN logits: check the model")
        dead = np.all(z == -np.inf, axis=-1)
        if dead.any():
            raise ValueError(f"{what}: row {int(np.argwhere(dead)[0][0])} is -inf for every token; "
                             "no token can be sampled")


def next_token_probs(logits: np.ndarray, *, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None) -> np.ndarray:
    """The distribution sampled from: (B, V) logits -> (B, V) float64 probabilities (rows sum to 1).
    ValueError for non-finite logits (`check_logits`), or a temperature so small that logits overflow."""
    check_logits(logits)
    with np.errstate(over="ignore"):
        z = np.asarray(logits, dtype=np.float64) / float(temperature)
    if z.ndim == 1:
        z = z[None]
    check_logits(z, f"logits / temperature ({temperature!r})")
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")
        sp = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(sp, axis=-1) - sp           # mass of the more likely tokens
        keep_sorted = before < top_p                   # the first token always (before = 0 < top_p)
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(-1, keepdims=True)
    return p


def sample_next(logits: np.ndarray, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, greedy: bool = False,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Next token ids (B,) from the last-position logits (B, V). ValueError for NaN or +inf logits
    (torch.multinomial refuses them too), greedy or not."""
    logits = np.asarray(logits)
    if logits.ndim == 1:
        logits = logits[None]
    check_logits(logits)
    if greedy:
        return np.argmax(logits, axis=-1).astype(np.int64)
    if rng is None:
        raise ValueError("sampling needs a numpy Generator (rng=np.random.default_rng(seed)); or pass greedy=True")
    p = next_token_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    cum = np.cumsum(p, axis=-1)
    u = rng.random(p.shape[0]) * cum[:, -1]            # inverse CDF: zero-probability tokens are never hit
    ids = np.array([np.searchsorted(c, x, side="right") for c, x in zip(cum, u)], dtype=np.int64)
    return np.minimum(ids, p.shape[-1] - 1)


def generate(model: GPT, idx, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, greedy: bool = False, rng: np.random.Generator | None = None,
             use_cache: bool = True, return_logits: bool = False, verbose: bool = True):
    """Extend token ids `idx` ((T,) or (B, T)) by `max_new_tokens` sampled tokens; same shape kind back.

    With `return_logits`, also the list of last-position logits (B, V) each token was drawn from.
    `use_cache=False` recomputes the whole (cropped) window at every step: the reference for the cache.
    """
    check_sampling_args(temperature, top_k, top_p, greedy)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    idx = np.asarray(idx)
    if idx.ndim not in (1, 2):
        raise ValueError(f"prompt must be 1-D (T,) or 2-D (B, T) token ids, got shape {idx.shape}")
    if idx.size == 0:
        raise ValueError(f"the prompt is empty: generation needs at least one token (got shape {idx.shape})")
    squeeze = idx.ndim == 1
    if squeeze:
        idx = idx[None]
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"token ids must be integers, got dtype {idx.dtype}")
    block_size = model.config.block_size
    B, T = idx.shape
    if T > block_size and verbose:
        print(f"note: the prompt has {T} tokens, more than the context of {block_size}; the model sees only its "
              f"last {block_size} (as nanoGPT crops idx[:, -block_size:])", file=sys.stderr)
    seq = np.empty((B, T + max_new_tokens), dtype=np.int64)
    seq[:, :T] = idx
    cache, all_logits = None, []
    for n in range(T, T + max_new_tokens):
        window = seq[:, max(0, n - block_size):n]      # the tokens the next one is conditioned on
        if not use_cache:
            logits, _ = model.forward(window)
        elif cache is None or cache.length >= block_size:
            cache = KVCache(model.config, B, T + max_new_tokens)   # (re-)prefill: start, or the context is full
            logits, _ = model.forward(window, kv_cache=cache)
        else:
            logits, _ = model.forward(seq[:, n - 1:n], kv_cache=cache)
        last = logits[:, -1, :]
        if return_logits:
            all_logits.append(last.copy())
        seq[:, n] = sample_next(last, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, rng=rng)
    out = seq[0] if squeeze else seq
    return (out, all_logits) if return_logits else out


# ------------------------------------------------------------------------------------------- CLI


def load_hf_dir(path):
    """(model, tokenizer) of a Hugging Face model directory: float32 weights (reference/hf.py) and its
    BPE tokenizer files (reference/data.BPETokenizer). HFError/ValueError name what is missing."""
    from .data import BPETokenizer
    from .hf import check_dir, from_pretrained
    check_dir(path)                                    # the model's problems are named before the tokenizer's
    tok = BPETokenizer.from_dir(path)
    model = from_pretrained(path, dtype="float32")
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"{path}: the tokenizer has {tok.vocab_size} ids, more than the model's vocab_size "
                         f"{model.config.vocab_size}")
    return model, tok


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", default="out/ckpt.safetensors", help="checkpoint file (default out/ckpt.safetensors)")
    parser.add_argument("--init-from", "--init_from", dest="init_from", metavar="DIR", default=None,
                        help="sample from a Hugging Face GPT-2 or Llama model directory (config.json, "
                             "model.safetensors and its tokenizer files) instead of --ckpt; needs the hf extra "
                             "(default: none, use --ckpt)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--prompt", default="\n", help="text to continue (default a newline, as nanoGPT)")
    src.add_argument("--prompt-file", help="read the prompt from this UTF-8 file (default: none, use --prompt)")
    parser.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=500,
                        help="tokens to generate per sample, >= 0")
    parser.add_argument("--num-samples", "--num_samples", dest="num_samples", type=int, default=1,
                        help="samples to generate, >= 1")
    parser.add_argument("--temperature", type=float, default=0.8, help="default 0.8 (nanoGPT)")
    parser.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=200,
                        help="keep the k most likely tokens (default 200, as nanoGPT; 0 for no limit)")
    parser.add_argument("--top-p", "--top_p", dest="top_p", type=float, default=None,
                        help="nucleus sampling: keep the most likely tokens up to this mass, in (0, 1] (default: no limit)")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the sampling generator, >= 0")
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole window for every token")
    add_kernels_argument(parser)


def run(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, build_model, load_checkpoint
    from .data import tokenizer_from_dict

    top_k = None if args.top_k == 0 else args.top_k
    try:
        check_sampling_args(args.temperature, top_k, args.top_p, args.greedy)
        if args.max_new_tokens < 0:
            raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
        if args.num_samples < 1:
            raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
        if args.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {args.seed}")
        prompt = args.prompt
        if args.prompt_file:
            try:
                with open(args.prompt_file, encoding="utf-8") as f:
                    prompt = f.read()
            except UnicodeDecodeError as e:
                raise ValueError(f"--prompt-file {args.prompt_file} is not UTF-8 text ({e.reason} at byte "
                                 f"{e.start})") from None
        ckpt = None
        if getattr(args, "init_from", None):
            model, tok = load_hf_dir(args.init_from)
        else:
            ckpt = load_checkpoint(args.ckpt)
            if ckpt.tokenizer is None:
                raise ValueError(f"{args.ckpt} holds no tokenizer, so text cannot be encoded")
            tok = tokenizer_from_dict(ckpt.tokenizer)
        if not prompt:
            raise ValueError("the prompt is empty: give at least one character with --prompt")
        try:
            ids = tok.encode(prompt)
        except ValueError as e:
            raise ValueError(f"the prompt cannot be encoded with the checkpoint's vocabulary: {e}") from None
        if ckpt is not None:
            model = build_model(ckpt)
        model.use_kernels(getattr(args, "kernels", "fast"))
    except (CheckpointError, FileNotFoundError, ValueError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    note = ckpt.integrity_note if ckpt is not None else None
    if note:
        print(note, file=sys.stderr)
    rng = np.random.default_rng(args.seed)
    for i in range(args.num_samples):
        try:
            out = generate(model, ids, args.max_new_tokens, temperature=args.temperature, top_k=top_k,
                           top_p=args.top_p, greedy=args.greedy, rng=rng, use_cache=not args.no_cache, verbose=i == 0)
        except ValueError as e:                   # non-finite logits: a model with non-finite weights
            sys.stdout.flush()
            print(f"error: sample {i + 1}: {e}", file=sys.stderr)
            return 1
        except MemoryError:
            sys.stdout.flush()
            print(f"error: sample {i + 1}: out of memory for {len(ids) + args.max_new_tokens:,} tokens; "
                  "lower --max-new-tokens", file=sys.stderr)
            return 1
        # Written and flushed as soon as it exists; stdout is UTF-8 whatever the locale (reference/cli.py).
        sys.stdout.write(tok.decode(out) + "\n")
        if i + 1 < args.num_samples:
            sys.stdout.write("---------------\n")
        sys.stdout.flush()
    return 0
