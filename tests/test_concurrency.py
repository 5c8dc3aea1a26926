"""One run per directory: `train`, `data/prepare.py` and `export` hold an OS lock on their output
(reference/programs/lock.py), so a second run on the same directory is refused at start in one line naming
the directory and the holder's pid; a lock left by a dead process is no obstacle; log lines are whole.

Real processes: two `train` runs started together on one directory end with one refused and one
checkpoint that loads, and a log whose every line parses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reference.programs.checkpoint import load_checkpoint
from reference.programs.lock import LOCK_NAME, DirectoryLocked, lock_directory

REPO = Path(__file__).resolve().parent.parent
TEXT = "to be or not to be that is the question whether tis nobler in the mind to suffer " * 30
TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "8", "--batch_size", "4",
        "--eval_iters", "2", "--warmup_iters", "2", "--lr_decay_iters", "8", "--no-progress"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

# A process that takes the lock of a directory (or of an export target), says so, and waits to be killed.
HOLDER = ("import sys, time; from reference.programs.lock import lock_directory; "
          "from reference.programs.export import lock_target; "
          "l = (lock_target if sys.argv[2] == 'export' else lock_directory)(sys.argv[1]); "
          "print('held', flush=True); time.sleep(600)")


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    src = tmp_path / "corpus.txt"
    src.write_text(TEXT)
    subprocess.run([sys.executable, str(REPO / "data" / "prepare.py"), "--from", str(src), "--out", str(d)],
                   check=True, env=ENV, capture_output=True)
    return d


def train_cmd(data_dir, out, *extra) -> list[str]:
    return [sys.executable, "-m", "reference", "train", "--data_dir", str(data_dir), "--out_dir", str(out),
            *TINY, *extra]


def hold(path, kind="directory") -> subprocess.Popen:
    """A live process holding the lock of `path` (its first stdout line says when)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), kind], env=ENV, cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_two_trains_started_together(data_dir, tmp_path):
    """Before: both exited 0 claiming `checkpoint (step N)`; one run's file was lost and log.jsonl held
    interleaved lines. After: one is refused (exit 2, one line naming the directory and the pid)."""
    out = tmp_path / "run"
    args = train_cmd(data_dir, out, "--max_iters", "40", "--eval_interval", "10", "--always_save_checkpoint")
    procs = [subprocess.Popen(args, env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    (_, ok), (_, refused) = sorted(results)
    last = refused.strip().splitlines()[-1]
    assert "Traceback" not in refused, refused
    if "already holds a checkpoint" not in last:             # the normal case: both started together
        assert last.startswith(f"error: {out} is in use by another run (pid ") and "one run per directory" in last
        assert refused.count("\n") == 1, refused
    assert load_checkpoint(out / "ckpt.safetensors").step == 40
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records][0] == "start" and records[-1]["event"] == "end"
    assert sorted(p.name for p in out.iterdir()) == ["ckpt.safetensors", "log.jsonl"]   # the lock is gone


def test_a_held_directory_is_refused_naming_the_pid(data_dir, tmp_path):
    out = tmp_path / "run"
    holder = hold(out)
    try:
        proc = subprocess.run(train_cmd(data_dir, out, "--max_iters", "2"), env=ENV, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        assert proc.stderr == (f"error: {out} is in use by another run (pid {holder.pid}); one run per directory: "
                               f"wait for it to end or choose another directory\n")
        src = tmp_path / "corpus.txt"
        prep = subprocess.run([sys.executable, str(REPO / "data" / "prepare.py"), "--from", str(src), "--out",
                               str(out)], env=ENV, capture_output=True, text=True, timeout=120)
        assert prep.returncode == 2 and f"(pid {holder.pid})" in prep.stderr and prep.stderr.count("\n") == 1
        assert not (out / "meta.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died with kill -9: its lock died with it, the file it left is no obstacle
    assert (out / LOCK_NAME).exists()
    proc = subprocess.run(train_cmd(data_dir, out, "--max_iters", "2", "--eval_interval", "2"), env=ENV,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (out / LOCK_NAME).exists()


def test_lock_in_process(tmp_path):
    d = tmp_path / "new"
    lock = lock_directory(d)
    assert d.is_dir() and (d / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    with pytest.raises(DirectoryLocked, match=rf"in use by another run \(pid {os.getpid()}\)"):
        lock_directory(d)                                    # a second lock, even in the same process
    lock.release()
    assert not d.exists()                                    # it created the directory and left it empty
    with lock_directory(d, create=True):
        (d / "kept").write_text("x")
    assert sorted(p.name for p in d.iterdir()) == ["kept"]
    lock_directory(d).release()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        lock_directory(tmp_path / "file")


def test_log_lines_are_single_appends(tmp_path, monkeypatch):
    """Each record is one os.write of a whole line to a file opened O_APPEND (a line is never split
    between two writes, which is what interleaves two writers)."""
    from reference.programs.training import run_log
    writes = []
    real = os.write

    def spy(fd, data):
        writes.append(bytes(data))
        return real(fd, data)

    monkeypatch.setattr(run_log.os, "write", spy)
    log = run_log.LogFile(tmp_path / "log.jsonl", append=False)
    assert os.get_blocking(log.fd) and (os.O_APPEND & __import__("fcntl").fcntl(log.fd, __import__("fcntl").F_GETFL))
    run_log.write_record(log, {"event": "x", "text": "y" * 100_000})
    run_log.write_record(log, {"event": "z", "loss": float("nan")})
    log.close()
    assert len(writes) == 2 and all(w.endswith(b"\n") and w.count(b"\n") == 1 for w in writes)
    assert [json.loads(line)["event"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == ["x", "z"]


def test_export_target_is_locked(tmp_path):
    from reference import GPT, GPTConfig
    from reference.programs.checkpoint import save_checkpoint
    ckpt = tmp_path / "ckpt.safetensors"
    save_checkpoint(ckpt, GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4)))
    target = tmp_path / "hf"
    holder = hold(target, "export")
    try:
        proc = subprocess.run([sys.executable, "-m", "reference", "export", "--ckpt", str(ckpt), "--to", str(target)],
                              env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert proc.returncode == 2 and f"(pid {holder.pid})" in proc.stderr and proc.stderr.count("\n") == 1
    assert not target.exists()
    rc = subprocess.run([sys.executable, "-m", "reference", "export", "--ckpt", str(ckpt), "--to", str(target)],
                        env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=120).returncode
    assert rc == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors", "hf"]


def test_resume_is_refused_before_reading_a_held_checkpoint(data_dir, tmp_path, capsys, monkeypatch):
    """--resume takes the lock before it reads the checkpoint: a run that waited could otherwise continue
    from a state another run has since moved past, and overwrite its progress."""
    from reference.programs import train as train_mod
    from reference.programs.cli import main
    out = tmp_path / "run"
    assert main(["train", "--data_dir", str(data_dir), "--out_dir", str(out), *TINY, "--max_iters", "2",
                 "--eval_interval", "2"]) == 0
    capsys.readouterr()
    read = []
    monkeypatch.setattr(train_mod, "load_checkpoint", lambda path: read.append(path))
    with lock_directory(out):                                # held by another open file: refused as another run
        rc = main(["train", "--resume", str(out), "--max_iters", "4"])
    err = capsys.readouterr().err
    assert rc == 2 and err == (f"error: {out} is in use by another run (pid {os.getpid()}); one run per directory: "
                               f"wait for it to end or choose another directory\n") and read == []
