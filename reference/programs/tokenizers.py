"""Tokenizers for the NumPy GPT: text to token ids and back, and each tokenizer's identity.

Three tokenizers are provided:

* :class:`CharTokenizer` -- one id per distinct character of a corpus (the
  vocabulary is the sorted set of its characters, as in nanoGPT's
  ``shakespeare_char``);
* :class:`ByteTokenizer` -- one id per UTF-8 byte (256 symbols), which can
  encode any text;
* :class:`BPETokenizer` -- a Hugging Face model directory's tokenizer (GPT-2's
  byte-level BPE), run by the ``tokenizers`` library (the ``hf`` extra), which
  is imported only when a BPE tokenizer is built.

Each serialises to a small JSON-friendly dict (``to_dict``) that
``data/prepare.py`` stores in ``meta.json``, with its :func:`tokenizer_digest`
(the identity of its ids: table, or vocabulary, merges and special tokens);
:func:`tokenizer_from_dict` rebuilds the right tokenizer from it.  Reading prepared
data (``meta.json``, the splits, batches) is ``reference.programs.data``.

Only numpy, the standard library and the model's token-id check (``reference.model.check_token_ids``)
are imported at module level.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Union

import numpy as np
import numpy.typing as npt

from ..model import check_token_ids

__all__ = [
    "CharTokenizer",
    "ByteTokenizer",
    "BPETokenizer",
    "Tokenizer",
    "tokenizer_from_dict",
    "tokenizer_digest",
    "tokenizer_identity",
    "describe_tokenizer",
    "BPE_FILES",
    "SPECIAL_ATTRIBUTES",
    "GPT2_SPECIAL",
]

IdArray = npt.NDArray[np.int64]


def _check_ids(ids: Iterable[int] | npt.ArrayLike, vocab_size: int) -> IdArray:
    """``ids`` as a 1-D int64 array; TypeError for non-integers, ValueError for another shape or an id
    outside ``0 <= id < vocab_size`` (``reference.model.check_token_ids``, the model's own check)."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"token ids must be a 1-D sequence, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
    check_token_ids(arr, vocab_size)
    return arr.astype(np.int64, copy=False)


def _check_kind(d: Mapping[str, Any], kind: str) -> None:
    if d.get("kind") != kind:
        raise ValueError(f"expected a tokenizer dict of kind {kind!r}, got kind {d.get('kind')!r}")

class CharTokenizer:
    """Character-level tokenizer: id ``i`` is the character ``chars[i]``."""

    def __init__(self, chars: str) -> None:
        if not isinstance(chars, str):
            raise TypeError(f"chars must be a str, got {type(chars).__name__}")
        if not chars:
            raise ValueError("a CharTokenizer needs at least one character")
        if len(set(chars)) != len(chars):
            raise ValueError("the characters of a CharTokenizer must be distinct")
        self.chars = chars
        # Code points sorted once so that encoding is one vectorised searchsorted.
        codes = np.array([ord(c) for c in chars], dtype=np.int64)
        self._order = np.argsort(codes, kind="stable")
        self._sorted_codes = codes[self._order]

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Build the vocabulary from the sorted set of characters of ``text``."""
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> IdArray:
        """Map each character of ``text`` to its id; unknown characters raise ValueError."""
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        codes = codes.astype(np.int64)
        pos = np.searchsorted(self._sorted_codes, codes)
        pos = np.minimum(pos, self.vocab_size - 1)
        known = self._sorted_codes[pos] == codes
        if not known.all():
            unknown = sorted({chr(c) for c in codes[~known].tolist()})
            shown = ", ".join(repr(c) for c in unknown[:10])
            more = f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""
            raise ValueError(f"character(s) {shown}{more} not in the vocabulary")
        return self._order[pos].astype(np.int64, copy=False)

    def decode(self, ids: Iterable[int] | npt.ArrayLike) -> str:
        """Map ids back to text; ids outside ``[0, vocab_size)`` raise ValueError."""
        chars = self.chars
        return "".join(chars[i] for i in _check_ids(ids, self.vocab_size).tolist())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "char", "chars": self.chars}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CharTokenizer:
        _check_kind(d, "char")
        return cls(d["chars"])

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class ByteTokenizer:
    """Byte-level tokenizer: ids are the bytes of the UTF-8 encoding (256 symbols)."""

    vocab_size: int = 256

    def encode(self, text: str) -> IdArray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Iterable[int] | npt.ArrayLike) -> str:
        """Bytes back to text; an invalid or cut multi-byte sequence becomes U+FFFD."""
        arr = _check_ids(ids, self.vocab_size)
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "byte"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ByteTokenizer:
        _check_kind(d, "byte")
        return cls()

    def __repr__(self) -> str:
        return "ByteTokenizer()"


BPE_FILES = ("tokenizer.json", "vocab.json", "merges.txt")
_BPE_HINT = "pip install -e '.[hf]'"


def _tokenizers_library():
    try:
        import tokenizers
    except ImportError:
        raise ImportError("a BPE tokenizer needs the `tokenizers` library, which is not installed; "
                          f"install the hf extra: {_BPE_HINT}") from None
    return tokenizers


class BPETokenizer:
    """A Hugging Face tokenizer (GPT-2's byte-level BPE) run by the ``tokenizers`` library.

    Built from a model directory (:meth:`from_dir`): its ``tokenizer.json``, or GPT-2's original pair
    ``vocab.json`` + ``merges.txt`` (then set up as transformers' GPT2Tokenizer sets it up: a byte-level BPE
    with no prefix space, decoded by the byte-level decoder, with GPT-2's special token ``<|endoftext|>``
    and the added and special tokens of ``tokenizer_config.json``, ``added_tokens.json`` and
    ``special_tokens_map.json``, each one id wherever it appears in a text: ``_add_special_tokens``). Byte-level BPE maps every UTF-8 text to ids and
    back exactly. ``to_dict`` embeds the whole tokenizer (as ``tokenizer.json`` text), so a checkpoint
    or ``meta.json`` that names it needs no other file. The ids are GPT-2's: id ``i`` is the vocabulary
    entry ``i`` of the files, as the model was trained with.

    ``tokenizer_config`` and ``chat_template``: the directory's settings beyond its ids (the special-token
    roles bos/eos/unk/pad, the tokenizer class, the chat template), carried so that an export writes them
    back (reference/programs/tokenizer_settings.py reads and writes them). Both None unless given; they
    are not part of :func:`tokenizer_identity` (they name and render text, they do not change its ids).
    """

    def __init__(self, tokenizer_json: str, *, tokenizer_config: Mapping[str, Any] | None = None,
                 chat_template: str | None = None) -> None:
        if not isinstance(tokenizer_json, str):
            raise TypeError(f"tokenizer_json must be a str, got {type(tokenizer_json).__name__}")
        if tokenizer_config is not None and not isinstance(tokenizer_config, Mapping):
            raise ValueError(f"tokenizer_config must be a JSON object, got {type(tokenizer_config).__name__}")
        if chat_template is not None and not isinstance(chat_template, str):
            raise ValueError(f"chat_template must be a str (the Jinja text), got {type(chat_template).__name__}")
        lib = _tokenizers_library()
        try:
            self._tok = lib.Tokenizer.from_str(tokenizer_json)
        except Exception as e:                              # the library's own parse error
            raise ValueError(f"not a valid tokenizer.json: {e}") from None
        self._json = tokenizer_json
        self.tokenizer_config = None if tokenizer_config is None else dict(tokenizer_config)
        self.chat_template = chat_template

    @classmethod
    def from_dir(cls, path: str | Path) -> BPETokenizer:
        """The tokenizer of a Hugging Face model directory; ValueError naming the files it looked for."""
        path = Path(path)
        if (path / "tokenizer.json").is_file():
            try:
                return cls((path / "tokenizer.json").read_text(encoding="utf-8"))
            except ValueError as e:
                raise ValueError(f"{path / 'tokenizer.json'}: {e}") from None
        vocab, merges = path / "vocab.json", path / "merges.txt"
        if not (vocab.is_file() and merges.is_file()):
            raise ValueError(f"{path}: no tokenizer files: expected tokenizer.json, or vocab.json and merges.txt")
        lib = _tokenizers_library()
        try:
            tok = lib.Tokenizer(lib.models.BPE.from_file(str(vocab), str(merges)))
        except Exception as e:
            raise ValueError(f"{path}: vocab.json and merges.txt are not a BPE vocabulary: {e}") from None
        tok.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False)   # GPT-2's setup
        tok.decoder = lib.decoders.ByteLevel()
        _add_special_tokens(lib, tok, path)
        return cls(tok.to_str())

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> IdArray:
        """The token ids of ``text`` (no special tokens added; those in the text are one id each).
        ``add_special_tokens``: also those the tokenizer.json's post-processor adds (a BOS for Llama's, none
        for GPT-2's), as transformers' ``tokenizer(text)`` does. ValueError for text that is not UTF-8 (a lone surrogate), naming the character and its position."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            return np.array(self._tok.encode(text, add_special_tokens=add_special_tokens).ids, dtype=np.int64)
        except TypeError:                                   # the library refuses a str it cannot make UTF-8
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"character {text[e.start]!r} at position {e.start} is not UTF-8 text (a lone "
                                 f"surrogate: how Python receives bytes that are not UTF-8, as from a shell's "
                                 f"$'\\xff'); the BPE tokenizer encodes UTF-8 text only") from None
            raise

    def decode(self, ids: Iterable[int] | npt.ArrayLike) -> str:
        """Ids back to text; a cut multi-byte character becomes U+FFFD, as with the byte tokenizer."""
        return self._tok.decode(_check_ids(ids, self.vocab_size).tolist(), skip_special_tokens=False)

    def token_id(self, token: str) -> int | None:
        """The id of the vocabulary entry or added token ``token``, or None if it has none."""
        return self._tok.token_to_id(token)

    def to_dict(self) -> dict[str, Any]:
        """{"kind": "bpe", "tokenizer_json": ...}, with "tokenizer_config" and "chat_template" when set."""
        d = {"kind": "bpe", "tokenizer_json": self._json}
        if self.tokenizer_config is not None:
            d["tokenizer_config"] = dict(self.tokenizer_config)
        if self.chat_template is not None:
            d["chat_template"] = self.chat_template
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BPETokenizer:
        """The inverse of ``to_dict``; a dict without "tokenizer_config" or "chat_template" (written before
        they were carried) gives None for them."""
        _check_kind(d, "bpe")
        if not isinstance(d.get("tokenizer_json"), str):
            raise ValueError("a tokenizer dict of kind 'bpe' needs its 'tokenizer_json' (the tokenizer.json text)")
        return cls(d["tokenizer_json"], tokenizer_config=d.get("tokenizer_config"),
                   chat_template=d.get("chat_template"))

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


#: transformers' special-token attributes, in the order its tokenizers add them (SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
#: GPT2Tokenizer's defaults: bos, eos and unk are all <|endoftext|> (transformers' models/gpt2).
GPT2_SPECIAL = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}


def _read_json(file: Path) -> Any:
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None


def _content(value: Any, where: Path) -> str | None:
    """A special token as tokenizer_config.json or special_tokens_map.json write it: a string or
    {"content": ...}."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"{where}: a special token must be a string or {{\"content\": ...}}, got {value!r}")


def _add_special_tokens(lib, tok, path: Path) -> None:
    """The added and special tokens of a vocab.json + merges.txt directory, as transformers' GPT2Tokenizer
    sets them up: first the tokens with ids (tokenizer_config.json's added_tokens_decoder, added_tokens.json),
    in id order; then the special tokens in SPECIAL_ATTRIBUTES order (special_tokens_map.json over
    tokenizer_config.json over GPT-2's <|endoftext|>) and the additional ones. A token already in the
    vocabulary keeps its id; a new one takes the next id. ValueError for ids the files contradict."""
    config = _read_json(path / "tokenizer_config.json") or {}
    smap = _read_json(path / "special_tokens_map.json") or {}
    for file, d in (("tokenizer_config.json", config), ("special_tokens_map.json", smap)):
        if not isinstance(d, Mapping):
            raise ValueError(f"{path / file}: expected a JSON object, got {type(d).__name__}")
    with_ids: dict[int, tuple[str, bool, dict]] = {}
    for key, d in (config.get("added_tokens_decoder") or {}).items():
        if not (str(key).isdigit() and isinstance(d, Mapping) and isinstance(d.get("content"), str)):
            raise ValueError(f"{path / 'tokenizer_config.json'}: added_tokens_decoder entry {key!r}: {d!r} is not "
                             f"an id with a {{\"content\": ...}}")
        flags = {k: bool(d[k]) for k in ("lstrip", "rstrip", "single_word") if k in d}
        with_ids[int(key)] = (d["content"], bool(d.get("special", False)), flags)
    added = _read_json(path / "added_tokens.json") or {}
    if not isinstance(added, Mapping) or not all(isinstance(i, int) for i in added.values()):
        raise ValueError(f"{path / 'added_tokens.json'}: expected a JSON object of token -> id")
    for content, i in added.items():
        with_ids.setdefault(i, (content, False, {}))
    for i, (content, special, flags) in sorted(with_ids.items()):
        token = lib.AddedToken(content, special=special, normalized=not special, **flags)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
        if tok.token_to_id(content) != i:
            raise ValueError(f"{path}: the added token {content!r} has id {i} in the tokenizer files, but "
                             f"{tok.token_to_id(content)} follows from vocab.json (ids must continue the vocabulary)")
    specials = []
    for attr in SPECIAL_ATTRIBUTES:
        value = _content(smap.get(attr), path / "special_tokens_map.json") \
            or _content(config.get(attr), path / "tokenizer_config.json") or GPT2_SPECIAL.get(attr)
        specials.append(value)
    for source, d in (("special_tokens_map.json", smap), ("tokenizer_config.json", config)):
        more = d.get("additional_special_tokens") or []
        specials += [_content(v, path / source) for v in more]
    for content in dict.fromkeys(v for v in specials if v):
        tok.add_special_tokens([lib.AddedToken(content, special=True, normalized=False)])


Tokenizer = Union[CharTokenizer, ByteTokenizer, BPETokenizer]

_TOKENIZERS: dict[str, type[CharTokenizer] | type[ByteTokenizer] | type[BPETokenizer]] = {
    "char": CharTokenizer,
    "byte": ByteTokenizer,
    "bpe": BPETokenizer,
}


def tokenizer_identity(tok: Tokenizer | Mapping[str, Any]) -> dict[str, Any]:
    """What makes two tokenizers the same ids for the same text: a char tokenizer's table, the byte
    tokenizer's kind, a BPE's vocabulary, merges and added/special tokens (id, text, special) as its
    tokenizer.json holds them (merges in one form, "a b", whichever form the file used). A BPE's
    "tokenizer_config" and "chat_template" are left out: which token is called eos, and how a
    conversation is rendered to text, change no id of any text, so data and checkpoints made before they
    were carried still match those made after."""
    d = tok if isinstance(tok, Mapping) else tok.to_dict()
    kind = d.get("kind")
    if kind == "char":
        return {"kind": "char", "chars": d["chars"]}
    if kind != "bpe":
        return {"kind": kind}
    j = json.loads(d["tokenizer_json"])
    model = j.get("model") or {}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    added = sorted((t["id"], t["content"], bool(t.get("special"))) for t in j.get("added_tokens") or [])
    return {"kind": "bpe", "vocab": sorted((model.get("vocab") or {}).items(), key=lambda kv: kv[1]),
            "merges": merges, "added_tokens": added}


def tokenizer_digest(tok: Tokenizer | Mapping[str, Any]) -> str:
    """"sha256:<hex>" of `tokenizer_identity(tok)` as canonical JSON: equal for two tokenizers exactly when
    they have the same table (char), kind (byte), or vocabulary, merges and special tokens (BPE).
    data/prepare.py records it in meta.json; `train` compares it with the model's or checkpoint's."""
    text = json.dumps(tokenizer_identity(tok), ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def describe_tokenizer(tok: Tokenizer | Mapping[str, Any]) -> str:
    """"sha256:0123456789ab (bpe, 50,257 ids)": what a mismatch message shows of a tokenizer."""
    t = tokenizer_from_dict(tok) if isinstance(tok, Mapping) else tok
    return f"{tokenizer_digest(t)[:19]} ({t.to_dict()['kind']}, {t.vocab_size:,} ids)"


def tokenizer_from_dict(d: Mapping[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from the dict produced by its ``to_dict()``."""
    kind = d.get("kind") if isinstance(d, Mapping) else None
    if kind not in _TOKENIZERS:
        known = ", ".join(repr(k) for k in sorted(_TOKENIZERS))
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {known}")
    return _TOKENIZERS[kind].from_dict(d)
