"""Tokenizer identity travels with the data: data/prepare.py records `tokenizer_digest` (a char table, or a
BPE's vocabulary, merges and special tokens) in meta.json, and `train --init-from` and `--resume` refuse
data prepared with another tokenizer, even of the same vocabulary size, in one line naming both. Data
prepared without a digest still loads. And a prompt that is not UTF-8 (bytes the shell hands Python as
lone surrogates) is one line with the BPE tokenizer, as with char and byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tokenizers = pytest.importorskip("tokenizers", reason="the hf extra (tokenizers) is not installed")
pytest.importorskip("safetensors", reason="the hf extra (safetensors) is not installed")

from reference import GPT, GPTConfig  # noqa: E402
from reference.programs import hf_export  # noqa: E402
from reference.programs.checkpoint import save_checkpoint  # noqa: E402
from reference.programs.cli import main  # noqa: E402
from reference.programs.data import load_meta  # noqa: E402
from reference.programs.tokenizers import BPETokenizer, CharTokenizer, tokenizer_digest, tokenizer_from_dict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "data"))
import prepare as prep  # noqa: E402
from test_bpe import CORPUS, make_bpe_files  # noqa: E402

TRAIN = ["--block_size", "8", "--batch_size", "2", "--max_iters", "2", "--eval_interval", "2", "--eval_iters", "1",
         "--no-progress"]


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def swapped(src: Path, dst: Path) -> Path:
    """The tokenizer files of `src` with the ids of two vocabulary entries exchanged: the same size, other ids."""
    shutil.copytree(src, dst)
    vocab = json.loads((dst / "vocab.json").read_text(encoding="utf-8"))
    a, b = sorted(vocab, key=vocab.get)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (dst / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return dst


@pytest.fixture
def dirs(tmp_path):
    """A GPT-2 model directory with tokenizer A, data prepared with A, and data prepared with B (A with two
    ids exchanged: the same vocabulary size)."""
    tok_a = make_bpe_files(tmp_path / "tok_a")
    tok_b = swapped(tok_a, tmp_path / "tok_b")
    a = BPETokenizer.from_dir(tok_a)
    assert a.vocab_size == BPETokenizer.from_dir(tok_b).vocab_size
    model = tmp_path / "model"
    hf_export.save_pretrained(GPT(GPTConfig(vocab_size=a.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8)), model)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(tok_a / f, model / f)
    src = tmp_path / "corpus.txt"
    src.write_text("".join(CORPUS), encoding="utf-8")
    for name, tok in (("data_a", tok_a), ("data_b", tok_b)):
        assert prep.main(["--from", str(src), "--out", str(tmp_path / name), "--tokenizer", str(tok)]) == 0
    return model, tmp_path / "data_a", tmp_path / "data_b"


def test_meta_records_the_digest(dirs):
    _, data_a, data_b = dirs
    meta_a, meta_b = load_meta(data_a), load_meta(data_b)
    assert meta_a["tokenizer_digest"] == tokenizer_digest(tokenizer_from_dict(meta_a["tokenizer"]))
    assert meta_a["tokenizer_digest"].startswith("sha256:") and meta_a["tokenizer_digest"] != meta_b["tokenizer_digest"]
    assert meta_a["vocab_size"] == meta_b["vocab_size"]


def test_init_from_refuses_another_tokenizer_of_the_same_size(dirs, tmp_path, capsys):
    """Before: only the sizes were compared, and the run trained on ids that mean other text to the model."""
    model, data_a, data_b = dirs
    rc, _, err = cli(capsys, "train", "--init-from", model, "--data_dir", data_b, "--out_dir", tmp_path / "o", *TRAIN)
    digest_b, digest_a = load_meta(data_b)["tokenizer_digest"], load_meta(data_a)["tokenizer_digest"]
    line = err.strip().splitlines()[-1]
    assert rc == 2 and line.startswith(f"error: tokenizer mismatch: the data in {data_b} was prepared with "
                                       f"tokenizer {digest_b[:19]} (bpe, "), err
    assert f"the model in {model} has {digest_a[:19]} (bpe, " in line and f"--tokenizer {model}" in line
    assert "Traceback" not in err and not (tmp_path / "o").exists()
    rc, _, err = cli(capsys, "train", "--init-from", model, "--data_dir", data_a, "--out_dir", tmp_path / "o", *TRAIN)
    assert rc == 0, err


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_sft_and_dpo_data_carry_the_digest_and_are_checked(dirs, tmp_path, capsys, kind):
    """SFT and DPO data record the digest like a text corpus (one meta builder for the three), so
    `train --init-from` refuses such data prepared with another tokenizer of the same size."""
    model, _, _ = dirs
    row = ({"prompt": "ROMEO: what light?", "response": " It is the east."} if kind == "sft" else
           {"prompt": "the", "chosen": " east", "rejected": " west"})     # a pair within the context
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps(row) for _ in range(4)) + "\n", encoding="utf-8")
    for name, tok in (("a", tmp_path / "tok_a"), ("b", tmp_path / "tok_b")):
        assert prep.main([f"--{kind}", str(jsonl), "--out", str(tmp_path / f"{kind}_{name}"), "--tokenizer", str(tok)]) == 0
    meta_a, meta_b = load_meta(tmp_path / f"{kind}_a"), load_meta(tmp_path / f"{kind}_b")
    assert meta_a["tokenizer_digest"] == tokenizer_digest(tokenizer_from_dict(meta_a["tokenizer"]))
    assert meta_a["tokenizer_digest"] != meta_b["tokenizer_digest"]
    objective = ["--objective", "dpo"] if kind == "dpo" else []
    rc, _, err = cli(capsys, "train", "--init-from", model, "--data_dir", tmp_path / f"{kind}_b",
                     "--out_dir", tmp_path / "o", *objective, *TRAIN)
    assert rc == 2 and "error: tokenizer mismatch" in err and "Traceback" not in err, err


def test_resume_names_both_digests(dirs, tmp_path, capsys):
    model, data_a, data_b = dirs
    out = tmp_path / "o"
    rc, _, err = cli(capsys, "train", "--init-from", model, "--data_dir", data_a, "--out_dir", out,
                     "--always_save_checkpoint", *TRAIN)
    assert rc == 0, err
    rc, _, err = cli(capsys, "train", "--resume", "--data_dir", data_b, "--out_dir", out, "--max_iters", 4)
    digest_b, digest_a = load_meta(data_b)["tokenizer_digest"], load_meta(data_a)["tokenizer_digest"]
    line = err.strip().splitlines()[-1]                    # after the settings line
    assert rc == 2 and line.startswith(f"error: {out / 'ckpt.safetensors'}: tokenizer mismatch: the checkpoint "
                                       f"was trained with tokenizer {digest_a[:19]} (bpe, "), err
    assert f"the data in {data_b} was prepared with {digest_b[:19]} (bpe, " in line and "Traceback" not in err


def test_data_without_a_digest_still_loads_and_a_wrong_one_is_refused(dirs, tmp_path, capsys):
    model, data_a, _ = dirs
    meta = json.loads((data_a / "meta.json").read_text(encoding="utf-8"))
    del meta["tokenizer_digest"]
    (data_a / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    rc, _, err = cli(capsys, "train", "--init-from", model, "--data_dir", data_a, "--out_dir", tmp_path / "o", *TRAIN)
    assert rc == 0, err
    meta["tokenizer_digest"] = "sha256:" + "0" * 64
    (data_a / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ValueError, match="is not the digest of its 'tokenizer'"):
        load_meta(data_a)


def test_the_digest_is_the_ids_not_the_file(tmp_path):
    tok = BPETokenizer.from_dir(make_bpe_files(tmp_path / "t"))
    d = tok.to_dict()
    reformatted = {"kind": "bpe", "tokenizer_json": json.dumps(json.loads(d["tokenizer_json"]), indent=4)}
    assert tokenizer_digest(reformatted) == tokenizer_digest(tok) == tokenizer_digest(tokenizer_from_dict(d))
    assert tokenizer_digest(BPETokenizer.from_dir(swapped(tmp_path / "t", tmp_path / "s"))) != tokenizer_digest(tok)
    merges = tmp_path / "m"                                  # the same vocabulary, two merges in another order
    shutil.copytree(tmp_path / "t", merges)
    lines = (merges / "merges.txt").read_text(encoding="utf-8").splitlines()
    lines[1], lines[2] = lines[2], lines[1]                  # (line 0 is the "#version" header)
    (merges / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert tokenizer_digest(BPETokenizer.from_dir(merges)) != tokenizer_digest(tok)
    assert tokenizer_digest(CharTokenizer("abc")) != tokenizer_digest(CharTokenizer("acb"))
    assert tokenizer_digest(CharTokenizer("abc")) == tokenizer_digest({"kind": "char", "chars": "abc"})


@pytest.mark.parametrize("kind", ["bpe", "char", "byte"])
def test_a_prompt_that_is_not_utf8_is_one_line(tmp_path, kind):
    """`--prompt $'\\xff'`: the shell's bytes reach Python as a lone surrogate. Before: a TypeError
    traceback from the tokenizers library with the BPE tokenizer."""
    from reference.programs.tokenizers import ByteTokenizer
    tok = {"bpe": lambda: BPETokenizer.from_dir(make_bpe_files(tmp_path / "t")), "char": lambda: CharTokenizer("ab\xff"),
           "byte": ByteTokenizer}[kind]()
    ckpt = tmp_path / "ckpt.safetensors"
    save_checkpoint(ckpt, GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=4)),
                    tokenizer=tok)
    proc = subprocess.run([sys.executable, "-m", "reference", "sample", "--ckpt", str(ckpt), "--prompt", b"ab\xff",
                           "--max-new-tokens", "2"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C.UTF-8"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: the prompt cannot be encoded") and "'\\udcff'" in proc.stderr, proc.stderr
    if kind == "bpe":
        assert "at position 2 is not UTF-8 text" in proc.stderr
