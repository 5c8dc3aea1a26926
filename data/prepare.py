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

This script holds the text corpus (download, checksum, split by token) and the command line; the
tokenizer choice, meta.json's common fields, the atomic writer and the ``--sft`` / ``--dpo``
preparations are reference/programs/prepared_data.py.

Errors (offline, checksum mismatch, missing/empty/too-short/non-UTF-8 input)
are reported as one line on stderr with a non-zero exit code.  The output
directory is locked while it is written (reference/programs/lock.py): a second
run on it is refused at start, naming the holder's pid (exit code 2).
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import numpy as np

_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:  # so that `python data/prepare.py` finds `reference`
    sys.path.insert(0, str(_REPO_ROOT))

from reference.programs.atomic import os_error_line  # noqa: E402
from reference.programs.data import split_train_val  # noqa: E402
from reference.programs.lock import DirectoryLocked, lock_directory  # noqa: E402
from reference.programs.prepared_data import (VAL_FRACTION, PrepareError, common_meta,  # noqa: E402
                                              prepare_dpo, prepare_sft, previous_source, sha256_hex,
                                              tokenize, write_prepared)

TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINY_SHAKESPEARE_SIZE = 1_115_394
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

#: Smallest context a model could be trained/evaluated with on a tiny corpus.
MIN_CONTEXT = 8
#: Each split must hold at least this many tokens: a context of MIN_CONTEXT
#: plus MIN_CONTEXT more, so that there are several distinct windows.
MIN_SPLIT_TOKENS = 2 * MIN_CONTEXT
DOWNLOAD_TIMEOUT_S = 30.0
DATA_DIR = Path(__file__).resolve().parent


def default_out_dir(kind: str) -> Path:
    if kind not in ("char", "byte"):                      # a model directory: name the data after it
        kind = Path(kind).name
    return DATA_DIR / f"shakespeare_{kind}"


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


def count(n: int, noun: str) -> str:
    """"1 pair", "3 pairs": a count with its noun."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


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


def _with_warnings_said(prepare_fn, *args, **kwargs) -> dict:
    """`prepare_fn(*args, **kwargs)` (prepare_sft, prepare_dpo), each warning it gives printed as one line on
    stderr; then the tokenizer line on stdout. Its meta.json dict."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = prepare_fn(*args, **kwargs)
    for w in caught:
        print(f"prepare.py: warning: {w.message}", file=sys.stderr)
    print(f"tokenizer: {meta['tokenizer']['kind']}, vocab size: {meta['vocab_size']:,}")
    return meta


def _template(used: dict) -> str:
    """The chat template meta.json records, for the summary: "ours (...)" or its file, and its digest."""
    where = "ours (reference/programs/sft.py)" if used["source"] == "ours" else used["source"]
    return f"{where} (sha256 {used['sha256'][:12]})"


def _main(args: argparse.Namespace, out_dir: Path) -> int:
    replacing = previous_source(out_dir)
    try:
        if out_dir.exists() and not out_dir.is_dir():     # the same words as train's out_dir and data_dir
            raise PrepareError(f"--out {out_dir} is a file, not a directory; expected the directory to write "
                               "train.bin, val.bin and meta.json into (or a path that does not exist yet)")
        if args.dpo:
            if args.src or args.sft:
                raise PrepareError("give one of --dpo FILE.jsonl, --sft FILE.jsonl and --from PATH")
            meta = _with_warnings_said(prepare_dpo, args.dpo, out_dir, kind=args.tokenizer)
            sizes = meta["dpo"]
            print(f"train: {count(sizes['train_pairs'], 'pair')}, val: {count(sizes['val_pairs'], 'pair')}; the longest prompt + "
                  f"response is {sizes['longest']} tokens (block_size must be at least {sizes['longest'] - 1})")
            if sizes["conversational_pairs"]:
                print(f"chat template for the {sizes['conversational_pairs']} conversational pairs: "
                      f"{_template(sizes['chat_template'])}")
            print(f"wrote {out_dir}/train.bin, val.bin, train_pairs.bin, val_pairs.bin, meta.json")
            return 0
        if args.sft:
            if args.src:
                raise PrepareError("give --sft FILE.jsonl or --from PATH, not both")
            meta = _with_warnings_said(prepare_sft, args.sft, out_dir, kind=args.tokenizer)
            sizes = meta["sft"]
            print(f"train: {count(sizes['train_examples'], 'example')}, {meta['train_tokens']:,} tokens "
                  f"({sizes['response_tokens']['train']:,} in responses); val: {count(sizes['val_examples'], 'example')}, "
                  f"{meta['val_tokens']:,} tokens ({sizes['response_tokens']['val']:,} in responses)")
            print(f"chat template for \"messages\": {_template(sizes['chat_template'])}")
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
