"""The next-token rule: penalties, then temperature, top-k, top-p and min-p, then a draw.

In this order (the order of transformers' `generate`: logits processors, then the warpers
temperature -> top-k -> top-p -> min-p; docs/sampling.md):

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
"""

from __future__ import annotations

import numpy as np

from ..options import check, is_int, is_real

__all__ = ["apply_penalties", "check_logits", "check_penalty_args", "check_sampling_args", "next_token_probs",
           "sample_next"]


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None, greedy: bool) -> None:
    """ValueError naming the argument, its value and its range: temperature a finite number > 0 (unless
    greedy), top_k an integer >= 1, top_p in (0, 1] (None: no limit)."""
    check("temperature", temperature, greedy or (is_real(temperature) and temperature > 0), "a positive number",
          " (use greedy decoding for the argmax)")
    check("top_k", top_k, top_k is None or (is_int(top_k) and top_k >= 1), "an integer >= 1 (or None for no limit)")
    check("top_p", top_p, top_p is None or (is_real(top_p) and 0.0 < top_p <= 1.0), "in (0, 1] (or None for no limit)")


def check_penalty_args(min_p: float | None = None, repetition_penalty: float = 1.0, presence_penalty: float = 0.0,
                       frequency_penalty: float = 0.0) -> None:
    """ValueError naming the argument, its value and its range. The ranges are those of the sources:
    min_p in [0, 1] (MinPLogitsWarper), repetition_penalty > 0 (RepetitionPenaltyLogitsProcessor),
    presence and frequency penalties in [-2, 2] (OpenAI's API reference)."""
    check("min_p", min_p, min_p is None or (is_real(min_p) and 0.0 <= min_p <= 1.0),
          "a number in [0, 1] (or None for no limit)")
    check("repetition_penalty", repetition_penalty, is_real(repetition_penalty) and repetition_penalty > 0,
          "a finite number > 0 (1 for none)")
    for name, value in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
        check(name, value, is_real(value) and -2.0 <= value <= 2.0, "a number in [-2, 2] (0 for none)")


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
