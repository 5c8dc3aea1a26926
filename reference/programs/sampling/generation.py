"""Generation: `generate` and `iter_generate`, decoding with a key/value cache.

The prompt is run once (prefill), then each new token is a one-position forward at the position after
the cache's. Every next-token distribution is conditioned on the last `block_size` tokens at most,
exactly as nanoGPT's `idx[:, -block_size:]`:

* a prompt longer than the context is cropped to its last block_size tokens (the output still holds
  the whole prompt);
* once the sequence fills the context, each step re-prefills a fresh cache with the last block_size
  tokens, at positions 0..block_size-1. That is the same computation as recomputing the window, so it
  is right for learned positions, RoPE and ALiBi alike (a cache cannot be shifted under learned
  positions, which are absolute).

tests/test_sample.py proves the cached logits equal recomputing the whole window at every step. Each
token is drawn by the rule of logits_process.py.

With `eos_token_id` (one id or a list), generation stops as transformers' `generate` does
(generation/utils.py `_sample`, stopping_criteria.py `EosTokenCriteria`): a sequence that draws an eos id
is finished, every later token of it is the pad id (the first eos id), and generation ends when every
sequence is finished or max_new_tokens is reached. tests/test_sample_eos.py proves it token for token.
"""

from __future__ import annotations

import sys

import numpy as np

from ...model import GPT, KVCache, check_token_ids
from ..options import check, is_int
from .logits_process import apply_penalties, check_penalty_args, check_sampling_args, sample_next

__all__ = ["as_generator", "eos_ids", "generate", "iter_generate"]


def iter_generate(model: GPT, idx, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, greedy: bool = False, rng: np.random.Generator | int | None = None,
                  use_cache: bool = True, verbose: bool = True, min_p: float | None = None,
                  repetition_penalty: float = 1.0, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                  eos_token_id: int | list[int] | None = None):
    """Check every argument now, then return an iterator that yields, as each new token is drawn,
    `(ids, logits)`: the new token ids (B,) and the last-position logits (B, V) they were drawn from
    (before penalties). The prompt `idx` is (T,) or (B, T) token ids (text is refused: encode it first).
    `rng`: a numpy Generator, or an int seed for np.random.default_rng (`as_generator`); None with greedy.
    `eos_token_id`: one id or a list that ends a sequence (the module docstring); the iterator stops after
    the step at which every sequence has drawn one. This is what `sample --stream` prints from.
    """
    check_sampling_args(temperature, top_k, top_p, greedy)
    check_penalty_args(min_p, repetition_penalty, presence_penalty, frequency_penalty)
    check("max_new_tokens", max_new_tokens, is_int(max_new_tokens) and max_new_tokens >= 0, "an integer >= 0")
    rng = as_generator(rng)
    if isinstance(idx, (str, bytes)):
        raise TypeError(f"the prompt is text ({_brief(idx)}); generate takes token ids: encode it first, "
                        "e.g. ids = tokenizer.encode(text)")
    idx = np.asarray(idx)
    if idx.ndim not in (1, 2):
        raise ValueError(f"prompt must be 1-D (T,) or 2-D (B, T) token ids, got shape {idx.shape}")
    if idx.size == 0:
        raise ValueError(f"the prompt is empty: generation needs at least one token (got shape {idx.shape})")
    if idx.ndim == 1:
        idx = idx[None]
    if not np.issubdtype(idx.dtype, np.integer):
        hint = "; encode the text first, e.g. ids = tokenizer.encode(text)" if idx.dtype.kind in "USO" else ""
        raise TypeError(f"token ids must be integers, got dtype {idx.dtype}{hint}")
    check_token_ids(idx, model.config.vocab_size, "prompt token id")   # before any cast: 2**64-1 is not -1
    eos = eos_ids(eos_token_id, model.config.vocab_size)
    block_size = model.config.block_size
    T = idx.shape[1]
    if T > block_size and verbose:
        print(f"note: the prompt has {T} tokens, more than the context of {block_size}; the model sees only its "
              f"last {block_size} (as nanoGPT crops idx[:, -block_size:])", file=sys.stderr)
    rule = dict(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, rng=rng, min_p=min_p)
    penalties = dict(repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                     frequency_penalty=frequency_penalty)
    return _steps(model, idx, max_new_tokens, use_cache, rule, penalties, eos)


def eos_ids(eos_token_id, vocab_size: int) -> np.ndarray:
    """`eos_token_id` (None, one id or a list of ids) as a 1-D int64 array; ValueError naming an id that is
    not an integer in [0, vocab_size)."""
    eos = [] if eos_token_id is None else [eos_token_id] if is_int(eos_token_id) else list(eos_token_id)
    for e in eos:
        if not is_int(e):
            raise ValueError(f"eos_token_id must be integer token ids, got {e!r}")
    check_token_ids(eos, vocab_size, "eos_token_id")
    return np.array(eos, dtype=np.int64)


def as_generator(rng) -> np.random.Generator | None:
    """`rng` as a numpy Generator: a Generator as it is, None as None (greedy needs none), and anything
    `np.random.default_rng` takes (an int seed, a SeedSequence, a BitGenerator) through it, as numpy's
    own functions do. TypeError in one line for anything else."""
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, bool) or not isinstance(rng, (int, np.integer, np.random.SeedSequence,
                                                     np.random.BitGenerator)):
        raise TypeError(f"rng must be a numpy Generator or an int seed >= 0 (np.random.default_rng(seed)), "
                        f"got {_brief(rng)}")
    try:
        return np.random.default_rng(rng)
    except ValueError:                                        # a negative seed
        raise ValueError(f"rng: an int seed must be >= 0 (np.random.default_rng's rule), got {rng}") from None


def _brief(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _steps(model: GPT, idx: np.ndarray, max_new_tokens: int, use_cache: bool, rule: dict, penalties: dict,
           eos: np.ndarray):
    block_size = model.config.block_size
    B, T = idx.shape
    done = np.zeros(B, dtype=bool)                     # sequences that drew an eos id
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
        if eos.size:                                   # transformers: finished sequences get the pad id
            seq[:, n] = np.where(done, eos[0], seq[:, n])
            done |= np.isin(seq[:, n], eos)
        yield seq[:, n].copy(), last.copy()
        if done.all():
            return


def generate(model: GPT, idx, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, greedy: bool = False, rng: np.random.Generator | int | None = None,
             use_cache: bool = True, return_logits: bool = False, verbose: bool = True, min_p: float | None = None,
             repetition_penalty: float = 1.0, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
             eos_token_id: int | list[int] | None = None):
    """Extend token ids `idx` ((T,) or (B, T)) by `max_new_tokens` sampled tokens; same shape kind back.
    With `eos_token_id`, fewer once every sequence has drawn an eos id (the eos kept, later tokens of a
    finished sequence the first eos id), as transformers' `generate`.

    With `return_logits`, also the list of last-position logits (B, V) each token was drawn from.
    `use_cache=False` recomputes the whole (cropped) window at every step: the reference for the cache.
    min_p and the penalties: see the module docstring and docs/sampling.md.
    """
    steps = iter_generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                          greedy=greedy, rng=rng, use_cache=use_cache, verbose=verbose, min_p=min_p,
                          repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                          frequency_penalty=frequency_penalty, eos_token_id=eos_token_id)
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
