"""Beam search with transformers' semantics: `beam_search(model, idx, max_new_tokens, num_beams=k, ...)`.

The rule is transformers' `generate(num_beams=k, do_sample=False)` (transformers 5.23,
generation/utils.py `_beam_search` and its helpers), derived in docs/beam-search.md:

* each step, every running beam b with accumulated score s_b proposes s_b + log p(v | beam b) for every
  token v; the best K = max(2, 1 + number of eos ids) * k of the k V candidates are kept, so that at
  least k of them do not end in eos;
* a candidate among the best k that ends in eos, or that reaches the length limit, is a finished
  hypothesis with score (sum of its log-probabilities) / (generated length) ** length_penalty, the
  generated length counting the eos token and not the prompt; the k best finished hypotheses are kept;
* the best k candidates that did not finish are the next running beams; the key/value cache is
  reordered to follow them (`KVCache.reorder`);
* the search stops at the length limit, or when no running beam can beat the worst kept hypothesis
  (`early_stopping` False: judged at the current length; "never": at the longest length when
  length_penalty > 0), or (`early_stopping` True) as soon as k hypotheses are finished.

With num_beams = 1 it is greedy search, as `generate(num_beams=1)` is: the argmax token at each step, a
sequence that produced eos padded from there on, the search over when every sequence has.

Log-probabilities are computed in float64 (transformers computes them in float32); tests/test_beam.py
proves the tokens and scores equal to transformers' on GPT-2 and Llama directories, on both paths.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from ..model import GPT, KVCache, check_token_ids
from .options import is_int, is_real

__all__ = ["BeamSearchOutput", "beam_search", "check_beam_args", "log_softmax", "add_beam_arguments",
           "check_beam_flags", "check_beam_length", "run_beams", "until_eos"]

NEG = -1.0e9          # transformers' score for "not a candidate": added, never -inf, so sums stay finite
EARLY_STOPPING = (False, True, "never")


@dataclass
class BeamSearchOutput:
    """What `generate(..., return_dict_in_generate=True, output_scores=True)` returns, as NumPy arrays.

    sequences: (B * n, T + L) int64, n = num_return_sequences, best first per prompt; L the longest
        generated length among them; a shorter hypothesis is padded with pad_token_id (eos by default).
    sequences_scores: (B * n,) float64, sum of log-probabilities / L_i ** length_penalty, L_i the
        hypothesis' generated length (its eos included).
    scores: one (B * k, V) float64 array per step: the log-probabilities of the next token for each
        running beam (transformers' `scores`; under greedy search transformers gives the logits there).
    """
    sequences: np.ndarray
    sequences_scores: np.ndarray
    scores: list[np.ndarray]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p over the last axis, in float64: z - max z - log sum exp(z - max z)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def check_beam_args(model: GPT, idx, max_new_tokens, *, num_beams, length_penalty, early_stopping,
                    eos_token_id, pad_token_id, num_return_sequences) -> tuple[np.ndarray, np.ndarray]:
    """The prompt as (B, T) int64 and the eos ids as a 1-D array; ValueError (TypeError for non-integer
    token ids) naming the first bad argument and the expected value."""
    if not is_int(num_beams) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    if not is_int(num_return_sequences) or not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"num_return_sequences must be an integer from 1 to num_beams ({num_beams}), "
                         f"got {num_return_sequences!r}")
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not is_real(length_penalty):
        raise ValueError(f"length_penalty must be a finite number (1.0: the mean log-probability), "
                         f"got {length_penalty!r}")
    if not any(early_stopping is e or (isinstance(e, str) and early_stopping == e) for e in EARLY_STOPPING):
        raise ValueError(f"early_stopping must be True, False or \"never\", got {early_stopping!r}")
    V = model.config.vocab_size
    eos = [] if eos_token_id is None else [eos_token_id] if is_int(eos_token_id) else list(eos_token_id)
    for e in eos + ([] if pad_token_id is None else [pad_token_id]):
        if not is_int(e):
            raise ValueError(f"eos_token_id and pad_token_id must be integer token ids, got {e!r}")
    check_token_ids(eos, V, "eos_token_id")
    check_token_ids([] if pad_token_id is None else [pad_token_id], V, "pad_token_id")
    idx = np.asarray(idx)
    if idx.ndim not in (1, 2) or idx.size == 0:
        raise ValueError(f"prompt must be non-empty token ids of shape (T,) or (B, T), got shape {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"token ids must be integers, got dtype {idx.dtype}")
    idx = idx.reshape(-1, idx.shape[-1]).astype(np.int64)
    check_token_ids(idx, V)
    if idx.shape[1] + max_new_tokens > model.config.block_size:
        raise ValueError(f"a prompt of {idx.shape[1]} tokens plus max_new_tokens {max_new_tokens} is longer than "
                         f"the context (block_size {model.config.block_size}); beam search keeps every position")
    return idx, np.array(eos, dtype=np.int64)


def beam_search(model: GPT, idx, max_new_tokens: int, *, num_beams: int = 1, length_penalty: float = 1.0,
                early_stopping: bool | str = False, eos_token_id: int | list[int] | None = None,
                pad_token_id: int | None = None, num_return_sequences: int = 1,
                use_cache: bool = True) -> BeamSearchOutput:
    """Beam search from the prompt `idx` ((T,) or (B, T) token ids) for at most `max_new_tokens` tokens.

    num_beams k >= 1 (1: greedy search); length_penalty: the exponent of the generated length that
    divides a hypothesis' summed log-probability; early_stopping: True, False or "never" (the module
    docstring); eos_token_id: one id or a list, or None; pad_token_id: what follows a hypothesis' end
    (default the first eos id); num_return_sequences: the best n <= k hypotheses per prompt.
    `use_cache=False` recomputes every running beam's whole sequence at each step: the reference for
    the reordered cache. The prompt plus max_new_tokens must fit the context (block_size).
    """
    idx, eos = check_beam_args(model, idx, max_new_tokens, num_beams=num_beams, length_penalty=length_penalty,
                               early_stopping=early_stopping, eos_token_id=eos_token_id,
                               pad_token_id=pad_token_id, num_return_sequences=num_return_sequences)
    fill = pad_token_id if pad_token_id is not None else int(eos[0]) if eos.size else -1
    step = _Stepper(model, idx, num_beams, max_new_tokens, use_cache)
    if num_beams == 1:
        return _greedy(step, idx, max_new_tokens, eos, fill, length_penalty)
    return _beams(step, idx, max_new_tokens, num_beams, length_penalty, early_stopping, eos, fill,
                  num_return_sequences)


class _Stepper:
    """Next-token log-probabilities (B k, V) of the running sequences, with or without the KV cache."""

    def __init__(self, model: GPT, idx: np.ndarray, k: int, max_new_tokens: int, use_cache: bool):
        self.model, self.k, self.B = model, k, idx.shape[0]
        self.cache = KVCache(model.config, self.B, idx.shape[1] + max_new_tokens) if use_cache else None

    def __call__(self, running: np.ndarray, cur: int) -> np.ndarray:
        """running: (B k, >= cur) token ids; the first call has cur = T, the prompt."""
        if self.cache is None:
            logits = self.model.forward(running[:, :cur])[0]
        elif self.cache.length == 0:                           # prefill once per prompt, then one copy per beam
            logits = np.repeat(self.model.forward(running[::self.k, :cur], kv_cache=self.cache)[0], self.k, axis=0)
            self.cache.reorder(np.repeat(np.arange(self.B), self.k))
        else:
            logits = self.model.forward(running[:, cur - 1:cur], kv_cache=self.cache)[0]
        return log_softmax(logits[:, -1, :])                   # (B k, V)


def _greedy(step: _Stepper, idx: np.ndarray, N: int, eos: np.ndarray, fill: int, lp: float) -> BeamSearchOutput:
    """transformers' greedy search (`_sample` with do_sample=False), scored as a beam of one."""
    B, T = idx.shape
    seq = np.concatenate([idx, np.full((B, N), fill, dtype=np.int64)], axis=1)
    unfinished = np.ones(B, dtype=bool)
    total, length, scores = np.zeros(B), np.zeros(B, dtype=np.int64), []
    for cur in range(T, T + N):
        logp = step(seq, cur)                                  # (B, V)
        scores.append(logp)
        pick = np.argmax(logp, axis=-1)                        # (B,)
        total += np.where(unfinished, logp[np.arange(B), pick], 0.0)
        tok = np.where(unfinished, pick, fill)
        length += unfinished
        seq[:, cur] = tok
        unfinished &= ~np.isin(tok, eos)
        if not unfinished.any():
            break
    return BeamSearchOutput(seq[:, :T + len(scores)], total / length.astype(np.float64) ** lp, scores)


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest of each row, largest first (torch.topk; ties: the lower index first)."""
    return np.argsort(-x, axis=-1, kind="stable")[..., :k]


def _take(a: np.ndarray, index: np.ndarray) -> np.ndarray:
    """a[b, index[b, j], ...] for (B, n, ...) arrays: transformers' `_gather_beams`."""
    return np.take_along_axis(a, index.reshape(index.shape + (1,) * (a.ndim - 2)), axis=1)


def _beams(step: _Stepper, idx: np.ndarray, N: int, k: int, lp: float, early_stopping, eos: np.ndarray,
           fill: int, n_return: int) -> BeamSearchOutput:
    """transformers' `_beam_search`, step for step (its letters a-g in the comments)."""
    B, T = idx.shape
    L = T + N                                                  # max_length
    K = max(2, 1 + eos.size) * k                               # candidates kept per step
    in_top_k = np.arange(K) < k                                # only these may finish
    running = np.full((B, k, L), fill, dtype=np.int64)
    running[:, :, :T] = idx[:, None, :]
    running_scores = np.zeros((B, k))
    running_scores[:, 1:] = NEG                                # the k copies of the prompt: one counts
    seqs, fin_scores = running.copy(), np.full((B, k), NEG)    # finished hypotheses, best first
    fin_len = np.zeros((B, k), dtype=np.int64)                 # their generated lengths
    finished = np.zeros((B, k), dtype=bool)
    improvable = np.ones((B, 1), dtype=bool)
    scores, cur = [], T
    while True:
        logp = step(running.reshape(B * k, L), cur)            # a. (B k, V)
        scores.append(logp)
        V = logp.shape[-1]
        acc = (logp.reshape(B, k, V) + running_scores[:, :, None]).reshape(B, k * V)   # b. accumulated
        top = _topk(acc, K)                                    # c. (B, K) best continuations
        top_scores = np.take_along_axis(acc, top, axis=1)
        beam, tok = top // V, top % V
        cand = _take(running, beam)                            # (B, K, L)
        cand[:, :, cur] = tok
        hits = np.isin(tok, eos) | (cur + 1 >= L)              # d. ends in eos or at the length limit
        live = top_scores + hits * NEG                         # e. the best k that did not finish run on
        nxt = _topk(live, k)
        running, running_scores, source = _take(cand, nxt), _take(live, nxt), _take(beam, nxt)
        just = hits & in_top_k                                 # f. new finished hypotheses
        new = top_scores / float(cur + 1 - T) ** lp
        new = new + (finished.all(-1, keepdims=True) & (early_stopping is True)) * NEG
        new = new + (~improvable) * NEG + (~just) * NEG
        best = _topk(np.concatenate([fin_scores, new], axis=1), k)
        seqs = _take(np.concatenate([seqs, cand], axis=1), best)
        fin_scores = _take(np.concatenate([fin_scores, new], axis=1), best)
        fin_len = _take(np.concatenate([fin_len, np.full((B, K), cur + 1 - T)], axis=1), best)
        finished = _take(np.concatenate([finished, just], axis=1), best)
        if step.cache is not None:                             # g. the cache follows the running beams
            step.cache.reorder((source + k * np.arange(B)[:, None]).reshape(-1))
        cur += 1
        hypothetical = L - T if early_stopping == "never" and lp > 0 else cur - T
        best_running = running_scores[:, :1] / float(hypothetical) ** lp
        worst = np.where(finished, fin_scores.min(1, keepdims=True), NEG)
        improvable &= np.any(best_running > worst, axis=-1, keepdims=True)
        if not improvable.any() or (finished.all() and early_stopping is True) or hits.all():
            break
    n = fin_len[:, :n_return].max()
    return BeamSearchOutput(seqs[:, :n_return, :T + n].reshape(B * n_return, T + n),
                            fin_scores[:, :n_return].reshape(-1), scores)


# ------------------------------------------------------------------------------- sample --num-beams

# The sampling flags of `sample` that beam search does not use: set to anything but their default,
# they are refused with --num-beams.
SAMPLING_FLAGS = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p",
                  "repetition_penalty": "--repetition-penalty", "presence_penalty": "--presence-penalty",
                  "frequency_penalty": "--frequency-penalty", "greedy": "--greedy", "stream": "--stream"}


def add_beam_arguments(parser: argparse.ArgumentParser) -> None:
    """--num-beams, --length-penalty, --early-stopping and --eos-token-id for `sample`; called after the
    sampling flags are added (it records their defaults, to refuse those set with --num-beams)."""
    parser.add_argument("--num-beams", "--num_beams", dest="num_beams", type=int, default=None, metavar="K",
                        help="beam search with K beams instead of sampling (transformers' num_beams; 1 is greedy "
                             "search); --num-samples N prints the N best hypotheses, N <= K; the prompt plus --max-new-tokens "
                             "must fit the context (block_size) (default: sample)")
    parser.add_argument("--length-penalty", "--length_penalty", dest="length_penalty", type=float, default=1.0,
                        help="with --num-beams: a hypothesis scores its summed log-probability / length ** this")
    parser.add_argument("--early-stopping", "--early_stopping", dest="early_stopping", default="false",
                        choices=("true", "false", "never"), help="with --num-beams: transformers' early_stopping")
    parser.add_argument("--eos-token-id", "--eos_token_id", dest="eos_token_id", type=_eos_arg, nargs="+",
                        default=None, metavar="ID",
                        help="token id(s) that end a sample or a beam hypothesis, as transformers' eos_token_id; the "
                             "eos token is not printed (as decode(skip_special_tokens=True)); 'none' generates "
                             "past eos (default: the model's eos: a checkpoint's tokenizer eos_token, a model "
                             "directory's generation_config.json or config.json eos_token_id; char and byte "
                             "tokenizers have none)")
    parser.set_defaults(sampling_defaults={d: parser.get_default(d) for d in SAMPLING_FLAGS})


def _eos_arg(text: str) -> int | None:
    """One --eos-token-id value: a token id, or None for 'none'."""
    if text.strip().lower() == "none":
        return None
    return int(text)


_eos_arg.__name__ = "token id (or 'none')"                   # argparse's "invalid <name> value: 'x'"


def check_beam_flags(args: argparse.Namespace) -> None:
    """ValueError naming a sampling flag set with --num-beams, a beam flag without it, or 'none' given
    beside token ids in --eos-token-id."""
    if args.eos_token_id is not None and None in args.eos_token_id and len(args.eos_token_id) > 1:
        raise ValueError("--eos-token-id none turns eos off: give it alone, not beside token ids")
    if args.num_beams is None:
        for dest, flag, default in (("length_penalty", "--length-penalty", 1.0),
                                    ("early_stopping", "--early-stopping", "false")):
            if getattr(args, dest) != default:
                raise ValueError(f"{flag} needs --num-beams K (it applies to beam search only)")
        return
    if args.num_beams < 1:
        raise ValueError(f"--num-beams must be >= 1, got {args.num_beams}")
    for dest, flag in SAMPLING_FLAGS.items():
        if getattr(args, dest, None) != args.sampling_defaults[dest]:
            raise ValueError(f"{flag} does not combine with --num-beams: beam search is deterministic "
                             "(no temperature, top-k, top-p, min-p, penalties or streaming)")
    if args.num_samples > args.num_beams:
        raise ValueError(f"--num-samples {args.num_samples} is more than --num-beams {args.num_beams}: "
                         "beam search returns at most one hypothesis per beam")


def check_beam_length(args: argparse.Namespace, block_size: int, n_prompt: int) -> None:
    """ValueError, in the command's words, when --max-new-tokens is below 1 or the prompt's n_prompt
    tokens plus --max-new-tokens do not fit the context: beam search keeps every position, so the line
    gives the largest --max-new-tokens that fits (or asks for a shorter prompt)."""
    n = args.max_new_tokens
    if n < 1:
        raise ValueError(f"--max-new-tokens must be >= 1 with --num-beams, got {n}")
    if n_prompt + n <= block_size:
        return
    if n_prompt >= block_size:
        raise ValueError(f"the prompt has {n_prompt} tokens, which leaves no room for a new one in the context "
                         f"(block_size {block_size}): beam search keeps every position, so shorten the prompt to "
                         f"at most {block_size - 1} tokens")
    raise ValueError(f"--max-new-tokens {n} plus the prompt's {n_prompt} tokens is longer than the context "
                     f"(block_size {block_size}): beam search keeps every position, so use --max-new-tokens "
                     f"{block_size - n_prompt} or less")


def run_beams(args: argparse.Namespace, model: GPT, tok, ids) -> int:
    """`sample --num-beams K`: print the --num-samples best hypotheses, best first, each followed by its
    score on stderr. Returns the exit status."""
    early = {"true": True, "false": False, "never": "never"}[args.early_stopping]
    try:
        check_beam_length(args, model.config.block_size, len(ids))
        out = beam_search(model, ids, args.max_new_tokens, num_beams=args.num_beams,
                          length_penalty=args.length_penalty, early_stopping=early, eos_token_id=args.eos_token_id,
                          num_return_sequences=args.num_samples, use_cache=not args.no_cache)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for i, (seq, score) in enumerate(zip(out.sequences, out.sequences_scores)):
        if i:
            sys.stdout.write("---------------\n")
        sys.stdout.write(tok.decode(until_eos(seq, len(ids), args.eos_token_id)) + "\n")
        sys.stdout.flush()
        print(f"beam {i + 1}: score {score:.4f} (summed log-probability / length ** {args.length_penalty})",
              file=sys.stderr)
    return 0


def until_eos(seq, n_prompt: int, eos) -> np.ndarray:
    """`seq` (1-D) up to, not including, the first eos id among its generated tokens (after the n_prompt
    prompt tokens): what `decode(skip_special_tokens=True)` prints of transformers' output. `eos`: None or
    a list of ids."""
    seq = np.asarray(seq)
    if not eos:
        return seq
    hits = np.flatnonzero(np.isin(seq[n_prompt:], np.asarray(eos, dtype=np.int64)))
    return seq[:n_prompt + hits[0]] if hits.size else seq
