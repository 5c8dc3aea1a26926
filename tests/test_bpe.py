"""GPT-2's byte-level BPE (reference.programs.tokenizers.BPETokenizer), run by the `tokenizers` library (the hf extra).

The tokenizer files are made offline: `tokenizers` trains a small byte-level BPE and saves GPT-2's
pair of files, vocab.json and merges.txt (or tokenizer.json)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

tokenizers = pytest.importorskip("tokenizers", reason="the hf extra (tokenizers) is not installed")

from reference.programs.tokenizers import BPETokenizer, tokenizer_from_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ["First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n",
          "naïve café, 日本語のテキスト, emoji 😀👍🏽, tabs\tand\r\nCRLF lines  with   spaces\n"] * 20


def make_bpe_files(path: Path, vocab_size: int = 320, tokenizer_json: bool = False) -> Path:
    """A byte-level BPE trained on CORPUS, saved as GPT-2 saves its tokenizer (vocab.json + merges.txt),
    or as one tokenizer.json."""
    tok = tokenizers.ByteLevelBPETokenizer()
    tok.train_from_iterator(CORPUS, vocab_size=vocab_size, min_frequency=1, show_progress=False)
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer_json:
        tok.save(str(path / "tokenizer.json"))
    else:
        tok.save_model(str(path))
        vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        vocab["<|endoftext|>"] = len(vocab)                  # GPT-2's files end with it (id 50256)
        (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> BPETokenizer:
    return BPETokenizer.from_dir(make_bpe_files(tmp_path_factory.mktemp("bpe")))


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_is_exact_on_any_text(bpe, text):
    ids = bpe.encode(text)
    assert ids.dtype == np.int64 and (ids.size == 0 or (0 <= ids.min() and ids.max() < bpe.vocab_size))
    assert bpe.decode(ids) == text


def test_newlines_and_merges_survive(bpe):
    text = CORPUS[0] + "\n\n\n" + CORPUS[1]
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert len(ids) < 0.75 * len(text.encode("utf-8"))         # the merges are used: fewer ids than bytes


def test_both_file_forms_and_the_dict_agree(tmp_path, bpe):
    from_json = BPETokenizer.from_dir(make_bpe_files(tmp_path / "j", tokenizer_json=True))
    text = CORPUS[1] * 3
    assert np.array_equal(from_json.encode(text), bpe.encode(text))
    d = bpe.to_dict()
    assert d["kind"] == "bpe" and isinstance(d["tokenizer_json"], str)
    again = tokenizer_from_dict(d)
    assert isinstance(again, BPETokenizer) and again.vocab_size == bpe.vocab_size
    assert np.array_equal(again.encode(text), bpe.encode(text))
    assert repr(bpe) == f"BPETokenizer(vocab_size={bpe.vocab_size})"


def test_errors(tmp_path, bpe):
    with pytest.raises(ValueError, match="no tokenizer files: expected tokenizer.json, or vocab.json and merges.txt"):
        BPETokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json: not a valid tokenizer.json"):
        BPETokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "vocab.json").write_text("[1]")
    (tmp_path / "merges.txt").write_text("")
    with pytest.raises(ValueError, match="not a BPE vocabulary"):
        BPETokenizer.from_dir(tmp_path)
    with pytest.raises(ValueError, match="needs its 'tokenizer_json'"):
        tokenizer_from_dict({"kind": "bpe"})
    with pytest.raises(TypeError, match="tokenizer_json must be a str"):
        BPETokenizer(3)
    with pytest.raises(TypeError, match="text must be a str"):
        bpe.encode(b"bytes")
    with pytest.raises(ValueError, match="out of range"):
        bpe.decode([bpe.vocab_size])


def test_missing_library_is_named_and_char_byte_still_work(tmp_path):
    """Without `tokenizers`, a BPE tokenizer names the extra to install; char and byte tokenizers work."""
    make_bpe_files(tmp_path)
    script = f"""
import sys
sys.modules['tokenizers'] = None
from reference.programs.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer
assert ByteTokenizer().decode(ByteTokenizer().encode('héllo')) == 'héllo'
assert CharTokenizer.from_text('abc').decode([2, 1]) == 'cb'
try:
    BPETokenizer.from_dir({str(tmp_path)!r})
except ImportError as e:
    print(e)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "needs the `tokenizers` library" in out.stdout and "pip install -e '.[hf]'" in out.stdout


def test_prepare_with_a_model_directory(tmp_path):
    """data/prepare.py --tokenizer DIR writes ids of the directory's BPE, and meta.json names it."""
    sys.path.insert(0, str(ROOT / "data"))
    import prepare as prep
    from reference.programs.data import load_meta, load_split
    src = tmp_path / "corpus.txt"
    src.write_text("".join(CORPUS), encoding="utf-8")
    model_dir = make_bpe_files(tmp_path / "model")
    assert prep.main(["--from", str(src), "--out", str(tmp_path / "data"), "--tokenizer", str(model_dir)]) == 0
    meta = load_meta(tmp_path / "data")
    tok = tokenizer_from_dict(meta["tokenizer"])
    assert meta["tokenizer"]["kind"] == "bpe" and meta["vocab_size"] == tok.vocab_size and meta["dtype"] == "uint16"
    ids = np.concatenate([load_split(tmp_path / "data", "train"), load_split(tmp_path / "data", "val")])
    assert tok.decode(ids) == "".join(CORPUS)
    assert prep.default_out_dir(str(model_dir)).name == "shakespeare_model"
    src.write_bytes(b"\xff" * 100)
    with pytest.raises(prep.PrepareError, match="the BPE tokenizer needs UTF-8 text"):
        prep.prepare(src.read_bytes(), tmp_path / "x", kind=str(model_dir))
    with pytest.raises(prep.PrepareError, match="no tokenizer files"):
        prep.tokenize(b"abc", str(tmp_path))


def test_missing_library_in_process(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match=r"needs the `tokenizers` library.*pip install -e '\.\[hf\]'"):
        BPETokenizer.from_dir(make_bpe_files(tmp_path))
