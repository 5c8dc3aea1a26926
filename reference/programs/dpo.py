"""Direct preference optimisation (DPO): preference pairs, sequence log-probabilities over response tokens,
and the DPO loss with its gradient. Derived in docs/dpo.md.

Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward
Model", eq. 7, as TRL's DPOTrainer computes it (loss_type "sigmoid"):

    loss = -log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))))

averaged over the pairs, where log pi(s) sums the policy's log-probabilities of the response tokens of
sequence s (prompt + response) and ref is the frozen reference model: the starting weights, whose
log-probabilities are computed once (`reference_logprobs`).

A JSONL file holds one pair a line: {"prompt": ..., "chosen": ..., "rejected": ...}, as text, or as TRL's
conversational forms (`read_pairs`): {"prompt": [messages], "chosen": [messages], "rejected": [messages]}, or
{"chosen": [messages], "rejected": [messages]} whose shared first messages are the prompt; tokenised as TRL's
DPOTrainer tokenises them, the tokenizer's eos token appended to a text pair's chosen and rejected
(`encode_pairs`). A batch of B pairs is 2B rows, the chosen sequences then the rejected ones, right-padded
with id 0 to the longest; targets are IGNORE_INDEX on prompt tokens and padding, so each row's
log-probability is over its response only.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

from .options import is_real
from .sft import IGNORE_INDEX, SFTError, check_messages, encode_text, prefix_warning, read_jsonl, render_messages

KEYS = ("prompt", "chosen", "rejected")


class DPOError(SFTError):
    """A bad preference file or pair: one line naming the file, the line and what was expected."""


def extract_prompt(chosen: list, rejected: list) -> tuple[list, list, list]:
    """(prompt, chosen, rejected) of an implicit-prompt pair, as TRL's data_utils.extract_prompt splits it (trl
    1.13): the prompt is chosen[:i], i the first index where chosen and rejected differ; where one is a prefix
    of the other (or they are equal), i = min(len(chosen), len(rejected)) - 1, so each keeps its last message."""
    n = min(len(chosen), len(rejected))
    i = next((k for k in range(n) if chosen[k] != rejected[k]), n - 1)
    return chosen[:i], chosen[i:], rejected[i:]


def conversation(obj: dict, where: str, template=None) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) text of a conversational pair, as TRL's DPOTrainer renders it (trl 1.13,
    dpo_trainer.py `_prepare_dataset`): prompt = render(prompt messages, add_generation_prompt=True), chosen =
    render(prompt + chosen messages)[len(prompt):] (likewise rejected), with `template` (a model directory's)
    or ours (sft.render_messages). Without "prompt" the prompt is extracted (`extract_prompt`). DPOError, one
    line, for messages that are not a non-empty list of {"role": str, "content": str}, an implicit pair whose
    chosen and rejected share no first message, or a reply that does not begin and end with the assistant's
    message (the generation prompt opens the assistant's turn; the last message is what the loss scores)."""
    chosen, rejected = (check_messages(obj[k], where, k) for k in ("chosen", "rejected"))
    if "prompt" in obj:
        prompt = check_messages(obj["prompt"], where, "prompt")
    else:
        prompt, chosen, rejected = extract_prompt(chosen, rejected)
        if not prompt:
            raise DPOError(f"{where}: \"chosen\" and \"rejected\" begin with different messages, so they share no "
                           "prompt (expected, without \"prompt\", the same prompt messages first, then each reply)")
    texts = []
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        for end, m in (("first", reply[0]), ("last", reply[-1])):
            if m["role"] != "assistant":
                raise DPOError(f"{where}: the {name} reply's {end} message is the {m['role']!r}'s; expected the "
                               f"assistant's (a reply is the assistant's turn that follows the prompt)")
        texts.append(render_messages(prompt + reply, where, template, len(prompt)))
    return texts[0][0], texts[0][1], texts[1][1]


def read_pairs(path, template=None) -> list[tuple[str, str, str, bool]]:
    """Every (prompt, chosen, rejected, chat) of a JSONL file, blank lines skipped; chat is True for a
    conversational pair (lists of messages, rendered by `conversation` with `template`, a model directory's
    chat template, or ours), False for a text pair (three strings). DPOError for a bad line; a pair whose
    chosen equals its rejected is kept and warned about (its loss is log 2, its gradient 0)."""
    path = Path(path)
    out, same = [], []
    for where, obj in read_jsonl(path, DPOError):
        if not isinstance(obj, dict):
            raise DPOError(f"{where}: expected a JSON object with \"prompt\", \"chosen\" and \"rejected\", "
                           f"got {type(obj).__name__}")
        chat = isinstance(obj.get("chosen"), list) or isinstance(obj.get("rejected"), list)
        missing = [k for k in KEYS if k not in obj and not (k == "prompt" and chat)]
        if missing:
            raise DPOError(f"{where}: no {' and no '.join(repr(k) for k in missing)} key (it has {sorted(obj)}); "
                           "expected {\"prompt\": ..., \"chosen\": ..., \"rejected\": ...} (strings, or lists of "
                           "messages)")
        if chat:
            bad = [k for k in KEYS if k in obj and not isinstance(obj[k], list)]
            if bad:
                raise DPOError(f"{where}: {bad[0]!r} must be a list of messages, as a conversational pair's "
                               f"\"chosen\" and \"rejected\" are, got {type(obj[bad[0]]).__name__}")
            try:
                texts = conversation(obj, where, template)
            except SFTError as e:
                raise DPOError(str(e)) from None
        else:
            bad = [k for k in KEYS if not isinstance(obj[k], str)]
            if bad:
                raise DPOError(f"{where}: {bad[0]!r} must be a string, got {type(obj[bad[0]]).__name__}")
            texts = tuple(obj[k] for k in KEYS)
        if texts[1] == texts[2]:
            same.append(where.rpartition(' line ')[2])
        out.append((*texts, chat))
    if not out:
        raise DPOError(f"{path} holds no pair: expected one JSON object per line")
    if same:
        warnings.warn(f"{path}: chosen equals rejected on line(s) {', '.join(map(str, same[:5]))}"
                      f"{' ...' if len(same) > 5 else ''}: such a pair teaches nothing (loss log 2, gradient 0)",
                      stacklevel=2)
    return out


def encode_pairs(pairs, tokenizer, block_size: int, where: str = "pair", eos: str | None = None
                 ) -> list[tuple[np.ndarray, ...]]:
    """(prompt ids, chosen ids, rejected ids) of each pair, as TRL's DPOTrainer makes them (trl 1.13,
    dpo_trainer.py `_prepare_dataset`). `pairs`: (prompt, chosen, rejected) or (prompt, chosen, rejected, chat)
    as `read_pairs` gives them. A text pair gets `eos` (the tokenizer's eos_token; None for char and byte)
    appended to chosen and rejected unless they end with it, and is tokenised as the tokenizer's __call__ does
    (sft.encode_text, with the special tokens its post-processor adds); a conversational pair (chat True) is
    its template's rendering, no eos appended, tokenised without special tokens, as apply_chat_template(
    tokenize=True) does. Then prompt ids = tokenise(prompt) and chosen ids = tokenise(prompt + chosen)[len(prompt
    ids):] (likewise rejected); the model is fed prompt ids + chosen ids. A UserWarning, as TRL's, names the
    pairs whose prompt ids are not a prefix of tokenise(prompt + response). DPOError for an empty prompt, a
    response empty after tokenisation, or a prompt + response longer than block_size + 1 tokens."""
    out, mismatched = [], []
    for k, (p, c, r, *chat) in enumerate(pairs, 1):
        special = not (chat and chat[0])
        prompt = encode_text(tokenizer, p, special)
        if prompt.size == 0:
            raise DPOError(f"{where} {k}: the prompt is empty after tokenisation: the response's first token would be "
                           "predicted from nothing (expected a prompt of at least one token)")
        ids = [prompt]
        for name, resp in (("chosen", c), ("rejected", r)):
            if special and eos and not resp.endswith(eos):
                resp += eos
            full = encode_text(tokenizer, p + resp, special)
            if not np.array_equal(full[:prompt.size], prompt) and k not in mismatched:
                mismatched.append(k)
            ids.append(full[prompt.size:])
            if ids[-1].size == 0:
                raise DPOError(f"{where} {k}: the {name} response is empty after tokenisation: its log-probability "
                               "would be over no token (expected at least one response token)")
            if prompt.size + ids[-1].size > block_size + 1:
                raise DPOError(f"{where} {k}: prompt + {name} is {prompt.size + ids[-1].size} tokens, longer than "
                               f"block_size + 1 = {block_size + 1} (expected shorter pairs or a larger block_size)")
        out.append(tuple(ids))
    if mismatched:
        warnings.warn(prefix_warning(where, mismatched, "chosen or rejected"), stacklevel=2)
    return out


def make_batch(encoded, indices) -> tuple[np.ndarray, np.ndarray]:
    """x (2B, T) and y (2B, T) int64 for the pairs `indices`: rows 0..B-1 chosen, B..2B-1 rejected, each
    prompt + response right-padded with 0; y is the next token on response tokens, IGNORE_INDEX elsewhere."""
    seqs = [(encoded[i][0], encoded[i][1]) for i in indices] + [(encoded[i][0], encoded[i][2]) for i in indices]
    T = max(p.size + r.size for p, r in seqs) - 1
    x = np.zeros((len(seqs), T), np.int64)
    y = np.full((len(seqs), T), IGNORE_INDEX, np.int64)
    for row, (p, r) in enumerate(seqs):
        s = np.concatenate([p, r])
        x[row, :s.size - 1] = s[:-1]
        y[row, p.size - 1:s.size - 1] = r                      # position t predicts token t + 1
    return x, y


def sequence_logprobs(logits: np.ndarray, y: np.ndarray):
    """log p(response) of each row: sum over t with y[t] != IGNORE_INDEX of log softmax(logits[t])[y[t]].
    logits (R, T, V), y (R, T) -> ((R,), cache)."""
    shifted = logits - logits.max(-1, keepdims=True)           # (R, T, V): exp cannot overflow
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))   # log softmax
    valid = y != IGNORE_INDEX                                  # (R, T)
    yv = np.where(valid, y, 0)
    token = np.take_along_axis(logp, yv[..., None], -1)[..., 0]     # (R, T)
    return (token * valid).sum(1), (logp, yv, valid)


def sequence_logprobs_backward(dlp: np.ndarray, cache) -> np.ndarray:
    """dL/dlogits (R, T, V) from dL/dlp (R,): on each counted position, dlp * (onehot(y) - softmax)."""
    logp, yv, valid = cache
    dz = -np.exp(logp)                                         # -softmax
    np.put_along_axis(dz, yv[..., None], np.take_along_axis(dz, yv[..., None], -1) + 1.0, -1)
    return dz * (dlp[:, None] * valid)[..., None]


def dpo_loss(lp: np.ndarray, ref_lp: np.ndarray, beta: float):
    """The DPO loss of 2B rows (B chosen then B rejected) and its gradient with respect to lp:
    (loss, dlp (2B,), stats). h = beta ((pc - rc) - (pr - rr)); loss = mean softplus(-h);
    dL/dh = -sigmoid(-h) / B; dL/dpc = beta dL/dh, dL/dpr = -beta dL/dh."""
    B = lp.shape[0] // 2
    reward = beta * (lp - ref_lp)                              # (2B,): the implicit rewards
    h = reward[:B] - reward[B:]                                # (B,) margins
    loss = np.logaddexp(0.0, -h).mean()                        # -log sigmoid(h), without overflow
    dh = -np.exp(-np.logaddexp(0.0, h)) / B                    # -sigmoid(-h) / B
    dlp = beta * np.concatenate([dh, -dh])
    stats = {"reward_chosen": float(reward[:B].mean()), "reward_rejected": float(reward[B:].mean()),
             "accuracy": float((h > 0).mean())}
    return float(loss), dlp, stats


def dpo_loss_and_backward(model, x: np.ndarray, y: np.ndarray, ref_lp: np.ndarray, beta: float, masks=None,
                          weight: float = 1.0):
    """Forward, DPO loss and backward of weight x the loss through `model` (gradients accumulate): (loss,
    stats). `weight`: a piece's share b / B of a batch of B pairs (DPOObjective; 1 for the whole batch)."""
    logits, cache = model.forward(x, masks)
    lp, c_lp = sequence_logprobs(logits, y)
    loss, dlp, stats = dpo_loss(lp, ref_lp, beta)
    model.backward(sequence_logprobs_backward(dlp * weight, c_lp).astype(logits.dtype), cache)
    return loss, stats


def reference_logprobs(model, encoded, batch_size: int = 8) -> np.ndarray:
    """(n, 2) log-probabilities of every pair's chosen and rejected response under `model` (no dropout):
    the frozen reference, computed once from the starting weights."""
    out = np.empty((len(encoded), 2))
    for lo in range(0, len(encoded), batch_size):
        idx = list(range(lo, min(lo + batch_size, len(encoded))))
        x, y = make_batch(encoded, idx)
        lp, _ = sequence_logprobs(model.forward(x)[0], y)
        out[idx, 0], out[idx, 1] = lp[:len(idx)], lp[len(idx):]
    return out


PAIR_FILES = {"train": "train_pairs.bin", "val": "val_pairs.bin"}


def split_stream(ids: np.ndarray, lengths: np.ndarray, where: str = "pairs") -> list[tuple[np.ndarray, ...]]:
    """The (prompt, chosen, rejected) ids of each pair from a stream of them one after another and their
    (n, 3) lengths (data/prepare.py --dpo); ValueError when the lengths do not add up to the stream."""
    if lengths.ndim != 2 or lengths.shape[1] != 3 or (lengths < 0).any() or lengths.sum() != ids.size:
        raise ValueError(f"{where}: the pair lengths do not describe the {ids.size} tokens (expected (n, 3) "
                         "lengths adding up to them): the data is corrupt, re-run python data/prepare.py --dpo")
    bounds = np.concatenate([[0], np.cumsum(lengths.reshape(-1))])
    parts = [ids[bounds[j]:bounds[j + 1]].astype(np.int64) for j in range(lengths.size)]
    return [tuple(parts[3 * k:3 * k + 3]) for k in range(lengths.shape[0])]


def load_pairs(data_dir, split: str, ids: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    path = Path(data_dir) / PAIR_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the data's meta.json says preference pairs; re-run "
                                "python data/prepare.py --dpo FILE.jsonl")
    return split_stream(ids, np.fromfile(path, dtype=np.int64).reshape(-1, 3), str(path))


def check_lengths(encoded, block_size: int, where: str = "pair") -> None:
    """DPOError naming the first pair whose prompt + response is longer than block_size + 1 tokens."""
    for k, (p, c, r) in enumerate(encoded, 1):
        for name, resp in (("chosen", c), ("rejected", r)):
            if p.size + resp.size > block_size + 1:
                raise DPOError(f"{where} {k}: prompt + {name} is {p.size + resp.size} tokens, longer than "
                               f"block_size + 1 = {block_size + 1} (expected shorter pairs or a larger block_size)")


class DPOObjective:
    """What `Trainer` calls for `--objective dpo`: batches of pairs and the loss. Pairs per split,
    the reference's log-probabilities computed once by `prepare(model)` (or given).

    A batch is (x, y, ref): 2B rows, B chosen then B rejected (`make_batch`), and their 2B reference
    log-probabilities. For micro-batches and ranks (reference/programs/distributed.py::DataParallel
    .forward_backward, whose protocol this follows: `units`, `count`, `piece`, `loss_and_backward`) the
    units are pairs: a piece of pairs [a, b) holds both rows of each of its pairs, padded to its own
    longest row, and weighs (b - a) / B, its share of the batch's mean over pairs."""

    def __init__(self, train, val, beta: float, reference: dict | None = None):
        if not (is_real(beta) and beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
        self.pairs = {"train": train, "val": val}
        self.beta = float(beta)
        self.reference = reference

    def prepare(self, model) -> None:
        """The reference's log-probabilities of every pair, from `model` (the starting weights). Every rank of
        a data-parallel run computes all of them, in the same batches as one process: the same bits on every
        rank and at any N, and no message before the ranks have met (docs/dpo.md)."""
        if self.reference is None:
            self.reference = {k: reference_logprobs(model, v) for k, v in self.pairs.items()}

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the reference's log-probabilities (JSON floats round-trip exactly), so a
        resumed run compares with the weights its run started from, whatever the resumed model was built from."""
        return {"kind": "dpo", "reference": {k: v.tolist() for k, v in self.reference.items()},
                "pairs_sha256": self.pairs_digest()}

    def pairs_digest(self) -> dict[str, str]:
        """Per split, the sha256 of its pairs' token ids (each pair's three lengths, then its ids, as int64):
        the sequences the reference's log-probabilities belong to."""
        out = {}
        for split, pairs in self.pairs.items():
            h = hashlib.sha256()
            for parts in pairs:
                h.update(np.array([q.size for q in parts], np.int64).tobytes())
                for q in parts:
                    h.update(np.ascontiguousarray(q, np.int64).tobytes())
            out[split] = h.hexdigest()
        return out

    def load_state_dict(self, state, where="the checkpoint") -> None:
        """The reference's log-probabilities from a checkpoint's state; ValueError when it holds none for these
        pairs: another count, or (its "pairs_sha256") other pairs of the same count, whose log-probabilities
        would be compared with the wrong sequences."""
        ok = isinstance(state, dict) and state.get("kind") == "dpo" and isinstance(state.get("reference"), dict)
        ref = {k: np.asarray(v, np.float64) for k, v in state["reference"].items()} if ok else {}
        if not ok or {k: v.shape for k, v in ref.items()} != {k: (len(p), 2) for k, p in self.pairs.items()}:
            raise ValueError(f"{where} holds no DPO reference log-probabilities for these pairs: expected a run "
                             "trained with --objective dpo on the same data")
        saved, ours = state.get("pairs_sha256"), self.pairs_digest()
        for split in ours:
            if saved is not None and saved.get(split) != ours[split]:
                raise ValueError(f"{where} holds DPO reference log-probabilities of other {split} pairs (sha256 "
                                 f"{str(saved.get(split))[:12]}, these pairs' {ours[split][:12]}): expected the "
                                 "data the run was trained on (its --data_dir), or a new run on this data")
        self.reference = ref

    def get_batch(self, split: str, batch_size: int, rng: np.random.Generator):
        idx = rng.integers(0, len(self.pairs[split]), size=batch_size)
        x, y = make_batch(self.pairs[split], idx)
        ref = self.reference[split][idx]
        return x, y, np.concatenate([ref[:, 0], ref[:, 1]])

    # ---- the pieces of a batch (micro-batches, ranks)

    def units(self, batch) -> int:
        """The batch's pairs, B: what micro-batches and ranks share out."""
        return len(batch[2]) // 2

    def count(self, batch, a: int, b: int) -> int:
        """The loss is a mean over pairs: pairs [a, b) count b - a."""
        return b - a

    def piece(self, batch, a: int, b: int):
        """Pairs [a, b) of the batch as a batch of their own, (x, y, ref) of 2(b - a) rows, and its rows of the
        batch: each pair's chosen row a + k and rejected row B + a + k, together. Padded to the piece's own
        longest row (make_batch of those pairs), cut from the batch's: no column after it holds a target."""
        x, y, ref = batch
        B = self.units(batch)
        rows = np.r_[a:b, B + a:B + b]                             # chosen rows, then their rejected rows
        counted = (y[rows] != IGNORE_INDEX).any(0)                 # (T,): a column some row of the piece counts
        T = int(np.flatnonzero(counted)[-1]) + 1 if counted.any() else 1
        return (x[rows, :T], y[rows, :T], ref[rows]), rows

    def loss_and_backward(self, model, batch, masks=None, weight: float = 1.0) -> float:
        x, y, ref = batch
        return dpo_loss_and_backward(model, x, y, ref.astype(np.float64), self.beta, masks, weight)[0]

    def loss(self, model, batch) -> float:
        x, y, ref = batch
        lp, _ = sequence_logprobs(model.forward(x)[0], y)
        return dpo_loss(lp, ref, self.beta)[0]
