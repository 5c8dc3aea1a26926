"""Prepare a text corpus for training: tokenize it and write train/val splits.

Usage (from the repository root)::

    python data/prepare.py                       # download tiny-shakespeare, char tokenizer
    python data/prepare.py --tokenizer byte      # same corpus, byte tokenizer
    python data/prepare.py --from my.txt --out data/mine
    python data/prepare.py --from my.txt --tokenizer path/to/gpt2 --out data/mine_gpt2
                                                 # a Hugging Face model directory's BPE (hf extra)
    python data/prepare.py --sft examples.jsonl --out data/mine_sft
                                                 # supervised fine-tuning data: ids and a loss mask
    python data/prepare.py --dpo pairs.jsonl --out data/mine_dpo
                                                 # preference pairs for train --objective dpo

Writes ``train.bin`` and ``val.bin`` (token ids as raw uint16, like nanoGPT;
uint32 for a BPE vocabulary of more than 65,536 ids)
and ``meta.json`` (tokenizer, its digest, vocab size, dtype, token counts,
source, SHA-256) into the output directory. A ``--tokenizer DIR`` tokenizer carries the directory's
special tokens and chat template (reference/programs/tokenizer_settings.py), which ``train`` keeps
in its checkpoint and ``export`` writes back.  Each file is written atomically, and
``meta.json`` is written last, so a present ``meta.json`` means a complete
data set.  The first 90% of the tokens are the training split, the last 10%
the validation split.

With ``--sft FILE.jsonl`` (reference/programs/sft.py: the format and the chat template), the
examples are split by example (the last 10%, at least one, for validation), packed, and written as
``train.bin`` / ``val.bin`` with ``train_mask.bin`` / ``val_mask.bin`` (uint8, 1 on response tokens:
the loss is computed on those only) and ``train_lengths.bin`` / ``val_lengths.bin`` (int64, each
example's tokens: ``train --no-packing`` needs them); ``meta.json`` gets an ``"sft"`` key, naming the chat
template ``messages`` lines were rendered with (ours, or with ``--tokenizer DIR`` the directory's own:
reference/programs/chat_template.py) and its SHA-256. With ``--dpo FILE.jsonl``
(reference/programs/dpo.py), each pair's prompt, chosen and rejected ids are written one after another
in ``train.bin`` / ``val.bin``, their lengths in ``train_pairs.bin`` / ``val_pairs.bin`` (int64, n x 3),
and ``meta.json`` gets a ``"dpo"`` key, naming the chat template conversational pairs (lists of
messages, TRL's forms) were rendered with, as for ``--sft``.

Errors (offline, checksum mismatch, missing/empty/too-short/non-UTF-8 input)
are reported as one line on stderr with a non-zero exit code.  The output
directory is locked while it is written (reference/programs/lock.py): a second
run on it is refused at start, naming the holder's pid (exit code 2).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import numpy as np

_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:  # so that `python data/prepare.py` finds `reference`
    sys.path.insert(0, str(_REPO_ROOT))

from reference.programs import dpo, sft  # noqa: E402
from reference.programs.atomic import atomic_write, os_error_line  # noqa: E402
from reference.programs.chat_template import ChatTemplate, ChatTemplateError  # noqa: E402
from reference.programs.tokenizer_settings import tokenizer_from_dir  # noqa: E402
from reference.programs.data import split_train_val  # noqa: E402
from reference.programs.tokenizers import (ByteTokenizer, CharTokenizer, Tokenizer,  # noqa: E402
                                           tokenizer_digest)
from reference.programs.lock import DirectoryLocked, lock_directory  # noqa: E402

TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINY_SHAKESPEARE_SIZE = 1_115_394
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

VAL_FRACTION = 0.1
DTYPE = "uint16"
#: Smallest context a model could be trained/evaluated with on a tiny corpus.
MIN_CONTEXT = 8
#: Each split must hold at least this many tokens: a context of MIN_CONTEXT
#: plus MIN_CONTEXT more, so that there are several distinct windows.
MIN_SPLIT_TOKENS = 2 * MIN_CONTEXT
DOWNLOAD_TIMEOUT_S = 30.0
DATA_DIR = Path(__file__).resolve().parent


class PrepareError(Exception):
    """A user-facing failure: printed as one line on stderr, exit code 1."""


def default_out_dir(kind: str) -> Path:
    if kind not in ("char", "byte"):                      # a model directory: name the data after it
        kind = Path(kind).name
    return DATA_DIR / f"shakespeare_{kind}"


def sha256_hex(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def download(url: str = TINY_SHAKESPEARE_URL, timeout: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """Fetch ``url`` and return its bytes; network failures become PrepareError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except OSError as exc:  # URLError, HTTPError, TimeoutError, connection resets
        reason = getattr(exc, "reason", None) or exc
        raise PrepareError(
            f"could not download {url}: {reason}. Are you offline? "
            "Pass --from PATH to use a local copy of the text instead."
        ) from None


def verify_tiny_shakespeare(raw: bytes) -> None:
    """Raise PrepareError unless ``raw`` is exactly the tiny-shakespeare corpus."""
    if len(raw) != TINY_SHAKESPEARE_SIZE:
        raise PrepareError(
            f"downloaded corpus has the wrong size: expected {TINY_SHAKESPEARE_SIZE} bytes, "
            f"got {len(raw)}"
        )
    digest = sha256_hex(raw)
    if digest != TINY_SHAKESPEARE_SHA256:
        raise PrepareError(
            f"downloaded corpus has the wrong SHA-256 checksum: expected "
            f"{TINY_SHAKESPEARE_SHA256}, got {digest}"
        )


def read_source(path: str | Path) -> bytes:
    """Read a local text file; a file with the tiny-shakespeare size has its hash checked."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PrepareError(f"input file not found: {path}") from None
    except OSError as exc:
        raise PrepareError(f"cannot read input file {path}: {exc.strerror or exc}") from None
    if len(raw) == TINY_SHAKESPEARE_SIZE:
        digest = sha256_hex(raw)
        if digest != TINY_SHAKESPEARE_SHA256:
            print(
                f"warning: {path} has the size of tiny-shakespeare but not its SHA-256 "
                f"(expected {TINY_SHAKESPEARE_SHA256}, got {digest}); continuing",
                file=sys.stderr,
            )
    return raw


def min_total_tokens(val_fraction: float = VAL_FRACTION) -> int:
    """Smallest corpus length whose train and val splits both hold MIN_SPLIT_TOKENS."""
    n = MIN_SPLIT_TOKENS
    while True:
        train, val = split_train_val(np.empty(n), val_fraction)
        if len(train) >= MIN_SPLIT_TOKENS and len(val) >= MIN_SPLIT_TOKENS:
            return n
        n += 1


def tokenize(raw: bytes, kind: str) -> tuple[np.ndarray, Tokenizer]:
    """Tokenize the corpus bytes; return ``(ids, tokenizer)``."""
    if not raw:
        raise PrepareError("the input text is empty; nothing to prepare")
    if kind == "byte":
        tok = ByteTokenizer()
        ids = np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
        return ids, tok
    if kind != "char" and not Path(kind).is_dir():
        raise PrepareError(f"unknown tokenizer {kind!r}; expected 'char', 'byte' or a Hugging Face model "
                           "directory (with tokenizer.json, or vocab.json and merges.txt)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PrepareError(
            f"the input is not valid UTF-8 (byte {exc.start}: {exc.reason}); "
            f"the {'char' if kind == 'char' else 'BPE'} tokenizer needs UTF-8 text -- use --tokenizer byte "
            "for arbitrary bytes"
        ) from None
    if kind != "char":
        try:
            tok = tokenizer_from_dir(kind)                   # with its special tokens and chat template
        except (ImportError, ValueError, OSError) as exc:
            raise PrepareError(str(exc)) from None
        return tok.encode(text), tok
    tok = CharTokenizer.from_text(text)
    if tok.vocab_size > np.iinfo(DTYPE).max + 1:
        raise PrepareError(
            f"the text has {tok.vocab_size} distinct characters, more than the "
            f"{np.iinfo(DTYPE).max + 1} ids a {DTYPE} file can hold; use --tokenizer byte"
        )
    return tok.encode(text), tok


def count(n: int, noun: str) -> str:
    """"1 pair", "3 pairs": a count with its noun."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, with the umask's mode, removing stale temporaries of
    killed writes first (reference/programs/atomic.py: the same writer as checkpoints)."""
    atomic_write(path, data)


def previous_source(out_dir: Path) -> str | None:
    """The source recorded by data prepared earlier in ``out_dir`` ("" if unreadable), or None if none."""
    try:
        meta = json.loads((out_dir / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return ""
    return str(meta.get("source", "")) if isinstance(meta, dict) else ""


def common_meta(tok: Tokenizer, train_tokens: int, val_tokens: int, val_fraction: float, source: str,
                raw: bytes) -> dict[str, Any]:
    """The meta.json fields every prepared directory has (text, SFT or DPO): the tokenizer and its digest,
    the id dtype, the split sizes in tokens and where the data came from."""
    return {
        "tokenizer": tok.to_dict(),
        "tokenizer_digest": tokenizer_digest(tok),
        "vocab_size": tok.vocab_size,
        "dtype": DTYPE if tok.vocab_size <= np.iinfo(DTYPE).max + 1 else "uint32",
        "train_tokens": int(train_tokens),
        "val_tokens": int(val_tokens),
        "val_fraction": val_fraction,
        "source": source,
        "sha256": sha256_hex(raw),
        "num_bytes": len(raw),
    }


def write_prepared(out: Path, files: dict[str, bytes], meta: dict[str, Any]) -> None:
    """Write `files` ({name: bytes}) and meta.json into `out`, meta.json as the commit record: an earlier
    one is removed first and the new one written last, each file atomically. PrepareError naming the
    path for a write that fails (read-only, full disk)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "meta.json").unlink(missing_ok=True)
        for name, data in files.items():
            atomic_write_bytes(out / name, data)
        atomic_write_bytes(out / "meta.json", (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    except OSError as exc:
        raise PrepareError(os_error_line(exc, "choose a writable --out", out)) from None


def prepare(
    raw: bytes,
    out_dir: str | Path,
    kind: str = "char",
    source: str = "",
    val_fraction: float = VAL_FRACTION,
) -> dict[str, Any]:
    """Tokenize ``raw``, split it, write the three files to ``out_dir``; return the meta dict.

    ``meta.json`` is the directory's commit record: an earlier one is removed before the new splits are
    written, and the new one is written last. Each file is written atomically, so a run stopped
    anywhere (Ctrl-C, a full disk) leaves either whole new data or no ``meta.json``, which the loader
    reports as "no prepared data"; never new splits described by the old meta (another vocabulary)."""
    ids, tok = tokenize(raw, kind)
    train, val = split_train_val(ids, val_fraction)
    if len(train) < MIN_SPLIT_TOKENS or len(val) < MIN_SPLIT_TOKENS:
        raise PrepareError(
            f"the text is too short: {len(ids)} tokens split into {len(train)} train / "
            f"{len(val)} val, but each split needs at least {MIN_SPLIT_TOKENS} tokens "
            f"(a context of {MIN_CONTEXT} plus {MIN_SPLIT_TOKENS - MIN_CONTEXT} more); "
            f"provide at least {min_total_tokens(val_fraction)} tokens"
        )
    meta = common_meta(tok, len(train), len(val), val_fraction, source, raw)
    write_prepared(Path(out_dir), {"train.bin": train.astype(meta["dtype"]).tobytes(),
                                   "val.bin": val.astype(meta["dtype"]).tobytes()}, meta)
    return meta


def prepare_sft(path: str | Path, out_dir: str | Path, kind: str = "char", val_fraction: float = VAL_FRACTION
                ) -> dict[str, Any]:
    """Read a JSONL of SFT examples, tokenise, split by example, write ids, masks and meta; return the meta.
    The char tokenizer's alphabet is every character of every prompt and response (template included).
    A model directory's eos_token is appended to prompt/response examples' responses, as TRL does
    (reference/programs/sft.py); meta.json's "sft" records it ("eos_token", null for char and byte)."""
    model_dir = kind not in ("char", "byte") and Path(kind).is_dir()
    tok = tokenize(b" ", kind)[1] if model_dir else None          # a directory's BPE (char: built from the text)
    try:
        template = ChatTemplate.from_dir(kind) if model_dir else None
        eos = sft.eos_token(kind, tok) if model_dir else None
        examples = sft.read_examples(path, template, eos)
    except (sft.SFTError, ChatTemplateError) as exc:
        raise PrepareError(str(exc)) from None
    if len(examples) < 2:
        raise PrepareError(f"{path} holds {len(examples)} example; expected at least 2 (one for validation)")
    if tok is None:
        _, tok = tokenize("".join(p + r for p, r, _ in examples).encode("utf-8"), kind)
    n_val = max(1, round(len(examples) * val_fraction))
    splits = {"train": examples[:-n_val], "val": examples[-n_val:]}
    encoded = {}
    for split, exs in splits.items():
        try:
            encoded[split] = sft.encode_examples(exs, tok, where=f"{path}: {split} example")
        except sft.SFTError as exc:
            raise PrepareError(str(exc)) from None
    meta = common_meta(tok, encoded["train"][0].size, encoded["val"][0].size, val_fraction, str(path),
                       Path(path).read_bytes())
    meta["sft"] = {"train_examples": len(splits["train"]), "val_examples": len(splits["val"]),
                   "masks": sft.MASK_FILES, "lengths": sft.LENGTH_FILES, "ignore_index": sft.IGNORE_INDEX,
                   "response_tokens": {k: int(m.sum()) for k, (_, m, _) in encoded.items()},
                   "longest": int(max(n.max() for _, _, n in encoded.values())),
                   "chat_template": ({"source": "ours", "sha256": sft.CHAT_TEMPLATE_DIGEST} if template is None else {"source": template.source, "sha256": template.digest}),
                   "eos_token": eos}
    files = {}
    for split, (ids, mask, lengths) in encoded.items():
        files[f"{split}.bin"] = ids.astype(meta["dtype"]).tobytes()
        files[sft.MASK_FILES[split]] = mask.astype(np.uint8).tobytes()
        files[sft.LENGTH_FILES[split]] = lengths.astype("<i8").tobytes()
    write_prepared(Path(out_dir), files, meta)
    return meta


def prepare_dpo(path: str | Path, out_dir: str | Path, kind: str = "char", val_fraction: float = VAL_FRACTION
                ) -> dict[str, Any]:
    """Read a JSONL of preference pairs, tokenise, split by pair, write ids, lengths and meta; return the meta.
    Conversational pairs are rendered with the directory's chat template when ``--tokenizer DIR`` has one,
    else with ours (reference/programs/dpo.py); meta.json's "dpo" records which ("chat_template")."""
    model_dir = kind not in ("char", "byte") and Path(kind).is_dir()
    try:
        template = ChatTemplate.from_dir(kind) if model_dir else None
        pairs = dpo.read_pairs(path, template)
    except (dpo.DPOError, ChatTemplateError) as exc:
        raise PrepareError(str(exc)) from None
    if len(pairs) < 2:
        raise PrepareError(f"{path} holds {len(pairs)} pair; expected at least 2 (one for validation)")
    _, tok = tokenize("".join("".join(p[:3]) for p in pairs).encode("utf-8"), kind)
    try:
        eos = sft.eos_token(kind, tok)                    # appended to chosen and rejected, as TRL's DPOTrainer does
    except ChatTemplateError as exc:
        raise PrepareError(str(exc)) from None
    n_val = max(1, round(len(pairs) * val_fraction))
    splits = {"train": pairs[:-n_val], "val": pairs[-n_val:]}
    encoded = {}
    for split, ps in splits.items():
        try:
            encoded[split] = dpo.encode_pairs(ps, tok, block_size=1 << 62, where=f"{path}: {split} pair", eos=eos)
        except dpo.DPOError as exc:
            raise PrepareError(str(exc)) from None
    streams = {k: np.concatenate([np.concatenate(e) for e in enc]) for k, enc in encoded.items()}
    meta = common_meta(tok, streams["train"].size, streams["val"].size, val_fraction, str(path),
                       Path(path).read_bytes())
    meta["dpo"] = {"train_pairs": len(splits["train"]), "val_pairs": len(splits["val"]), "pairs": dpo.PAIR_FILES,
                   "longest": int(max(p.size + max(c.size, r.size) for enc in encoded.values() for p, c, r in enc)), "eos_token": eos,
                   "conversational_pairs": sum(p[3] for p in pairs),
                   "chat_template": ({"source": "ours", "sha256": sft.CHAT_TEMPLATE_DIGEST} if template is None else {"source": template.source, "sha256": template.digest})}
    files = {}
    for split, enc in encoded.items():
        files[f"{split}.bin"] = streams[split].astype(meta["dtype"]).tobytes()
        files[dpo.PAIR_FILES[split]] = np.array([[p.size, c.size, r.size] for p, c, r in enc], np.int64).tobytes()
    write_prepared(Path(out_dir), files, meta)
    return meta


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in --help (unless its help already says it)."""

    def _get_help_string(self, action):
        return action.help if "default" in (action.help or "") else super()._get_help_string(action)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python data/prepare.py",
        description="Tokenize a text corpus (default: tiny-shakespeare) into train/val splits.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--from", dest="src", metavar="PATH", default=None,
        help="read this local text file instead of downloading tiny-shakespeare (default: download it)",
    )
    p.add_argument(
        "--out", metavar="DIR", default=None,
        help="output directory (default: data/shakespeare_char or data/shakespeare_byte)",
    )
    p.add_argument("--tokenizer", default="char", metavar="{char,byte,DIR}",
                   help="char: one id per character (default); byte: one id per UTF-8 byte; DIR: the BPE "
                        "of a Hugging Face model directory (tokenizer.json, or vocab.json + merges.txt; "
                        "needs the hf extra), for fine-tuning that model")
    p.add_argument("--sft", metavar="FILE.jsonl", default=None,
                   help="supervised fine-tuning examples, one JSON object a line: {\"prompt\", \"response\"} "
                        "(or \"completion\") as strings or as lists of messages, or {\"messages\": [...]}; "
                        "writes ids and a loss mask (default: a text corpus)")
    p.add_argument("--dpo", metavar="FILE.jsonl", default=None,
                   help="preference pairs, one JSON object a line: {\"prompt\", \"chosen\", \"rejected\"} as strings "
                        "or lists of messages (\"prompt\" may be left out: the messages chosen and rejected "
                        "share); for train --objective dpo (default: a text corpus)")
    p.add_argument("--timeout", type=float, default=DOWNLOAD_TIMEOUT_S,
                   help="download timeout in seconds, > 0")
    args = p.parse_args(argv)
    if not args.timeout > 0:                       # (also refuses nan)
        p.error(f"argument --timeout: must be a number of seconds > 0, got {args.timeout!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out) if args.out else (DATA_DIR / "dpo" if args.dpo else DATA_DIR / "sft" if args.sft
                                               else default_out_dir(args.tokenizer))
    try:
        lock = lock_directory(out_dir) if out_dir.is_dir() or not out_dir.exists() else None
    except DirectoryLocked as exc:                # one run per directory (reference/programs/lock.py)
        print(f"prepare.py: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"prepare.py: error: {os_error_line(exc, 'choose a writable --out')}", file=sys.stderr)
        return 1
    try:
        return _main(args, out_dir)
    finally:
        if lock is not None:
            lock.release()


def _main(args: argparse.Namespace, out_dir: Path) -> int:
    replacing = previous_source(out_dir)
    try:
        if out_dir.exists() and not out_dir.is_dir():     # the same words as train's out_dir and data_dir
            raise PrepareError(f"--out {out_dir} is a file, not a directory; expected the directory to write "
                               "train.bin, val.bin and meta.json into (or a path that does not exist yet)")
        if args.dpo:
            if args.src or args.sft:
                raise PrepareError("give one of --dpo FILE.jsonl, --sft FILE.jsonl and --from PATH")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                meta = prepare_dpo(args.dpo, out_dir, kind=args.tokenizer)
            for w in caught:
                print(f"prepare.py: warning: {w.message}", file=sys.stderr)
            sizes = meta["dpo"]
            print(f"tokenizer: {meta['tokenizer']['kind']}, vocab size: {meta['vocab_size']:,}")
            print(f"train: {count(sizes['train_pairs'], 'pair')}, val: {count(sizes['val_pairs'], 'pair')}; the longest prompt + "
                  f"response is {sizes['longest']} tokens (block_size must be at least {sizes['longest'] - 1})")
            if sizes["conversational_pairs"]:
                used = sizes["chat_template"]
                print(f"chat template for the {sizes['conversational_pairs']} conversational pairs: "
                      f"{'ours (reference/programs/sft.py)' if used['source'] == 'ours' else used['source']} "
                      f"(sha256 {used['sha256'][:12]})")
            print(f"wrote {out_dir}/train.bin, val.bin, train_pairs.bin, val_pairs.bin, meta.json")
            return 0
        if args.sft:
            if args.src:
                raise PrepareError("give --sft FILE.jsonl or --from PATH, not both")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                meta = prepare_sft(args.sft, out_dir, kind=args.tokenizer)
            for w in caught:
                print(f"prepare.py: warning: {w.message}", file=sys.stderr)
            sizes = meta["sft"]
            print(f"tokenizer: {meta['tokenizer']['kind']}, vocab size: {meta['vocab_size']:,}")
            print(f"train: {count(sizes['train_examples'], 'example')}, {meta['train_tokens']:,} tokens "
                  f"({sizes['response_tokens']['train']:,} in responses); val: {count(sizes['val_examples'], 'example')}, "
                  f"{meta['val_tokens']:,} tokens ({sizes['response_tokens']['val']:,} in responses)")
            used = sizes["chat_template"]
            print(f"chat template for \"messages\": "
                  f"{'ours (reference/programs/sft.py)' if used['source'] == 'ours' else used['source']} "
                  f"(sha256 {used['sha256'][:12]})")
            print(f"wrote {out_dir}/train.bin, val.bin, train_mask.bin, val_mask.bin, train_lengths.bin, "
                  "val_lengths.bin, meta.json")
            return 0
        if args.src:
            raw = read_source(args.src)
            source = str(args.src)
        else:
            print(f"downloading {TINY_SHAKESPEARE_URL}")
            raw = download(TINY_SHAKESPEARE_URL, timeout=args.timeout)
            verify_tiny_shakespeare(raw)
            source = TINY_SHAKESPEARE_URL
        meta = prepare(raw, out_dir, kind=args.tokenizer, source=source)
    except PrepareError as exc:
        print(f"prepare.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:                     # files are written atomically: nothing half-written is left
        print(f"prepare.py: interrupted; {out_dir} holds no partial file", file=sys.stderr)
        return 130
    print(f"tokenizer: {meta['tokenizer']['kind']}, vocab size: {meta['vocab_size']:,}")
    print(f"train: {meta['train_tokens']:,} tokens, val: {meta['val_tokens']:,} tokens")
    print(f"wrote {out_dir}/train.bin, val.bin, meta.json")
    if replacing is not None:
        print(f"replaced the data prepared earlier in {out_dir}" + (f" (from {replacing})" if replacing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
