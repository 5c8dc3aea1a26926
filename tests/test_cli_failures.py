"""No tracebacks for user input or the environment: every command answers a full disk, a
directory it cannot write, a path of the wrong kind, broken prepared data, a run too large for memory,
Ctrl-C and every flag out of range with one clear line and a non-zero exit, the last good checkpoint
left as it was; the Python API refuses degenerate shapes. Failures are simulated: writes that raise
ENOSPC/EROFS (tests may run as root, where chmod does not stop writes), paths under a regular file, a
real SIGINT sent to a real `train` process."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reference.programs import atomic, cli
from reference.programs.training import memory
from reference.programs.training.settings import TrainConfig
from reference.programs.training.trainer import Trainer
from reference.programs.checkpoint import load_checkpoint
from reference.model import GPT
from reference.config import GPTConfig
from faults import fail_writes
from test_train import TEXT, TINY, prepare_module  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def data_dir(tmp_path, prepare_module):  # noqa: F811
    d = tmp_path / "data"
    prepare_module.prepare(TEXT.encode(), d, kind="char")
    return d


def run(capsys, command, *args) -> tuple[int, str, str]:
    rc = cli.main([command, *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error_line(err: str, *words: str) -> str:
    """The last stderr line is the error; no traceback anywhere."""
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    for w in words:
        assert w in line, (w, line)
    return line


@pytest.fixture
def trained(data_dir, tmp_path, capsys):
    """A finished 2-step run in tmp_path/out with a checkpoint."""
    out = tmp_path / "out"
    rc, _, err = run(capsys, "train", "--data_dir", data_dir, "--out_dir", out, "--max_iters", 2,
                     "--eval_interval", 1, *TINY)
    assert rc == 0, err
    return out


# ------------------------------------------------------------------------------------ the disk


@pytest.mark.parametrize("code, hint", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only")])
def test_a_full_or_read_only_disk_during_a_save(trained, capsys, monkeypatch, code, hint):
    ckpt = trained / "ckpt.safetensors"
    before = ckpt.read_bytes()
    fail_writes(monkeypatch, OSError(code, os.strerror(code)), keep=lambda n: 100)
    rc, _, err = run(capsys, "train", "--resume", trained, "--max_iters", 4, "--always_save_checkpoint",
                     "--no-progress")
    assert rc == 1
    one_error_line(err, f"error: writing to {trained} failed", hint, "the last good checkpoint", "(step 2)",
                   "left as it was")
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in trained.iterdir()) == ["ckpt.safetensors", "log.jsonl"]     # no temporary


def test_an_out_dir_that_cannot_be_created(data_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, _, err = run(capsys, "train", "--data_dir", data_dir, "--out_dir", blocker / "run", "--max_iters", 1, *TINY)
    assert rc == 1
    one_error_line(err, "error: ", "Not a directory")
    rc, _, err = run(capsys, "train", "--data_dir", data_dir, "--out_dir", blocker, "--max_iters", 1, *TINY)
    assert rc == 2
    one_error_line(err, f"out_dir {blocker} is a file, not a directory")


def test_a_directory_that_refuses_writes(data_dir, tmp_path, capsys, monkeypatch):
    """As root a chmod 0o555 directory stays writable; the refusal is simulated where the log is opened."""
    real_open = open

    def refusing(path, *a, **k):
        if str(path).startswith(str(tmp_path / "ro")):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    real_os_open = os.open

    def refusing_os_open(path, *a, **k):                     # the lock file and log.jsonl are opened with os.open
        if str(path).startswith(str(tmp_path / "ro")):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_os_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", refusing)
    monkeypatch.setattr("os.open", refusing_os_open)
    rc, _, err = run(capsys, "train", "--data_dir", data_dir, "--out_dir", tmp_path / "ro", "--max_iters", 1, *TINY)
    assert rc == 1
    one_error_line(err, "Permission denied", "choose a writable --out_dir")


# ------------------------------------------------------------------------------------ prepared data


def test_data_dir_of_the_wrong_kind_or_missing(data_dir, tmp_path, capsys):
    rc, _, err = run(capsys, "train", "--data_dir", data_dir / "train.bin", "--out_dir", tmp_path / "o", *TINY)
    assert rc == 2
    one_error_line(err, "train.bin is a file, not a directory")
    rc, _, err = run(capsys, "train", "--data_dir", "no/such/data", "--out_dir", tmp_path / "o", *TINY)
    assert rc == 2
    line = one_error_line(err, "no prepared data: looked for no/such/data in", "prepare.py")
    assert str(Path.cwd() / "no/such/data") in line and str(REPO / "no/such/data") in line


@pytest.mark.parametrize("damage, words", [
    (lambda d: (d / "meta.json").write_text(json.dumps({"dtype": "uint16"})), "has no 'tokenizer' key"),
    (lambda d: (d / "meta.json").write_text("{oops"), "meta.json is not valid JSON"),
    (lambda d: (d / "meta.json").write_text("[]"), "must hold a JSON object"),
    (lambda d: (d / "meta.json").write_bytes(b"\xff\xfe"), "is not UTF-8"),
    (lambda d: (d / "meta.json").write_text(json.dumps({**json.loads((d / "meta.json").read_text()),
                                                        "dtype": "float32"})), "must name an integer dtype"),
    (lambda d: (d / "meta.json").write_text(json.dumps({**json.loads((d / "meta.json").read_text()),
                                                        "dtype": "nonsense"})), "must name an integer dtype"),
    (lambda d: (d / "meta.json").write_text(json.dumps({**json.loads((d / "meta.json").read_text()),
                                                        "tokenizer": "char"})), "'tokenizer' must be a JSON object"),
    (lambda d: (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-1]), "not a whole number of uint16"),
    (lambda d: (d / "val.bin").write_bytes((d / "val.bin").read_bytes()[:-2]), "but meta.json says"),
], ids=["no-tokenizer", "bad-json", "not-object", "not-utf8", "float-dtype", "bad-dtype", "tokenizer-str",
        "odd-bytes", "short"])
def test_broken_prepared_data_is_one_line(data_dir, tmp_path, capsys, damage, words):
    damage(data_dir)
    rc, _, err = run(capsys, "train", "--data_dir", data_dir, "--out_dir", tmp_path / "o", *TINY)
    assert rc == 2
    one_error_line(err, "error: ", words)


def test_data_dir_is_found_next_to_the_package_from_another_directory(data_dir, tmp_path, capsys, monkeypatch):
    from reference.programs import data as data_mod
    monkeypatch.setattr(data_mod, "PACKAGE_ROOT", tmp_path)            # the checkout holding data/
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rc, _, err = run(capsys, "train", "--data_dir", "data", "--out_dir", tmp_path / "o", "--max_iters", 1, *TINY)
    assert rc == 0, err


# ------------------------------------------------------------------------------------ memory


def test_a_run_too_large_for_memory_is_refused_before_allocating(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 2 * 2**30)      # a 2 GiB machine
    monkeypatch.setattr(GPT, "__init__", lambda *a, **k: pytest.fail("allocated before the memory check"))
    rc, _, err = run(capsys, "train", "--data_dir", data_dir, "--out_dir", tmp_path / "o", *TINY[:-1],
                     "--block_size", 100, "--batch_size", 40000, "--no-progress")
    assert rc == 2
    line = one_error_line(err, "error: this run needs about", "GiB of memory", "activations at batch_size 40000, "
                          "block_size 100", "but only 2.0 GiB is available", "lower batch_size")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir()), line


def test_the_memory_estimate_grows_as_the_arrays_do():
    est = memory.estimate_memory
    small = est(TrainConfig(), 65)
    assert 1e6 < small["total"] < 2**30                     # the CPU recipe: well under a GiB
    long = est(TrainConfig(block_size=100000), 65)
    assert long["activations"] > 1000 * 2**30                # attention maps are (B, n_head, T, T)
    assert est(TrainConfig(dtype="float64"), 65)["total"] == 2 * small["total"]
    assert memory.check_memory(TrainConfig(), 65, available=2**40) == small
    with pytest.raises(memory.InsufficientMemory, match="needs about"):
        memory.check_memory(TrainConfig(), 65, available=1000)
    assert memory.available_memory() is None or memory.available_memory() > 0


@pytest.mark.parametrize("size", [dict(n_embd=128, n_layer=2, n_head=4, block_size=64, batch_size=8),
                                  dict(n_embd=64, n_layer=2, n_head=2, block_size=256, batch_size=4),
                                  dict(n_embd=256, n_layer=1, n_head=4, block_size=32, batch_size=16)],
                         ids=["wide", "long", "one-layer"])
def test_the_memory_estimate_is_close_to_a_real_steps_peak(size):
    """tracemalloc sees every NumPy allocation: the estimate is neither a refusal of runs that fit (far above
    the peak) nor a blind spot (far below)."""
    import tracemalloc
    config = TrainConfig(out_dir="", eval_iters=1, **size)
    data = np.arange(5000) % 65
    tracemalloc.start()
    try:
        trainer = Trainer(config, train_data=data, val_data=data, vocab_size=65)
        trainer.train_step()
        trainer.train_step()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    ratio = memory.estimate_memory(config, 65)["total"] / peak
    assert 0.75 < ratio < 1.33, ratio


# ------------------------------------------------------------------------------------ Ctrl-C


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_to_a_real_training_run(signum, data_dir, tmp_path):
    """Ctrl-C, and SIGTERM as Ctrl-C: one line, exit 130, the last checkpoint intact, nothing left behind (no
    temporary file, no lock file)."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "reference", "train", "--data_dir", str(data_dir), "--out_dir",
                             str(out), "--max_iters", "1000000", "--eval_interval", "2", "--eval_iters", "1",
                             "--always_save_checkpoint", *TINY], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = out / "ckpt.safetensors"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)                                          # well inside training now
    proc.send_signal(signum)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = one_error_line(err, "interrupted at step", f"the last good checkpoint {ckpt}", "left as it was")
    assert load_checkpoint(ckpt).step > 0, line
    assert sorted(p.name for p in out.iterdir()) == ["ckpt.safetensors", "log.jsonl"]


def test_ctrl_c_in_any_command_is_one_line(capsys, monkeypatch):
    from reference.programs import plot

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(plot, "run", interrupted)
    rc, _, err = run(capsys, "plot", "x.jsonl")
    assert rc == 130 and err == "interrupted: python -m reference plot stopped\n"
    from oracle.cli import main as oracle_main                 # the same through numpy-gpt (oracle/cli.py)
    assert oracle_main(["plot", "x.jsonl"]) == 130
    assert capsys.readouterr().err == "interrupted: numpy-gpt plot stopped\n"


# ------------------------------------------------------------------------------------ flag ranges


@pytest.mark.parametrize("command, args, words", [
    ("train", ["--max_iters", "-1"], "max_iters must be >= 0"),
    ("train", ["--batch_size", "0"], "batch_size must be >= 1"),
    ("train", ["--learning_rate", "nan"], "learning_rate must be finite and > 0"),
    ("train", ["--beta2", "1"], "beta2 must be in [0, 1)"),
    ("train", ["--dropout", "1.5"], "dropout must be"),
    ("train", ["--n_head", "3"], "divisible by n_head"),
    ("train", ["--config", "/no/such.json"], "config file not found"),
    ("train", ["--resume", "/no/such/run"], "no checkpoint at /no/such/run"),
    ("sample", ["--seed", "-1"], "--seed must be >= 0"),
    ("sample", ["--max-new-tokens", "-1"], "--max-new-tokens must be >= 0"),
    ("sample", ["--num-samples", "0"], "--num-samples must be >= 1"),
    ("sample", ["--temperature", "0"], "temperature must be a positive number"),
    ("sample", ["--temperature", "inf"], "temperature must be a positive number"),
    ("sample", ["--top-k", "-3"], "top_k must be an integer >= 1"),
    ("sample", ["--top-p", "1.5"], "top_p must be in (0, 1]"),
    ("sample", ["--ckpt", "/no/such.safetensors"], "no checkpoint at /no/such.safetensors"),
    ("sample", ["--ckpt", "/"], "is a directory"),
    ("sample", ["--prompt-file", "/"], "error: --prompt-file /: Is a directory"),
    ("sample", ["--prompt-file", "/no/such.txt"], "error: --prompt-file /no/such.txt: No such file or directory"),
    ("plot", ["/no/such.jsonl"], "no log at /no/such.jsonl"),
    ("plot", ["/"], "error: "),
    ("plot", ["a.jsonl", "--labels", "x", "y"], "2 labels for 1 logs"),
])
def test_every_flag_out_of_range_is_one_line(tmp_path, capsys, monkeypatch, command, args, words):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, command, *args)
    assert rc != 0
    one_error_line(err, words)


def test_argparse_refusals_are_usage_and_one_error_line(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--max_iters", "many"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("python -m reference train: error: argument --max_iters/--max-iters: "
                                            "invalid int value: 'many'")


def test_prepare_script_answers_bad_input_in_one_line(tmp_path):
    def prep(*args):
        return subprocess.run([sys.executable, str(REPO / "data" / "prepare.py"), *map(str, args)],
                              capture_output=True, text=True, timeout=120)
    blocker = tmp_path / "file"
    blocker.write_text("hello world " * 20)
    for args, words in ((["--from", tmp_path], "cannot read input file"),
                        (["--from", blocker, "--out", blocker], "is a file, not a directory"),
                        (["--from", blocker, "--out", blocker / "sub"], f"cannot write {blocker / 'sub'}: Not a directory"),
                        (["--timeout", "0"], "must be a number of seconds > 0")):
        proc = prep(*args)
        assert proc.returncode != 0
        one_error_line(proc.stderr, words)


# ------------------------------------------------------------------------------------ the Python API


@pytest.mark.parametrize("shape", [(1, 0), (0, 3), (0, 0)])
def test_empty_token_ids_are_a_clear_value_error(shape):
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8), seed=0)
    idx = np.zeros(shape, dtype=np.int64)
    for call in (lambda: model.forward(idx), lambda: model.loss_and_backward(idx, idx), lambda: model.loss(idx, idx)):
        with pytest.raises(ValueError, match=rf"token ids of shape \({shape[0]}, {shape[1]}\) are empty: "
                                             r"expected \(batch, time\) with batch >= 1 and time >= 1"):
            call()


def test_targets_of_another_shape_are_refused():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8), seed=0)
    idx = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(ValueError, match=r"targets of shape \(3, 2\) do not match token ids of shape \(2, 3\)"):
        model.loss_and_backward(idx, idx.T.copy())


@pytest.mark.parametrize("extra", [[], ["--stream"]])
def test_sample_into_a_closed_pipe_ends_quietly(trained, extra):
    """`sample | head`: before, the reader's exit killed sample with a BrokenPipeError traceback (and
    whether it did depended on timing). Here the pipe's read end is closed before sample starts, so
    every write fails: one exit status, 141 (128 + SIGPIPE, as a shell reports it), and nothing on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run([sys.executable, "-m", "reference", "sample", "--ckpt", str(trained / "ckpt.safetensors"),
                              "--prompt", "to", "--max-new-tokens", "4", *extra], stdout=write_end, stderr=subprocess.PIPE, text=True,
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    finally:
        os.close(write_end)
    assert out.returncode == 141 and out.stderr == "", out.stderr


def test_package_root_is_the_checkout_holding_data_prepare():
    """The place a relative data directory is also looked up is the repository root, where
    data/prepare.py writes data/shakespeare_char, however deep the programs sit in the package."""
    from reference.programs import data as data_mod
    assert (data_mod.PACKAGE_ROOT / "data" / "prepare.py").is_file()
    assert (data_mod.PACKAGE_ROOT / "reference" / "__init__.py").is_file()
