"""Supervised fine-tuning data: prompt/response examples, the loss mask, and batches with targets ignored
on prompt tokens.

A JSONL file holds one example per line, either

    {"prompt": "Translate: chat", "response": " cat"}
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}

A `messages` line is rendered with CHAT_TEMPLATE: every message as `<|role|>\\n` + content + `\\n`;
the prompt is every message but the last, followed by `<|assistant|>\\n`; the response is the last
message's content + `\\n`, and the last message must be the assistant's. Data prepared with
`--tokenizer MODEL_DIR` whose directory has a chat template of its own is rendered with that one, as
transformers' apply_chat_template does (reference/programs/chat_template.py): prompt =
render(messages[:-1], add_generation_prompt=True), response = render(messages)[len(prompt):]
(`render_with`). A `prompt`/`response` line is used as written (no template); "completion", TRL's
name, is accepted for "response". TRL's conversational prompt-completion form, lists of messages
under "prompt" and "completion", is rendered as SFTTrainer renders it: prompt = render(prompt messages,
add_generation_prompt=True), response = render(prompt + completion messages)[len(prompt):]
(`render_pair`), with the directory's template or CHAT_TEMPLATE.

Each example is tokenised as TRL's SFTTrainer tokenises a prompt-completion example (trl 1.13,
sft_trainer.py `_prepare_dataset`): a `prompt`/`response` line gets the tokenizer's eos_token appended
to its response unless it already ends with it (`add_eos`; char and byte tokenizers have none), and is
tokenised as the tokenizer's __call__ does (`encode_text`: with the special tokens its post-processor
adds, a BOS for Llama's); a `messages` line, or a conversational prompt-completion one, is conversational:
no eos appended, tokenised without special tokens, as apply_chat_template(tokenize=True) does. Then

    ids  = tokenise(prompt + response)     (the whole text at once: a BPE merge may cross the boundary)
    mask = [0] * len(tokenise(prompt)) + [1] * (len(ids) - len(tokenise(prompt)))

with a warning, as TRL gives, when tokenise(prompt) is not a prefix of ids. Char and byte tokenizers have
no merges, so for them this equals the prompt's ids followed by the response's. The examples are packed
one after another into one stream of ids with a mask beside it: mask[j] = 1 where token j belongs to a
response. A window of block_size + 1 tokens at i gives x = ids[i:i+T] and targets y[t] = ids[i+t+1] where
mask[i+t+1] = 1, else -100 (`IGNORE_INDEX`, reference/loss.py's ignore_index): the loss is the mean
over response tokens only. Windows are drawn only where at least one target counts, so no batch has
every target ignored (a NaN loss). `data/prepare.py --sft FILE.jsonl` writes the stream as train.bin /
val.bin, the masks as train_mask.bin / val_mask.bin (uint8) and each example's length as
train_lengths.bin / val_lengths.bin (int64); `train` reads them (meta.json's "sft" key).

That is packing (`--packing`, the default; TRL's SFTConfig name). With `--no-packing` each row is one
whole example instead, right-padded to the longest row of the batch, targets IGNORE_INDEX on prompt
tokens and padding (`PaddedExamples`); an example longer than block_size + 1 tokens is refused.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np

IGNORE_INDEX = -100
CHAT_TEMPLATE = "<|{role}|>\n{content}\n"
ASSISTANT_PREFIX = "<|assistant|>\n"
CHAT_TEMPLATE_DIGEST = hashlib.sha256((CHAT_TEMPLATE + ASSISTANT_PREFIX).encode("utf-8")).hexdigest()   # meta.json
MASK_FILES = {"train": "train_mask.bin", "val": "val_mask.bin"}
LENGTH_FILES = {"train": "train_lengths.bin", "val": "val_lengths.bin"}   # int64 tokens per example
PAD_ID = 0                 # x of a padded position: any id does (its output reaches no target and no earlier position)


class SFTError(ValueError):
    """A bad SFT file or example: one line naming the file, the line and what was expected."""


def render(example: dict, where: str, template=None, eos: str | None = None) -> tuple[str, str]:
    """(prompt, response) text of one decoded JSONL object; SFTError names what is missing, or both "response"
    and "completion" given. `template`: a model directory's chat template (chat_template.ChatTemplate) for
    "messages", else CHAT_TEMPLATE. `eos`: the tokenizer's eos_token, appended to a prompt/response example's
    response unless it ends with it (TRL's add_eos; a "messages" example is left as its template renders it)."""
    if not isinstance(example, dict):
        raise SFTError(f"{where}: expected a JSON object with \"prompt\" and \"response\" (or \"messages\"), "
                       f"got {type(example).__name__}")
    if "messages" in example:
        msgs = check_messages(example["messages"], where)
        if msgs[-1]["role"] != "assistant":
            raise SFTError(f"{where}: the last message is the {msgs[-1]['role']!r}'s; expected the assistant's "
                           "(it is the response the loss is computed on)")
        return render_messages(msgs, where, template)
    if "response" in example and "completion" in example:
        raise SFTError(f"{where}: both 'response' and 'completion' (TRL's name for the response); expected one of them")
    key = "completion" if "completion" in example else "response"
    if is_conversational(example):                           # TRL's conversational prompt-completion form
        return render_pair(example, key, where, template)
    missing = [k for k in ("prompt", key) if k not in example]
    if missing:
        raise SFTError(f"{where}: no {' and no '.join(repr(k) for k in missing)} key (it has {sorted(example)}); "
                       "expected {\"prompt\": ..., \"response\": ...} (\"completion\", TRL's name, is accepted for "
                       "\"response\") or {\"messages\": [...]}")
    for k, other in (("prompt", key), (key, "prompt")):
        if isinstance(example[k], list):
            raise SFTError(f"{where}: {k!r} is a list of messages but {other!r} is a {type(example[other]).__name__}; "
                           f"expected lists of messages under both (TRL's conversational prompt-completion form) "
                           "or strings under both")
    for k in ("prompt", key):
        if not isinstance(example[k], str):
            raise SFTError(f"{where}: {k!r} must be a string, got {type(example[k]).__name__}")
    response = example[key]
    if eos and not response.endswith(eos):                   # TRL's add_eos: non-conversational examples only
        response += eos
    return example["prompt"], response


def is_conversational(example) -> bool:
    """True for a "messages" line, and for TRL's conversational prompt-completion form: lists under both
    "prompt" and "completion" (or "response")."""
    if not isinstance(example, dict):
        return False
    if "messages" in example:
        return True
    key = "completion" if "completion" in example else "response"
    return isinstance(example.get("prompt"), list) and isinstance(example.get(key), list)


def render_pair(example: dict, key: str, where: str, template=None) -> tuple[str, str]:
    """(prompt, response) of TRL's conversational prompt-completion example {"prompt": [msgs], "completion":
    [msgs]}, as SFTTrainer renders it (trl 1.13 sft_trainer.py `tokenize_fn`): prompt =
    render(prompt messages, add_generation_prompt=True), response = render(prompt + completion
    messages)[len(prompt):] (`render_messages`); no eos appended (conversational data)."""
    prompt = check_messages(example["prompt"], where, "prompt")
    completion = check_messages(example[key], where, key)
    return render_messages(prompt + completion, where, template, n_prompt=len(prompt))


def check_messages(msgs, where: str, key: str = "messages") -> list[dict]:
    """`msgs` if it is a non-empty list of {"role": str, "content": str} (other keys kept, for the template),
    else SFTError naming `where` and `key`."""
    if (not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in msgs)):
        raise SFTError(f"{where}: \"{key}\" must be a non-empty list of {{\"role\": str, \"content\": str}}")
    return msgs


def render_messages(msgs: list[dict], where: str, template=None, n_prompt: int | None = None) -> tuple[str, str]:
    """(prompt, response) text of a conversation whose first `n_prompt` messages (default: all but the last) are
    the prompt: prompt = render(msgs[:n_prompt], add_generation_prompt=True), response = render(msgs)[len(prompt):],
    with `template` (a model directory's, `render_with`) or CHAT_TEMPLATE, whose generation prompt is
    ASSISTANT_PREFIX. SFTError when the full rendering does not start with the prompt's (a response that does not
    begin with the assistant's message)."""
    n = len(msgs) - 1 if n_prompt is None else n_prompt
    if template is not None:
        return render_with(template, msgs, where, n)
    prompt = "".join(CHAT_TEMPLATE.format(role=m["role"], content=m["content"]) for m in msgs[:n]) + ASSISTANT_PREFIX
    full = "".join(CHAT_TEMPLATE.format(role=m["role"], content=m["content"]) for m in msgs)
    if not full.startswith(prompt):
        raise SFTError(f"{where}: the response begins with the {msgs[n]['role']!r}'s message; expected the "
                       "assistant's (our template's generation prompt opens the assistant's turn)")
    return prompt, full[len(prompt):]


def render_with(template, msgs: list[dict], where: str, n_prompt: int | None = None) -> tuple[str, str]:
    """(prompt, response) as apply_chat_template gives them: prompt = render(msgs[:n_prompt],
    add_generation_prompt=True) (default: all but the last message), response = render(msgs)[len(prompt):].
    SFTError naming `where` for a template error, or for a full rendering that does not start with the
    prompt's (the response would not be what follows the prompt)."""
    from .chat_template import ChatTemplateError
    n = len(msgs) - 1 if n_prompt is None else n_prompt
    try:
        prompt = template.render(msgs[:n], add_generation_prompt=True)
        full = template.render(msgs)
    except ChatTemplateError as e:
        raise SFTError(f"{where}: {e}") from None
    if not full.startswith(prompt):
        raise SFTError(f"{where}: the chat template of {template.source} renders the conversation as {full[:60]!r}..., "
                       f"which does not start with its rendering of the prompt {prompt[-60:]!r} (expected a template "
                       "whose generation prompt is where the response's first message begins)")
    return prompt, full[len(prompt):]


def read_jsonl(path, error: type[Exception] = None):
    """(where, object) for each non-blank line of a JSONL file, `where` naming the file and line; `error`
    (default SFTError) for a missing or unreadable file, text that is not UTF-8, or a line that is not JSON."""
    error = SFTError if error is None else error
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise error(f"{path}: cannot read it ({e.strerror or e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path} line {n}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None


def read_examples(path, template=None, eos: str | None = None) -> list[tuple[str, str, bool]]:
    """Every (prompt, response, chat) of a JSONL file, blank lines skipped, chat True for a conversational
    line ("messages", or lists of messages under "prompt" and "completion": `is_conversational`);
    SFTError for a bad line or no example. `template`, `eos`: as `render` takes them."""
    out = [(*render(obj, where, template, eos), is_conversational(obj))
           for where, obj in read_jsonl(path)]
    if not out:
        raise SFTError(f"{path} holds no example: expected one JSON object per line")
    return out


def eos_token(tokenizer_dir, tokenizer) -> str | None:
    """The eos_token TRL appends to a prompt/response example's response: the model directory's eos_token
    (chat_template.special_tokens: special_tokens_map.json, tokenizer_config.json, GPT-2's <|endoftext|>)
    where it is one token of `tokenizer`; None for the char and byte tokenizers (`tokenizer_dir` "char" or
    "byte": they have no eos token) and for a directory that names none."""
    if tokenizer_dir in ("char", "byte") or not Path(tokenizer_dir).is_dir():
        return None
    from .chat_template import special_tokens
    eos = special_tokens(tokenizer_dir).get("eos_token")
    return eos if eos and np.asarray(tokenizer.encode(eos)).size == 1 else None


def encode_text(tokenizer, text: str, special_tokens: bool = True) -> np.ndarray:
    """The ids of `text` as transformers' tokenizer(text) gives them (int64): with the special tokens the BPE
    tokenizer's post-processor adds (add_special_tokens=True: a BOS for Llama's, none for GPT-2's), or none
    (`special_tokens` False: apply_chat_template(tokenize=True) tokenises its rendering so). The char and
    byte tokenizers add none."""
    from .tokenizers import BPETokenizer
    if special_tokens and isinstance(tokenizer, BPETokenizer):
        return tokenizer.encode(text, add_special_tokens=True)
    return np.asarray(tokenizer.encode(text), np.int64)


def encode(examples, tokenizer, where: str = "example") -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) of the examples packed one after another: int64 ids and uint8 mask, 1 on response tokens.
    SFTError for a response that is empty after tokenisation (its targets would all be ignored)."""
    ids, mask, _ = encode_examples(examples, tokenizer, where)
    return ids, mask


def encode_examples(examples, tokenizer, where: str = "example") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`encode`'s (ids, mask) and each example's length in tokens (int64, prompt + response): the boundaries
    the one-example-per-row layout needs (`PaddedExamples`). `examples`: (prompt, response) or (prompt,
    response, chat) as `read_examples` gives them; chat True tokenises without special tokens.

    As TRL's SFTTrainer: ids = tokenise(prompt + response), mask 0 on the first len(tokenise(prompt)) of
    them, 1 after; a UserWarning naming the examples whose prompt ids are not a prefix of their ids (TRL
    warns too; its mask is the same)."""
    ids, mask, lengths, mismatched = [], [], [], []
    for k, (prompt, response, *chat) in enumerate(examples, 1):
        special = not (chat and chat[0])
        p = encode_text(tokenizer, prompt, special)
        full = encode_text(tokenizer, prompt + response, special)
        if full.size <= p.size:
            raise SFTError(f"{where} {k}: the response {response!r} is empty after tokenisation: every target would "
                           "be ignored (expected at least one response token)")
        if not np.array_equal(full[:p.size], p):
            mismatched.append(k)
        ids.append(full)
        mask += [np.zeros(p.size, np.uint8), np.ones(full.size - p.size, np.uint8)]
        lengths.append(full.size)
    if mismatched:
        warnings.warn(prefix_warning(where, mismatched, "response"), stacklevel=2)
    return np.concatenate(ids), np.concatenate(mask), np.array(lengths, np.int64)


def prefix_warning(where: str, numbers: list[int], response: str) -> str:
    """TRL's warning, naming the examples: their prompt's ids are not a prefix of prompt + response's."""
    shown = ", ".join(map(str, numbers[:5])) + (" ..." if len(numbers) > 5 else "")
    return (f"{where} {shown}: the prompt's tokens are not a prefix of the tokens of prompt + {response} (a token "
            f"spans the boundary); as TRL does, the first len(prompt tokens) tokens count as the prompt")


def targets(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Next-token targets of a stream, IGNORE_INDEX where the next token is not a response token:
    (n,) ids and mask -> (n - 1,) int64."""
    return np.where(mask[1:].astype(bool), ids[1:].astype(np.int64), IGNORE_INDEX)


def window_starts(mask: np.ndarray, block_size: int) -> np.ndarray:
    """Starts i of the windows ids[i:i+T+1] with at least one counted target (mask[i+1:i+T+1] not all 0)."""
    counted = np.concatenate([[0], np.cumsum(mask[1:], dtype=np.int64)])   # counted[j] = sum(mask[1:j+1])
    i = np.arange(len(mask) - block_size)
    return i[counted[i + block_size] - counted[i] > 0]


def get_batch(ids: np.ndarray, mask: np.ndarray, batch_size: int, block_size: int,
              rng: np.random.Generator, starts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`batch_size` windows of `block_size` tokens among those with a counted target: x (B, T) int64, and
    y (B, T) int64, the next tokens with IGNORE_INDEX on prompt tokens. `starts`: window_starts, if
    the caller keeps them. ValueError when no window has a response token."""
    if starts is None:
        starts = window_starts(mask, block_size)
    if starts.size == 0:
        raise ValueError(f"no window of block_size {block_size} holds a response token: every target would be "
                         "ignored (expected SFT data with responses)")
    ix = starts[rng.integers(0, starts.size, size=batch_size)]
    w = np.lib.stride_tricks.sliding_window_view(ids, block_size + 1)[ix].astype(np.int64)      # (B, T + 1)
    m = np.lib.stride_tricks.sliding_window_view(mask, block_size + 1)[ix]
    return w[:, :-1], np.where(m[:, 1:].astype(bool), w[:, 1:], IGNORE_INDEX)


def load_mask(data_dir, split: str, n_tokens: int) -> np.ndarray:
    """The uint8 loss mask of a prepared SFT split; ValueError if its length differs from the ids'."""
    path = Path(data_dir) / MASK_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the data's meta.json says SFT data; re-run "
                                "python data/prepare.py --sft FILE.jsonl")
    mask = np.fromfile(path, dtype=np.uint8)
    if mask.size != n_tokens or (mask > 1).any():
        raise ValueError(f"{path} holds {mask.size} mask bytes for {n_tokens} tokens (expected one 0 or 1 per "
                         "token): the data is corrupt, re-run python data/prepare.py --sft FILE.jsonl")
    return mask


def load_lengths(data_dir, split: str, n_examples: int, n_tokens: int) -> np.ndarray:
    """The int64 example lengths of a prepared SFT split (LENGTH_FILES, written by data/prepare.py --sft);
    ValueError, one line, if the file is missing (data that does not record its example lengths), not `n_examples`
    positive int64s, or they do not add up to the split's `n_tokens`."""
    path = Path(data_dir) / LENGTH_FILES[split]
    redo = "re-run python data/prepare.py --sft FILE.jsonl"
    if not path.is_file():
        raise ValueError(f"{path} is missing: --no-packing needs each example's length, which this data does not "
                         f"record; {redo}")
    raw = path.read_bytes()
    lengths = np.frombuffer(raw, dtype="<i8") if len(raw) % 8 == 0 else np.zeros(0, np.int64)
    if len(raw) % 8 or lengths.size != n_examples or (lengths < 1).any() or int(lengths.sum()) != n_tokens:
        raise ValueError(f"{path} does not hold {n_examples} example lengths (int64, each >= 1) adding up to the "
                         f"{n_tokens} tokens of {split}.bin: the data is corrupt, {redo}")
    return lengths.astype(np.int64)


class PaddedExamples:
    """One split's examples laid out one per row (`--no-packing`, TRL's `SFTConfig(packing=False)`).

    Row r of a batch is one whole example of n tokens: x[r, :n-1] = ids[s:s+n-1] and y[r, t] = ids[s+t+1]
    where mask[s+t+1] = 1, else IGNORE_INDEX; the rows are right-padded to the longest row of the batch
    (TRL's collator pads to the longest row too): x with PAD_ID, y with IGNORE_INDEX. The loss is the same
    whatever the padding: attention is causal, so a pad at the right never reaches an earlier position,
    and its targets are ignored. So x, y are (B, L) int64 with L = max(n) - 1 <= block_size.

    Examples are drawn uniformly with replacement by the caller's Generator, as the packed windows are.
    ValueError, one line, at construction: an example longer than block_size + 1 tokens (TRL truncates
    it to max_length; we refuse it rather than train on a cut response), one with no counted target (an
    empty prompt and a one-token response: the first token has nothing to be predicted from), or lengths
    that do not cover the split."""

    def __init__(self, ids: np.ndarray, mask: np.ndarray, lengths: np.ndarray, block_size: int,
                 where: str = "example"):
        ids, mask, lengths = np.asarray(ids), np.asarray(mask), np.asarray(lengths, np.int64)
        if mask.shape != ids.shape:
            raise ValueError(f"{where}s: the loss mask has {mask.size} entries for {ids.size} tokens (expected one "
                             "per token)")
        if lengths.ndim != 1 or lengths.size == 0 or (lengths < 1).any() or int(lengths.sum()) != len(ids):
            raise ValueError(f"{where}s: their lengths add up to {int(lengths.sum())} tokens for {len(ids)} "
                             "ids (expected one length >= 1 per example, covering the split)")
        self.ids, self.mask, self.lengths, self.block_size = ids, mask, lengths, block_size
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        long = np.flatnonzero(lengths > block_size + 1)
        if long.size:
            k = int(long[0])
            raise ValueError(f"{where} {k + 1} has {lengths[k]} tokens, more than block_size + 1 = {block_size + 1} "
                             f"(--no-packing puts each example whole in one row; {long.size} example(s) are too long): "
                             "raise --block_size, shorten the example, or train with --packing")
        counted = np.add.reduceat(mask.astype(np.int64), self.offsets) - mask[self.offsets]
        if (counted == 0).any():
            k = int(np.flatnonzero(counted == 0)[0])
            raise ValueError(f"{where} {k + 1} has no target to count: its only response token is its first token, "
                             "which nothing precedes (expected a prompt, or a response of 2 tokens or more)")

    def __len__(self) -> int:
        return self.lengths.size

    def rows(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The examples `index` as padded rows: x, y (len(index), max length - 1) int64."""
        n = self.lengths[index]
        width = int(n.max()) - 1
        x = np.full((len(index), width), PAD_ID, np.int64)                 # (B, L)
        y = np.full((len(index), width), IGNORE_INDEX, np.int64)           # (B, L)
        for r, (s, m) in enumerate(zip(self.offsets[index], n)):
            x[r, :m - 1] = self.ids[s:s + m - 1]
            y[r, :m - 1] = np.where(self.mask[s + 1:s + m].astype(bool), self.ids[s + 1:s + m].astype(np.int64),
                                    IGNORE_INDEX)
        return x, y

    def get_batch(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`batch_size` examples drawn with `rng` (uniform, with replacement), as padded rows (`rows`)."""
        return self.rows(rng.integers(0, len(self), size=batch_size))
