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

Next-token rule, in this order (the order of transformers' `generate`: logits processors, then the
warpers temperature -> top-k -> top-p -> min-p; docs/sampling.md):

1. penalties (`apply_penalties`): the repetition penalty on every token of the sequence so far, prompt
   included (transformers' RepetitionPenaltyLogitsProcessor), then the frequency and presence penalties
   on the tokens generated so far (OpenAI's "previously sampled tokens");
2. logits / temperature;
3. keep the top_k largest (ties at the k-th value kept, as nanoGPT and transformers);
4. keep the smallest set of most likely tokens whose probability reaches top_p (nucleus; the most
   likely token is always kept);
5. keep the tokens whose probability is at least min_p times the largest (transformers' MinPLogitsWarper);
6. sample from what is left, renormalised.

`greedy` takes the argmax of the penalised logits instead (first on ties), ignoring steps 2-5 (as
transformers applies its processors, not its warpers, to greedy search).

Streaming (`sample --stream`, `TextStream`): each token is printed as it is drawn; with the byte
tokenizer an incomplete UTF-8 sequence is held back until it completes, so the streamed text equals
the decoded whole. Ctrl-C keeps what was printed and exits with status 130.
"""

from __future__ import annotations

import argparse
import codecs
import math
import sys

import numpy as np

from .options import add_kernels_argument
from ..fast import use_kernels
from ..model import GPT, KVCache

__all__ = ["generate", "iter_generate", "next_token_probs", "sample_next", "apply_penalties", "check_sampling_args",
           "check_penalty_args", "check_logits", "TextStream", "load_hf_dir", "add_arguments", "run"]


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


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value)


def check_penalty_args(min_p: float | None = None, repetition_penalty: float = 1.0, presence_penalty: float = 0.0,
                       frequency_penalty: float = 0.0) -> None:
    """ValueError naming the argument, its value and its range. The ranges are those of the sources:
    min_p in [0, 1] (MinPLogitsWarper), repetition_penalty > 0 (RepetitionPenaltyLogitsProcessor),
    presence and frequency penalties in [-2, 2] (OpenAI's API reference)."""
    if min_p is not None and not (_is_real(min_p) and 0.0 <= min_p <= 1.0):
        raise ValueError(f"min_p must be a number in [0, 1] (or None for no limit), got {min_p!r}")
    if not (_is_real(repetition_penalty) and repetition_penalty > 0):
        raise ValueError(f"repetition_penalty must be a finite number > 0 (1 for none), got {repetition_penalty!r}")
    for name, value in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
        if not (_is_real(value) and -2.0 <= value <= 2.0):
            raise ValueError(f"{name} must be a number in [-2, 2] (0 for none), got {value!r}")


def apply_penalties(logits: np.ndarray, context: np.ndarray, n_generated: int = 0, *,
                    repetition_penalty: float = 1.0, presence_penalty: float = 0.0,
                    frequency_penalty: float = 0.0) -> np.ndarray:
    """Penalised logits: (B, V) logits and the (B, S) token ids so far -> (B, V) float64.

    * repetition penalty (transformers' RepetitionPenaltyLogitsProcessor, after Keskar et al. 2019): for
      every token id present anywhere in `context` (prompt and generated), a negative logit is multiplied
      by the penalty and a positive (or zero) one divided by it, once however often the token occurs;
    * frequency and presence penalties (OpenAI's API docs, "Frequency and presence penalties"):
      logit[j] -= frequency_penalty * c[j] + presence_penalty * (c[j] > 0), with c[j] how often token j
      was sampled before: the counts are over the last `n_generated` ids of `context` only (the prompt is
      not counted). Applied after the repetition penalty, as vLLM does.
    """
    z = np.array(logits, dtype=np.float64)                     # a copy: the caller's logits are left alone
    if z.ndim == 1:
        z = z[None]
    context = np.asarray(context).reshape(z.shape[0], -1)      # (B, S)
    B, V = z.shape
    if repetition_penalty != 1.0:
        seen = np.zeros((B, V), dtype=bool)
        for b in range(B):
            seen[b, context[b]] = True
        penalised = np.where(z < 0, z * repetition_penalty, z / repetition_penalty)
        z = np.where(seen, penalised, z)
    if (presence_penalty != 0.0 or frequency_penalty != 0.0) and n_generated > 0:
        generated = context[:, context.shape[1] - n_generated:]          # (B, n_generated)
        counts = np.stack([np.bincount(row, minlength=V) for row in generated]).astype(np.float64)   # (B, V)
        z = z - frequency_penalty * counts - presence_penalty * (counts > 0)
    return z


def next_token_probs(logits: np.ndarray, *, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None, min_p: float | None = None) -> np.ndarray:
    """The distribution sampled from: (B, V) logits -> (B, V) float64 probabilities (rows sum to 1).
    Steps 2-5 of the module's rule: temperature, top-k, top-p, min-p (transformers' warpers, in its order).
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
    if min_p is not None and min_p > 0.0:
        # MinPLogitsWarper: drop tokens less likely than min_p times the most likely one (always kept).
        p = np.where(p < min_p * p.max(-1, keepdims=True), 0.0, p)
        p /= p.sum(-1, keepdims=True)
    return p


def sample_next(logits: np.ndarray, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, greedy: bool = False,
                rng: np.random.Generator | None = None, min_p: float | None = None) -> np.ndarray:
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
    p = next_token_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    cum = np.cumsum(p, axis=-1)
    u = rng.random(p.shape[0]) * cum[:, -1]            # inverse CDF: zero-probability tokens are never hit
    ids = np.array([np.searchsorted(c, x, side="right") for c, x in zip(cum, u)], dtype=np.int64)
    return np.minimum(ids, p.shape[-1] - 1)


def iter_generate(model: GPT, idx, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, greedy: bool = False, rng: np.random.Generator | None = None,
                  use_cache: bool = True, verbose: bool = True, min_p: float | None = None,
                  repetition_penalty: float = 1.0, presence_penalty: float = 0.0, frequency_penalty: float = 0.0):
    """Check every argument now, then return an iterator that yields, as each new token is drawn,
    `(ids, logits)`: the new token ids (B,) and the last-position logits (B, V) they were drawn from
    (before penalties). The prompt `idx` is (T,) or (B, T). This is what `sample --stream` prints from.
    """
    check_sampling_args(temperature, top_k, top_p, greedy)
    check_penalty_args(min_p, repetition_penalty, presence_penalty, frequency_penalty)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    idx = np.asarray(idx)
    if idx.ndim not in (1, 2):
        raise ValueError(f"prompt must be 1-D (T,) or 2-D (B, T) token ids, got shape {idx.shape}")
    if idx.size == 0:
        raise ValueError(f"the prompt is empty: generation needs at least one token (got shape {idx.shape})")
    if idx.ndim == 1:
        idx = idx[None]
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"token ids must be integers, got dtype {idx.dtype}")
    block_size = model.config.block_size
    T = idx.shape[1]
    if T > block_size and verbose:
        print(f"note: the prompt has {T} tokens, more than the context of {block_size}; the model sees only its "
              f"last {block_size} (as nanoGPT crops idx[:, -block_size:])", file=sys.stderr)
    rule = dict(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, rng=rng, min_p=min_p)
    penalties = dict(repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                     frequency_penalty=frequency_penalty)
    return _steps(model, idx, max_new_tokens, use_cache, rule, penalties)


def _steps(model: GPT, idx: np.ndarray, max_new_tokens: int, use_cache: bool, rule: dict, penalties: dict):
    block_size = model.config.block_size
    B, T = idx.shape
    seq = np.empty((B, T + max_new_tokens), dtype=np.int64)
    seq[:, :T] = idx
    penalised = penalties != dict(repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0)
    cache = None
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
        z = apply_penalties(last, seq[:, :n], n - T, **penalties) if penalised else last
        seq[:, n] = sample_next(z, **rule)
        yield seq[:, n].copy(), last.copy()


def generate(model: GPT, idx, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, greedy: bool = False, rng: np.random.Generator | None = None,
             use_cache: bool = True, return_logits: bool = False, verbose: bool = True, min_p: float | None = None,
             repetition_penalty: float = 1.0, presence_penalty: float = 0.0, frequency_penalty: float = 0.0):
    """Extend token ids `idx` ((T,) or (B, T)) by `max_new_tokens` sampled tokens; same shape kind back.

    With `return_logits`, also the list of last-position logits (B, V) each token was drawn from.
    `use_cache=False` recomputes the whole (cropped) window at every step: the reference for the cache.
    min_p and the penalties: see the module docstring and docs/sampling.md.
    """
    steps = iter_generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                          greedy=greedy, rng=rng, use_cache=use_cache, verbose=verbose, min_p=min_p,
                          repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                          frequency_penalty=frequency_penalty)
    idx = np.asarray(idx)
    prompt = idx[None] if idx.ndim == 1 else idx
    new, all_logits = [], []
    for ids, last in steps:
        new.append(ids)
        all_logits.append(last)
    seq = np.concatenate([prompt.astype(np.int64), np.stack(new, axis=1) if new else
                          np.empty((prompt.shape[0], 0), dtype=np.int64)], axis=1)
    out = seq[0] if idx.ndim == 1 else seq
    return (out, all_logits) if return_logits else out


class TextStream:
    """Token ids in, text out, piece by piece: the pieces joined equal `tokenizer.decode(all ids)`.

    * byte tokenizer: the bytes go through an incremental UTF-8 decoder (codecs, errors="replace", as
      ByteTokenizer.decode), which holds back an incomplete multi-byte sequence until it completes, and
      `finish()` turns a sequence left incomplete at the end into U+FFFD, as decoding the whole does;
    * char tokenizer: one id is one character, printed at once;
    * any other tokenizer: the whole sequence is decoded again and the new text printed, except a trailing
      U+FFFD (possibly an incomplete character), which waits for the next token or `finish()`.
    """

    def __init__(self, tokenizer):
        from .data import ByteTokenizer, CharTokenizer
        self.tokenizer = tokenizer
        self.kind = "byte" if isinstance(tokenizer, ByteTokenizer) else "char" if isinstance(tokenizer, CharTokenizer) \
            else "other"
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids: list[int] = []
        self._shown = 0                                        # characters of decode(_ids) already returned

    def push(self, ids) -> str:
        """The text that the ids (1-D) complete, possibly empty."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self.kind == "char":
            return self.tokenizer.decode(ids)
        if self.kind == "byte":
            self.tokenizer.decode(ids)                         # checks the ids are bytes (0..255)
            return self._decoder.decode(ids.astype(np.uint8).tobytes())
        self._ids.extend(ids.tolist())
        text = self.tokenizer.decode(self._ids)
        end = len(text) - 1 if text.endswith("\ufffd") else len(text)
        piece = text[self._shown:end] if end > self._shown else ""
        self._shown += len(piece)
        return piece

    def finish(self) -> str:
        """Whatever was held back (an incomplete sequence becomes U+FFFD, as in decoding the whole)."""
        if self.kind == "byte":
            return self._decoder.decode(b"", final=True)
        if self.kind == "char":
            return ""
        text = self.tokenizer.decode(self._ids)
        piece, self._shown = text[self._shown:], len(text)
        return piece


# ------------------------------------------------------------------------------------------- CLI


def load_hf_dir(path):
    """(model, tokenizer) of a Hugging Face model directory: float32 weights (reference/programs/hf.py) and its
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


DEFAULT_CKPT = "out/ckpt.safetensors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group()              # one model: giving both used to ignore --ckpt
    model.add_argument("--ckpt", default=DEFAULT_CKPT, help=f"checkpoint file (default {DEFAULT_CKPT})")
    model.add_argument("--init-from", "--init_from", dest="init_from", metavar="DIR", default=None,
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
    parser.add_argument("--min-p", "--min_p", dest="min_p", type=float, default=0.0,
                        help="keep the tokens at least this many times as likely as the most likely one, in [0, 1] "
                             "(transformers' min_p; default 0: keep all)")
    parser.add_argument("--repetition-penalty", "--repetition_penalty", dest="repetition_penalty", type=float,
                        default=1.0, help="divide positive and multiply negative logits of the tokens already in the "
                        "text (prompt included) by this, > 0 (transformers' repetition_penalty; default 1: none)")
    parser.add_argument("--presence-penalty", "--presence_penalty", dest="presence_penalty", type=float, default=0.0,
                        help="subtract this from the logit of every token generated so far, in [-2, 2] "
                             "(OpenAI's presence_penalty; default 0)")
    parser.add_argument("--frequency-penalty", "--frequency_penalty", dest="frequency_penalty", type=float,
                        default=0.0, help="subtract this times its count from the logit of every token generated so "
                        "far, in [-2, 2] (OpenAI's frequency_penalty; default 0)")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--stream", action="store_true",
                        help="print each token as it is generated (a UTF-8 character split over byte tokens "
                             "appears when complete); Ctrl-C stops, keeping what was printed (exit status 130)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the sampling generator, >= 0")
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole window for every token")
    add_kernels_argument(parser)


def run(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, build_model, load_checkpoint
    from .data import tokenizer_from_dict

    top_k = None if args.top_k == 0 else args.top_k
    try:
        check_sampling_args(args.temperature, top_k, args.top_p, args.greedy)
        check_penalty_args(args.min_p, args.repetition_penalty, args.presence_penalty, args.frequency_penalty)
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
            except OSError as e:                      # missing, a directory, unreadable: name the flag
                raise ValueError(f"--prompt-file {args.prompt_file}: {e.strerror or e}") from None
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
        use_kernels(model, getattr(args, "kernels", "fast"))
    except (CheckpointError, FileNotFoundError, ValueError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    note = ckpt.integrity_note if ckpt is not None else None
    if note:
        print(note, file=sys.stderr)
    rng = np.random.default_rng(args.seed)
    rule = dict(temperature=args.temperature, top_k=top_k, top_p=args.top_p, greedy=args.greedy, rng=rng,
                use_cache=not args.no_cache, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty)
    for i in range(args.num_samples):
        try:
            if args.stream:
                _stream(tok, iter_generate(model, ids, args.max_new_tokens, verbose=i == 0, **rule), ids)
            else:
                out = generate(model, ids, args.max_new_tokens, verbose=i == 0, **rule)
                # Written and flushed as soon as it exists; stdout is UTF-8 whatever the locale (reference/programs/cli.py).
                sys.stdout.write(tok.decode(out) + "\n")
        except ValueError as e:                   # non-finite logits: a model with non-finite weights
            sys.stdout.flush()
            print(f"error: sample {i + 1}: {e}", file=sys.stderr)
            return 1
        except MemoryError:
            sys.stdout.flush()
            print(f"error: sample {i + 1}: out of memory for {len(ids) + args.max_new_tokens:,} tokens; "
                  "lower --max-new-tokens", file=sys.stderr)
            return 1
        except KeyboardInterrupt:                 # Ctrl-C: keep what was printed, say so, status 130
            sys.stdout.write("\n")
            sys.stdout.flush()
            print("interrupted: generation stopped (Ctrl-C); the text above is what was generated", file=sys.stderr)
            return 130
        if i + 1 < args.num_samples:
            sys.stdout.write("---------------\n")
        sys.stdout.flush()
    return 0


def _stream(tok, steps, prompt_ids) -> None:
    """Print the prompt, then each token as it is drawn, flushing every time (sample --stream)."""
    stream = TextStream(tok)
    sys.stdout.write(stream.push(prompt_ids))
    sys.stdout.flush()
    for new, _ in steps:
        piece = stream.push(new[:1])                           # one sample at a time: batch of one
        if piece:
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write(stream.finish() + "\n")
    sys.stdout.flush()
