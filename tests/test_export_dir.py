"""An export directory holds exactly what the export wrote (reference/programs/hf_export.py, `save_pretrained`):
built beside the target and swapped in, so `--overwrite` of a sharded Hugging Face directory with a
tokenizer leaves no old shard, index, tokenizer or generation config (transformers loads the new model and
the new tokenizer, or none), a failure or Ctrl-C mid-export leaves the old directory byte-identical and
no temporary directory, and a directory that is not a model directory is never replaced."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")

from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel  # noqa: E402

from reference import GPT, GPTConfig  # noqa: E402
from reference.programs import hf, hf_export  # noqa: E402
from reference.programs.checkpoint import save_checkpoint  # noqa: E402
from reference.programs.cli import main  # noqa: E402
from reference.programs.tokenizers import BPETokenizer, CharTokenizer  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def old_dir(tmp_path) -> Path:
    """A hub-style GPT-2 directory: sharded weights with their index, a generation config and a tokenizer
    in both forms (tokenizer.json, vocab.json + merges.txt) of 320 ids."""
    from test_bpe import make_bpe_files
    d = make_bpe_files(tmp_path / "hf", vocab_size=320)
    make_bpe_files(d, vocab_size=320, tokenizer_json=True)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=320, n_positions=16, n_embd=32, n_layer=2, n_head=4)).save_pretrained(
        d, max_shard_size="40KB")
    names = {p.name for p in d.iterdir()}
    assert {hf.INDEX_NAME, "generation_config.json", "tokenizer.json", "vocab.json"} <= names
    assert hf.WEIGHTS_NAME not in names and len([n for n in names if n.startswith("model-")]) >= 2
    return d


def char_ckpt(tmp_path) -> Path:
    path = tmp_path / "char.safetensors"
    tok = CharTokenizer("abcdefgh")
    save_checkpoint(path, GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8)),
                    tokenizer=tok)
    return path


def test_overwrite_leaves_only_what_the_export_wrote(old_dir, tmp_path, capsys):
    """Before: the old shards, index, vocab.json/merges.txt and generation config stayed beside the new
    model.safetensors, and AutoTokenizer loaded the 320-id tokenizer for an 8-id model."""
    rc, _, err = cli(capsys, "export", "--ckpt", char_ckpt(tmp_path), "--to", old_dir, "--overwrite")
    assert rc == 0, err
    assert sorted(p.name for p in old_dir.iterdir()) == ["config.json", "model.safetensors"]
    assert GPT2LMHeadModel.from_pretrained(old_dir).config.vocab_size == 8
    assert AutoTokenizer.from_pretrained(old_dir).vocab_size == 0     # no tokenizer file is left (before: 320)
    assert hidden(tmp_path) == []


def test_overwrite_with_a_bpe_model_brings_its_tokenizer(old_dir, tmp_path, capsys):
    from test_bpe import make_bpe_files
    tok = BPETokenizer.from_dir(make_bpe_files(tmp_path / "small", vocab_size=280, tokenizer_json=True))
    ckpt = tmp_path / "bpe.safetensors"
    save_checkpoint(ckpt, GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8)),
                    tokenizer=tok)
    rc, _, err = cli(capsys, "export", "--ckpt", ckpt, "--to", old_dir, "--overwrite")
    assert rc == 0, err
    assert sorted(p.name for p in old_dir.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    theirs = AutoTokenizer.from_pretrained(old_dir)
    assert theirs.vocab_size == tok.vocab_size == 280                  # (before: 320, the old vocab.json)
    text = "First Citizen: speak, speak."
    assert theirs.encode(text) == tok.encode(text).tolist()
    assert GPT2LMHeadModel.from_pretrained(old_dir).config.vocab_size == 280


@pytest.mark.parametrize("where", ["weights", "config", "swap"])
def test_a_failure_mid_export_leaves_the_old_directory(old_dir, tmp_path, monkeypatch, capsys, where):
    before = snapshot(old_dir)
    if where == "weights":
        real = hf_export._safetensors

        def half_written(tensors, filename, metadata=None):
            Path(filename).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(hf_export, "_safetensors", lambda: (real()[0], half_written))
    elif where == "config":
        real_dumps = json.dumps

        def failing(obj, *a, **k):
            if isinstance(obj, dict) and "architectures" in obj:
                raise OSError(errno.EIO, "Input/output error")
            return real_dumps(obj, *a, **k)
        monkeypatch.setattr(hf_export.json, "dumps", failing)
    else:
        def no_swap(a, b):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        monkeypatch.setattr(hf_export, "_exchange", no_swap)
    rc, _, err = cli(capsys, "export", "--ckpt", char_ckpt(tmp_path), "--to", old_dir, "--overwrite")
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert snapshot(old_dir) == before
    assert hidden(tmp_path) == []                           # no build directory, no lock file


def test_ctrl_c_mid_export_leaves_nothing_new(tmp_path, monkeypatch):
    def interrupted(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise KeyboardInterrupt
    real = hf_export._safetensors
    monkeypatch.setattr(hf_export, "_safetensors", lambda: (real()[0], interrupted))
    rc = main(["export", "--ckpt", str(char_ckpt(tmp_path)), "--to", str(tmp_path / "new" / "hf")])
    assert rc == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["char.safetensors"]   # not even the parent "new"


def test_a_directory_that_is_not_a_model_is_never_replaced(tmp_path, capsys):
    d = tmp_path / "notes"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    rc, _, err = cli(capsys, "export", "--ckpt", char_ckpt(tmp_path), "--to", d, "--overwrite")
    assert rc == 2 and "no config.json, so it is not a Hugging Face model directory" in err
    assert snapshot(d) == {"notes.txt": b"mine"}


def test_what_a_killed_export_left_is_removed_by_the_next(tmp_path, capsys):
    """An export killed with SIGKILL cannot clean up: its build directory (named with its pid) is removed
    by the next export to the same target; a live exporter's is not touched."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".hf.build-{dead.pid}-0123abcd.tmp"
    live = tmp_path / f".hf.build-{os.getppid()}-0123abcd.tmp"
    for d in (stale, live):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x")
    rc, _, err = cli(capsys, "export", "--ckpt", char_ckpt(tmp_path), "--to", tmp_path / "hf")
    assert rc == 0, err
    assert not stale.exists() and live.exists()
