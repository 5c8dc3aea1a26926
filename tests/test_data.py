"""Tests for reference/programs/tokenizers.py and data.py (tokenizers, batches, splits) and data/prepare.py.

Fast and offline: corpora are generated in tmp_path and the network is
monkeypatched.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.programs import prepared_data
from reference.programs.data import get_batch, load_meta, load_split, split_train_val
from reference.programs.tokenizers import ByteTokenizer, CharTokenizer, tokenizer_from_dict

REPO_ROOT = Path(__file__).resolve().parent.parent
PREPARE_PATH = REPO_ROOT / "data" / "prepare.py"


@pytest.fixture(scope="module")
def prep():
    """data/prepare.py imported as a module (data/ is not a package)."""
    spec = importlib.util.spec_from_file_location("data_prepare", PREPARE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_text(n_words: int = 400, seed: int = 0) -> str:
    """A deterministic pseudo-text with newlines, punctuation and a non-ASCII letter."""
    rng = np.random.default_rng(seed)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "café", "Whether"]
    picks = rng.integers(0, len(words), size=n_words)
    seps = rng.choice([" ", " ", " ", ",\n", ".\n"], size=n_words)
    return "".join(words[p] + s for p, s in zip(picks, seps))


def write_corpus(tmp_path: Path, content: str | bytes, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


# --------------------------------------------------------------------------- hygiene


@pytest.mark.parametrize("module, allowed", [("tokenizers", {"..model"}), ("data", {".tokenizers"})])
def test_reference_data_imports_only_numpy_and_stdlib(module, allowed):
    """At module level, besides the model's token-id check (reference/model.py, numpy only) and, for data.py,
    the tokenizers (tokenizers.py); the BPE tokenizer's library (`tokenizers`, the hf extra) is imported lazily."""
    tree = ast.parse((REPO_ROOT / "reference" / "programs" / f"{module}.py").read_text())
    names, own = set(), set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            own.add(f"{'.' * node.level}{node.module}")
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    assert names - {"numpy"} <= set(sys.stdlib_module_names)
    assert own <= allowed


# --------------------------------------------------------------------------- CharTokenizer


def test_char_tokenizer_vocab_is_sorted_set():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == " dehlorw"
    assert tok.vocab_size == 8
    assert repr(tok) == "CharTokenizer(vocab_size=8)"


def test_char_round_trip_and_dtype():
    text = make_text()
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert ids.min() >= 0 and ids.max() < tok.vocab_size
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text  # lists work too
    assert tok.decode(ids.astype(np.uint16)) == text  # and the on-disk dtype


@settings(max_examples=25, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_char_round_trip_arbitrary_text(text):
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text


def test_char_ids_follow_given_order_even_if_unsorted():
    tok = CharTokenizer("ba")
    assert tok.encode("abba").tolist() == [1, 0, 0, 1]
    assert tok.decode([1, 0]) == "ab"


def test_char_encode_empty():
    ids = CharTokenizer("ab").encode("")
    assert ids.dtype == np.int64 and ids.shape == (0,)
    assert CharTokenizer("ab").decode([]) == ""


def test_char_unknown_character_error():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"'z'.*not in the vocabulary"):
        tok.encode("abz")
    # beyond the vocabulary's largest and smallest code point
    with pytest.raises(ValueError, match=r"'\\n'.*'~'"):
        tok.encode("a\n~")


def test_char_many_unknown_characters_are_summarised():
    tok = CharTokenizer("a")
    with pytest.raises(ValueError, match=r"and 5 more\) not in the vocabulary"):
        tok.encode("bcdefghijklmnop")


@pytest.mark.parametrize("bad_id", [-1, 3, 1000])
def test_char_decode_out_of_range(bad_id):
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match=rf"^token id {bad_id} is out of range for vocab_size 3 \(expected 0 <= id < 3\)$"):
        tok.decode([0, 1, bad_id, 2])


def test_decode_rejects_non_integer_and_2d_ids():
    tok = CharTokenizer("abc")
    with pytest.raises(TypeError, match="integers"):
        tok.decode(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(np.zeros((2, 2), dtype=np.int64))


@pytest.mark.parametrize(
    ("chars", "exc", "msg"),
    [
        (["a", "b"], TypeError, "must be a str"),
        ("", ValueError, "at least one character"),
        ("aba", ValueError, "distinct"),
    ],
)
def test_char_tokenizer_constructor_errors(chars, exc, msg):
    with pytest.raises(exc, match=msg):
        CharTokenizer(chars)


def test_char_from_empty_text_errors():
    with pytest.raises(ValueError, match="at least one character"):
        CharTokenizer.from_text("")


# --------------------------------------------------------------------------- ByteTokenizer


@settings(max_examples=25, deadline=None)
@given(st.text(max_size=200))
def test_byte_round_trip_arbitrary_text(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int64
    assert ids.tolist() == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_byte_decode_cut_multibyte_char_is_replaced():
    tok = ByteTokenizer()
    ids = tok.encode("aé")  # 'é' is two bytes
    assert tok.decode(ids[:-1]) == "a\ufffd"
    assert tok.vocab_size == 256
    assert repr(tok) == "ByteTokenizer()"


def test_byte_decode_out_of_range():
    with pytest.raises(ValueError, match=r"^token id 256 is out of range for vocab_size 256 \(expected 0 <= id < 256\)$"):
        ByteTokenizer().decode([65, 256])


# --------------------------------------------------------------------------- (de)serialisation


@pytest.mark.parametrize("tok", [CharTokenizer.from_text(make_text()), ByteTokenizer()])
def test_to_dict_from_dict_round_trip_through_json(tok):
    d = json.loads(json.dumps(tok.to_dict()))
    again = tokenizer_from_dict(d)
    assert type(again) is type(tok)
    assert again.to_dict() == tok.to_dict()
    assert again.vocab_size == tok.vocab_size
    text = make_text(50, seed=1)
    assert again.encode(text).tolist() == tok.encode(text).tolist()
    assert type(tok).from_dict(d).to_dict() == d


def test_dict_shapes():
    assert CharTokenizer("ab").to_dict() == {"kind": "char", "chars": "ab"}
    assert ByteTokenizer().to_dict() == {"kind": "byte"}


@pytest.mark.parametrize("d", [{"kind": "wordpiece"}, {}, "char", None])
def test_tokenizer_from_dict_unknown_kind(d):
    with pytest.raises(ValueError, match=r"unknown tokenizer kind.*'byte', 'char'"):
        tokenizer_from_dict(d)


def test_from_dict_wrong_kind():
    with pytest.raises(ValueError, match="kind 'char'.*got kind 'byte'"):
        CharTokenizer.from_dict({"kind": "byte"})
    with pytest.raises(ValueError, match="kind 'byte'.*got kind 'char'"):
        ByteTokenizer.from_dict({"kind": "char", "chars": "a"})


# --------------------------------------------------------------------------- get_batch


def test_get_batch_shapes_dtypes_and_shifted_targets():
    data = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(data, batch_size=5, block_size=7, rng=np.random.default_rng(0))
    assert x.shape == y.shape == (5, 7)
    assert x.dtype == y.dtype == np.int64
    # each row is a contiguous window of the data, and y is x shifted by one token
    assert np.array_equal(x, x[:, :1] + np.arange(7))
    assert np.array_equal(y, x + 1)
    assert x.min() >= 0 and y.max() <= 999


def test_get_batch_rows_are_windows_of_real_tokens():
    text = make_text()
    data = CharTokenizer.from_text(text).encode(text).astype(np.uint16)
    rng = np.random.default_rng(3)
    x, y = get_batch(data, 4, 16, rng)
    offsets = np.random.default_rng(3).integers(0, len(data) - 16, size=4)
    for row_x, row_y, i in zip(x, y, offsets):
        assert np.array_equal(row_x, data[i : i + 16])
        assert np.array_equal(row_y, data[i + 1 : i + 17])


def test_get_batch_same_seed_same_batches():
    data = np.arange(500)

    def three_batches(seed):
        rng = np.random.default_rng(seed)
        return [get_batch(data, 3, 8, rng) for _ in range(3)]

    for (xa, ya), (xb, yb) in zip(three_batches(42), three_batches(42)):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert not np.array_equal(three_batches(42)[0][0], three_batches(43)[0][0])


def test_get_batch_minimum_length_works():
    data = np.arange(9)
    x, y = get_batch(data, 4, 8, np.random.default_rng(0))
    assert np.array_equal(x, np.tile(np.arange(8), (4, 1)))
    assert np.array_equal(y, np.tile(np.arange(1, 9), (4, 1)))


def test_get_batch_too_short_names_both_numbers():
    with pytest.raises(ValueError, match=r"data has 8 tokens.*block_size \+ 1 = 9"):
        get_batch(np.arange(8), 2, 8, np.random.default_rng(0))


def test_get_batch_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="1-D"):
        get_batch(np.zeros((4, 4), dtype=np.int64), 2, 2, rng)
    with pytest.raises(ValueError, match=">= 1"):
        get_batch(np.arange(10), 0, 2, rng)
    with pytest.raises(ValueError, match=">= 1"):
        get_batch(np.arange(10), 2, 0, rng)


# --------------------------------------------------------------------------- split_train_val


def test_split_proportions():
    train, val = split_train_val(np.arange(1000))
    assert len(train) == 900 and len(val) == 100
    assert np.array_equal(np.concatenate([train, val]), np.arange(1000))
    # the tiny-shakespeare numbers, as in nanoGPT's prepare.py
    train, val = split_train_val(np.zeros(1_115_394, dtype=np.uint8))
    assert (len(train), len(val)) == (1_003_854, 111_540)
    train, val = split_train_val(np.arange(10), val_fraction=0.5)
    assert train.tolist() == [0, 1, 2, 3, 4] and val.tolist() == [5, 6, 7, 8, 9]


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 1.5])
def test_split_bad_fraction(frac):
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(np.arange(10), frac)


# --------------------------------------------------------------------------- load_meta / load_split


def test_load_missing_data_tells_user_to_run_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"meta\.json is missing.*python data/prepare\.py"):
        load_meta(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"python data/prepare\.py"):
        load_split(tmp_path, "train")


def test_load_split_errors(tmp_path, prep):
    text = make_text()
    prep.prepare(text.encode(), tmp_path, kind="char", source="t")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        load_split(tmp_path, "test")
    (tmp_path / "val.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"val\.bin is missing.*python data/prepare\.py"):
        load_split(tmp_path, "val")
    (tmp_path / "train.bin").write_bytes(b"\x00\x00" * 3)
    with pytest.raises(ValueError, match="holds 3 tokens but meta.json says"):
        load_split(tmp_path, "train")


# --------------------------------------------------------------------------- prepare: success


def test_prepare_end_to_end_char(tmp_path, prep, capsys):
    text = make_text()
    src = write_corpus(tmp_path, text)
    out = tmp_path / "out"
    assert prep.main(["--from", str(src), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]

    meta = load_meta(out)
    tok = tokenizer_from_dict(meta["tokenizer"])
    assert meta["tokenizer"] == {"kind": "char", "chars": "".join(sorted(set(text)))}
    assert meta["vocab_size"] == tok.vocab_size
    assert meta["dtype"] == "uint16"
    assert meta["source"] == str(src)
    assert meta["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    n_train = int(len(text) * 0.9)
    assert (meta["train_tokens"], meta["val_tokens"]) == (n_train, len(text) - n_train)

    train, val = load_split(out, "train"), load_split(out, "val")
    assert train.dtype == np.uint16
    assert (out / "train.bin").stat().st_size == 2 * n_train
    assert tok.decode(train) + tok.decode(val) == text
    assert tok.decode(train) == text[:n_train]

    printed = capsys.readouterr().out
    assert f"vocab size: {tok.vocab_size}" in printed
    assert f"train: {n_train:,} tokens" in printed


def test_prepare_end_to_end_byte_accepts_non_utf8(tmp_path, prep):
    raw = make_text().encode("utf-8") + b"\xff\xfe tail"
    src = write_corpus(tmp_path, raw)
    out = tmp_path / "out"
    assert prep.main(["--from", str(src), "--out", str(out), "--tokenizer", "byte"]) == 0
    meta = load_meta(out)
    assert meta["tokenizer"] == {"kind": "byte"} and meta["vocab_size"] == 256
    ids = np.concatenate([load_split(out, "train"), load_split(out, "val")])
    assert ids.astype(np.uint8).tobytes() == raw


def test_prepare_default_out_dir(tmp_path, prep, monkeypatch):
    monkeypatch.setattr(prep, "DATA_DIR", tmp_path)
    src = write_corpus(tmp_path, make_text())
    assert prep.main(["--from", str(src)]) == 0
    assert (tmp_path / "shakespeare_char" / "meta.json").is_file()
    assert prep.main(["--from", str(src), "--tokenizer", "byte"]) == 0
    assert (tmp_path / "shakespeare_byte" / "meta.json").is_file()


def test_prepare_overwrites_and_leaves_no_temp_files(tmp_path, prep):
    out = tmp_path / "out"
    prep.prepare(make_text(seed=1).encode(), out, source="a")
    meta = prep.prepare(make_text(seed=2).encode(), out, source="b")
    assert load_meta(out) == json.loads(json.dumps(meta))
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_prepare_says_it_replaced_earlier_data(tmp_path, prep, capsys):
    out, a, b = tmp_path / "out", write_corpus(tmp_path, make_text(seed=1)), tmp_path / "b.txt"
    b.write_text(make_text(seed=2))
    assert prep.main(["--from", str(a), "--out", str(out)]) == 0
    assert "replaced the data" not in capsys.readouterr().out
    assert prep.main(["--from", str(b), "--out", str(out)]) == 0
    assert f"replaced the data prepared earlier in {out} (from {a})" in capsys.readouterr().out
    assert load_meta(out)["source"] == str(b)
    for broken in ("{not json", "[1, 2]"):                    # earlier data whose meta cannot be read
        (out / "meta.json").write_text(broken)
        assert prep.main(["--from", str(b), "--out", str(out)]) == 0
        assert capsys.readouterr().out.endswith(f"replaced the data prepared earlier in {out}\n")


@pytest.mark.parametrize("fails_at", ["train.bin", "val.bin", "meta.json"])
def test_a_prepare_stopped_midway_leaves_no_meta_describing_other_splits(tmp_path, prep, monkeypatch, capsys,
                                                                          fails_at):
    """meta.json goes first and comes last: new splits under the old meta (another vocabulary, maybe the
    same token counts) can never be loaded."""
    out = tmp_path / "out"
    prep.prepare(make_text(seed=1).encode(), out, kind="char")
    write = prepared_data.atomic_write_bytes                # the writer data/prepare.py's prepare uses

    def full_disk(path, data):
        if path.name == fails_at:
            raise OSError(28, "No space left on device")
        write(path, data)

    monkeypatch.setattr(prepared_data, "atomic_write_bytes", full_disk)
    src = write_corpus(tmp_path, make_text(seed=2).encode("utf-8") + b"\xff")
    assert prep.main(["--from", str(src), "--out", str(out), "--tokenizer", "byte"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert not (out / "meta.json").exists()
    with pytest.raises(FileNotFoundError, match="no prepared data"):
        load_split(out, "train")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


class FakeResponse(io.BytesIO):
    """What urlopen returns: a readable context manager."""


def fake_urlopen(payload: bytes, calls: list | None = None):
    def urlopen(url, timeout=None):
        if calls is not None:
            calls.append((url, timeout))
        return FakeResponse(payload)

    return urlopen


def pin_expected_corpus(monkeypatch, prep, raw: bytes) -> None:
    """Pretend ``raw`` is the tiny-shakespeare corpus."""
    monkeypatch.setattr(prep, "TINY_SHAKESPEARE_SIZE", len(raw))
    monkeypatch.setattr(prep, "TINY_SHAKESPEARE_SHA256", hashlib.sha256(raw).hexdigest())


def test_prepare_download_verified(tmp_path, prep, monkeypatch, capsys):
    raw = make_text().encode()
    pin_expected_corpus(monkeypatch, prep, raw)
    calls = []
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen(raw, calls))
    out = tmp_path / "out"
    assert prep.main(["--out", str(out), "--timeout", "5"]) == 0
    assert calls == [(prep.TINY_SHAKESPEARE_URL, 5.0)]
    meta = load_meta(out)
    assert meta["source"] == prep.TINY_SHAKESPEARE_URL
    assert meta["sha256"] == prep.TINY_SHAKESPEARE_SHA256
    assert capsys.readouterr().err == ""


def test_checksum_constants_describe_tiny_shakespeare(prep):
    assert prep.TINY_SHAKESPEARE_SIZE == 1_115_394
    assert len(prep.TINY_SHAKESPEARE_SHA256) == 64
    int(prep.TINY_SHAKESPEARE_SHA256, 16)


def test_from_file_with_shakespeare_size_checks_hash(tmp_path, prep, monkeypatch, capsys):
    raw = make_text().encode()
    src = write_corpus(tmp_path, raw)
    # same size and hash: silent
    pin_expected_corpus(monkeypatch, prep, raw)
    assert prep.main(["--from", str(src), "--out", str(tmp_path / "a")]) == 0
    assert "warning" not in capsys.readouterr().err
    # same size, other hash: a warning, but it still succeeds
    monkeypatch.setattr(prep, "TINY_SHAKESPEARE_SHA256", "0" * 64)
    assert prep.main(["--from", str(src), "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "SHA-256" in err and "0" * 64 in err
    assert hashlib.sha256(raw).hexdigest() in err


def test_script_runs_from_repo_root(tmp_path):
    src = write_corpus(tmp_path, make_text())
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "data/prepare.py", "--from", str(src), "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "vocab size" in proc.stdout and (out / "meta.json").is_file()
    proc = subprocess.run(
        [sys.executable, "data/prepare.py", "--from", str(tmp_path / "nope.txt")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "not found" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- prepare: failures


def run_failing(prep, capsys, argv) -> str:
    """Run main(argv), assert it failed cleanly, return its stderr."""
    rc = prep.main(argv)
    captured = capsys.readouterr()
    assert rc != 0
    assert captured.err.startswith("prepare.py: error: ")
    assert "Traceback" not in captured.err
    return captured.err


@pytest.mark.parametrize(
    "exc",
    [
        urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
        urllib.error.HTTPError(
            "http://x", 404, "Not Found", None, None  # type: ignore[arg-type]
        ),
        TimeoutError("timed out"),
    ],
)
def test_offline_fails_cleanly(tmp_path, prep, monkeypatch, capsys, exc):
    def urlopen(url, timeout=None):
        raise exc

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    out = tmp_path / "out"
    err = run_failing(prep, capsys, ["--out", str(out)])
    assert "could not download" in err and "offline" in err and "--from" in err
    assert not out.exists()


def test_download_wrong_checksum(tmp_path, prep, monkeypatch, capsys):
    raw = make_text().encode()
    pin_expected_corpus(monkeypatch, prep, raw)
    tampered = raw.replace(b"to", b"TO", 1)
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen(tampered))
    out = tmp_path / "out"
    err = run_failing(prep, capsys, ["--out", str(out)])
    assert "SHA-256" in err
    assert f"expected {prep.TINY_SHAKESPEARE_SHA256}" in err
    assert f"got {hashlib.sha256(tampered).hexdigest()}" in err
    assert not out.exists()


def test_download_wrong_size(tmp_path, prep, monkeypatch, capsys):
    raw = make_text().encode()
    pin_expected_corpus(monkeypatch, prep, raw)
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen(raw[:-5]))
    err = run_failing(prep, capsys, ["--out", str(tmp_path / "out")])
    assert f"expected {len(raw)} bytes, got {len(raw) - 5}" in err


def test_missing_file(tmp_path, prep, capsys):
    err = run_failing(prep, capsys, ["--from", str(tmp_path / "missing.txt"), "--out", str(tmp_path)])
    assert "not found" in err and "missing.txt" in err


def test_unreadable_input(tmp_path, prep, capsys):
    err = run_failing(prep, capsys, ["--from", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "cannot read" in err


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_empty_text(tmp_path, prep, capsys, kind):
    src = write_corpus(tmp_path, b"")
    err = run_failing(prep, capsys, ["--from", str(src), "--out", str(tmp_path / "o"), "--tokenizer", kind])
    assert "empty" in err


@pytest.mark.parametrize("n_chars", [1, 20, 150])
def test_too_short_text(tmp_path, prep, capsys, n_chars):
    src = write_corpus(tmp_path, ("abcdefghij" * 20)[:n_chars])
    out = tmp_path / "o"
    err = run_failing(prep, capsys, ["--from", str(src), "--out", str(out)])
    assert "too short" in err and f"{n_chars} tokens" in err
    assert f"at least {prep.MIN_SPLIT_TOKENS} tokens" in err
    assert f"at least {prep.min_total_tokens()} tokens" in err
    assert not out.exists()


def test_minimum_length_is_accepted(tmp_path, prep):
    n = prep.min_total_tokens()
    meta = prep.prepare(("abcdefghij" * 20)[:n].encode(), tmp_path, source="s")
    assert meta["val_tokens"] >= prep.MIN_SPLIT_TOKENS
    assert meta["train_tokens"] >= prep.MIN_SPLIT_TOKENS


def test_non_utf8_input_for_char_tokenizer(tmp_path, prep, capsys):
    src = write_corpus(tmp_path, make_text().encode() + b"\xff")
    err = run_failing(prep, capsys, ["--from", str(src), "--out", str(tmp_path / "o")])
    assert "not valid UTF-8" in err and "--tokenizer byte" in err


def test_char_vocab_too_large_for_uint16(tmp_path, prep, capsys):
    text = "".join(chr(c) for c in range(0x100, 0x100 + 70_000) if not 0xD800 <= c <= 0xDFFF)
    src = write_corpus(tmp_path, text)
    err = run_failing(prep, capsys, ["--from", str(src), "--out", str(tmp_path / "o")])
    assert "distinct characters" in err and "65536" in err


def test_unwritable_output(tmp_path, prep, capsys):
    src = write_corpus(tmp_path, make_text())
    blocker = write_corpus(tmp_path, "x", name="a_file")
    err = run_failing(prep, capsys, ["--from", str(src), "--out", str(blocker / "sub")])
    assert "cannot write" in err


def test_tokenize_unknown_kind(prep):
    with pytest.raises(prep.PrepareError, match="unknown tokenizer 'bpe'"):
        prep.tokenize(b"abc", "bpe")


def test_atomic_write_cleans_up_on_failure(tmp_path, monkeypatch):
    from reference.programs import atomic
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)        # the rename that publishes the file
    with pytest.raises(OSError, match="disk full"):
        prepared_data.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
