"""Writing prepared data: what ``data/prepare.py`` runs to fill a directory that
:mod:`reference.programs.data` reads.

:func:`tokenize` turns a corpus's bytes into ids with the char, byte or a model directory's tokenizer;
:func:`common_meta` gives the ``meta.json`` fields every prepared directory has (text, SFT or DPO);
:func:`write_prepared` writes the files and ``meta.json`` as the directory's commit record, each
atomically (reference/programs/atomic.py); :func:`previous_source` reads what an earlier run prepared.
:func:`prepare_sft` (``--sft``, reference/programs/sft.py) and :func:`prepare_dpo` (``--dpo``,
reference/programs/dpo.py) prepare fine-tuning data: split by example or pair, the last 10% (at least
one) for validation. The text corpus (download, checksum, split by token) and the command line stay in
``data/prepare.py``. Every user-facing failure is a :class:`PrepareError`, one line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from . import dpo, sft
from .atomic import atomic_write, os_error_line
from .chat_template import ChatTemplate, ChatTemplateError
from .tokenizer_settings import tokenizer_from_dir
from .tokenizers import ByteTokenizer, CharTokenizer, Tokenizer, tokenizer_digest

VAL_FRACTION = 0.1
DTYPE = "uint16"


class PrepareError(Exception):
    """A user-facing failure: data/prepare.py prints it as one line on stderr, exit code 1."""


def sha256_hex(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


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
