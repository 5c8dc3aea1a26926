"""One clear line for each input that could get an unclear one: it names the problem and the
expected value, with no traceback, no raw `[Errno N]` and no advice that changes nothing.

Each test below failed before its message was fixed; its docstring quotes the old message."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from reference import GPT, GPTConfig
from reference.programs import cli, hf, hf_export, plot
from reference.programs.checkpoint import METADATA_KEY, CheckpointError, load_checkpoint
from reference.programs.safetensors_io import load_file, save_file
from reference.programs.sampling.generation import generate

from test_train import TEXT, TINY, prepare_module  # noqa: F401  (fixture)

CONFIG = GPTConfig(vocab_size=16, n_layer=1, n_embd=8, n_head=2, block_size=8)


def run(capsys, command, *args) -> tuple[int, str, str]:
    rc = cli.main([command, *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def last_line(err: str) -> str:
    """The last stderr line, after checking that nothing on stderr is a traceback or raw errno text."""
    assert "Traceback" not in err and "[Errno" not in err, err
    return err.strip().splitlines()[-1]


@pytest.fixture
def data_dir(tmp_path, prepare_module):  # noqa: F811
    d = tmp_path / "data"
    prepare_module.prepare(TEXT.encode(), d, kind="char")
    return d


@pytest.fixture
def model():
    return GPT(CONFIG, seed=0)


# ------------------------------------------------------------------------------------ train, prepare


def test_max_iters_0_says_no_step_was_trained(data_dir, tmp_path, capsys):
    """Was: "no checkpoint was written: the val loss never beat the best so far, 4.1711
    (--always_save_checkpoint saves at every evaluation)": it is the best, and the flag changes nothing."""
    out = tmp_path / "out"
    rc, _, err = run(capsys, "train", "--data_dir", data_dir, "--out_dir", out, "--max_iters", 0, *TINY)
    assert rc == 0, err
    line = last_line(err)
    assert line.startswith("done: step 0"), line
    assert "the run trained no step (max_iters 0)" in line and "--max_iters N with N > 0" in line, line
    assert "never beat" not in line and "--always_save_checkpoint" not in line, line
    assert not (out / "ckpt.safetensors").exists()
    rc, _, err = run(capsys, "train", "--data_dir", data_dir, "--out_dir", out, "--max_iters", 0,
                     "--always_save_checkpoint", *TINY)
    assert rc == 0 and not (out / "ckpt.safetensors").exists()   # the flag indeed changes nothing at step 0


def test_out_that_is_a_file_has_one_wording_in_prepare_and_train(data_dir, tmp_path, capsys, prepare_module):  # noqa: F811
    """Was, from prepare: "cannot write to FILE: File exists" where train says "is a file, not a directory"."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    src = tmp_path / "corpus.txt"
    src.write_text(TEXT)
    assert prepare_module.main(["--from", str(src), "--out", str(blocker)]) == 1
    prepared = last_line(capsys.readouterr().err)
    rc, _, err = run(capsys, "train", "--data_dir", data_dir, "--out_dir", blocker, "--max_iters", 1, *TINY)
    assert rc == 2
    trained = last_line(err)
    for line, flag, files in ((prepared, "--out", "train.bin, val.bin and meta.json"),
                              (trained, "out_dir", "ckpt.safetensors and log.jsonl")):
        assert f"{flag} {blocker} is a file, not a directory; expected the directory to write {files} into " \
               "(or a path that does not exist yet)" in line, line
    assert blocker.read_text() == "x"


# ------------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("extra", ["surprise", "lm_head.weight"])     # (the run ties its head: no lm_head)
def test_a_tensor_added_to_a_checkpoint_is_named_unexpected(data_dir, tmp_path, capsys, extra):
    """Was: "tensor 'surprise' has no recorded checksum": the tensor is one the writer never wrote.
    (A tensor of the model whose checksum is lost still says so: tests/test_integrity.py.)"""
    out = tmp_path / "out"
    rc, _, err = run(capsys, "train", "--data_dir", data_dir, "--out_dir", out, "--max_iters", 2, *TINY)
    assert rc == 0, err
    path = out / "ckpt.safetensors"
    tensors, meta = load_file(path)
    tensors[extra] = np.zeros(2, np.float32)
    save_file(tensors, path, metadata=meta)                     # the writer's metadata, one tensor more
    with pytest.raises(CheckpointError, match=rf"unexpected tensors \['{extra}'\]: not among the \d+ tensors "
                                              r"this checkpoint was written with") as e:
        load_checkpoint(path)
    assert "checksum" not in str(e.value).split(":", 2)[1]      # the problem is named first, not the checksum
    assert METADATA_KEY in meta


# ------------------------------------------------------------------------------------ generate


def test_generate_takes_an_int_seed_as_numpy_does(model):
    """Was: AttributeError: 'int' object has no attribute 'random' (a traceback from deep inside)."""
    ids = np.array([1, 2, 3])
    ours = generate(model, ids, 6, rng=42, verbose=False)
    assert np.array_equal(ours, generate(model, ids, 6, rng=np.random.default_rng(42), verbose=False))
    assert np.array_equal(ours, generate(model, ids, 6, rng=np.int64(42), verbose=False))
    for bad, kind, words in (("42", TypeError, "rng must be a numpy Generator or an int seed >= 0"),
                             (1.5, TypeError, "got 1.5"), (True, TypeError, "got True"),
                             (-1, ValueError, "an int seed must be >= 0 (np.random.default_rng's rule), got -1")):
        with pytest.raises(kind) as e:
            generate(model, ids, 2, rng=bad, verbose=False)
        assert words in str(e.value) and "\n" not in str(e.value)


def test_a_uint64_id_is_reported_as_itself(model):
    """Was: "token id -1 is out of range": the prompt was cast to int64 before the range check."""
    huge = np.array([3, 2**64 - 1], dtype=np.uint64)
    with pytest.raises(ValueError, match=r"prompt token id 18446744073709551615 is out of range for vocab_size 16 "
                                         r"\(expected 0 <= id < 16\)"):
        generate(model, huge, 2, greedy=True)
    for call in (lambda: model.forward(huge[None]), lambda: model.loss(np.array([[1, 2]]), huge[None])):
        with pytest.raises(ValueError, match="18446744073709551615"):   # the model's boundary says the same
            call()


@pytest.mark.parametrize("prompt", ["ROMEO", b"ROMEO", ["R", "O"]])
def test_text_given_as_a_prompt_says_to_encode_it(model, prompt):
    """Was: "prompt must be 1-D (T,) or 2-D (B, T) token ids, got shape ()", which does not say why."""
    with pytest.raises(TypeError, match=r"encode (it|the text) first, e.g. ids = tokenizer.encode\(text\)"):
        generate(model, prompt, 2, greedy=True)


# ------------------------------------------------------------------------------------ Hugging Face


@pytest.mark.parametrize("kw, words", [(dict(dtype="float16"), "dtype must be one of ('float32', 'float64'), "
                                                                 "got 'float16' (the dtype argument of this call"),
                                        (dict(dropout=1.5), "dropout must be in [0, 1), got 1.5 "
                                                            "(the dropout argument of this call")])
def test_from_pretrained_blames_its_own_argument_not_config_json(tmp_path, kw, words):
    """Was: "DIR/config.json: dtype must be one of ('float32', 'float64'), got 'float16'"."""
    hf_export.save_pretrained(GPT(CONFIG.replace(bias=True), seed=0), tmp_path)
    with pytest.raises(hf.HFError) as e:
        hf.from_pretrained(tmp_path, **kw)
    assert str(e.value).startswith(words) and f"not a field of {tmp_path / 'config.json'}" in str(e.value)


# ------------------------------------------------------------------------------------ plot


def write_log(path: Path) -> Path:
    records = [{"event": "train", "step": s, "loss": 3.0 - s / 4} for s in range(5)]
    records += [{"event": "eval", "step": s, "train_loss": 3.0 - s / 4, "val_loss": 3.1 - s / 4} for s in (0, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_plot_into_an_existing_directory_writes_inside_it(tmp_path, capsys):
    """Was: `plot LOG -o runs` wrote runs.png next to the directory."""
    log, target = write_log(tmp_path / "log.jsonl"), tmp_path / "runs"
    target.mkdir()
    rc, out, err = run(capsys, "plot", log, "-o", target)
    assert rc == 0, err
    assert out.strip() == f"wrote {target / 'loss_curve.png'}"
    assert (target / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl", "runs"]   # nothing beside it


def test_plot_marks_eval_points_with_markers_only(tmp_path, monkeypatch):
    """Was: eval points 0 and 4 joined by a line that reads as a measured curve."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kept, real_close = [], plt.close
    monkeypatch.setattr(plt, "close", kept.append)
    log = plot.read_log(write_log(tmp_path / "log.jsonl"))
    plot.plot_curves([("a", log), ("b", log)], tmp_path / "c.png", diff=True)
    try:
        lines = {ln.get_label(): ln for fig in kept for ax in fig.axes for ln in ax.get_lines()}
        evals = [ln for label, ln in lines.items() if "eval" in label or "val loss" in label]
        assert len(evals) >= 5, sorted(lines)                   # 2 runs x (train, val) and the diff panel's
        for ln in evals:
            assert ln.get_linestyle() == "None" and ln.get_marker() not in (None, "None", ""), ln.get_label()
        per_step = [ln for label, ln in lines.items() if "(per step)" in label]
        assert per_step and all(ln.get_linestyle() != "None" for ln in per_step)   # the measured curve stays a line
    finally:
        for fig in kept:
            real_close(fig)


# ------------------------------------------------------------------------------------ read-only targets


def read_only(monkeypatch, where: Path) -> None:
    """Make creating a directory under `where` fail as on a read-only file system (as root, a chmod
    cannot make a directory read-only; OSError(EROFS) with the path is what the kernel gives)."""
    real = Path.mkdir

    def refusing(self, *a, **k):
        if str(self).startswith(str(where)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(Path, "mkdir", refusing)


def test_read_only_targets_get_one_line_naming_the_path(tmp_path, capsys, monkeypatch, data_dir, prepare_module):  # noqa: F811
    """Was: "error: [Errno 30] Read-only file system: '/ro/x.png'" from plot and export."""
    ro = tmp_path / "ro"
    read_only(monkeypatch, ro)
    log = write_log(tmp_path / "log.jsonl")
    rc, _, err = run(capsys, "plot", log, "-o", ro / "sub" / "x.png")
    assert rc == 2
    assert last_line(err) == f"error: cannot write {ro / 'sub'}: the file system is read-only; choose a writable -o"

    run_dir = tmp_path / "run"
    rc, _, err = run(capsys, "train", "--data_dir", data_dir, "--out_dir", run_dir, "--max_iters", 2, "--bias", *TINY)
    assert rc == 0, err
    rc, _, err = run(capsys, "export", "--ckpt", run_dir / "ckpt.safetensors", "--to", ro / "hf")
    assert rc == 2
    line = last_line(err)
    assert line.startswith(f"error: cannot write {ro}") and "the file system is read-only; choose a writable --to" \
        in line, line

    src = tmp_path / "corpus.txt"
    src.write_text(TEXT)
    assert prepare_module.main(["--from", str(src), "--out", str(ro / "data")]) == 1
    line = last_line(capsys.readouterr().err)
    assert f"cannot write {ro / 'data'}: the file system is read-only; choose a writable --out" in line, line
