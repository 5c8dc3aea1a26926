"""Data-parallel training on MPI (reference/programs/distributed.py), proven equal to one process.

Every run here is `mpiexec -n N python -m reference train ...` on a tiny float64 model (a second or two).
What is proven, and to what:
- N ranks x K micro-batches (uneven shards, uneven micro-batches) equal one process with the whole
  batch over 20 steps: losses, every weight, both AdamW moments, per tensor max|a - b| / max|b| <= 1e-13.
  Not bitwise: one process sums the batch's rows in one matrix product, the ranks in several, added by
  the ring afterwards (the same float64 additions in another order).
- ZeRO-1 equals plain data parallel bit for bit: the same ring sums the gradients in the same order, the
  norm is the same sum of per-rank squares, and AdamW's update is elementwise, so a slice of it is the
  same arithmetic.
- A checkpoint written at N=2 (ZeRO-1: the moments gathered into the one-process layout) resumes at N=1
  and N=3 on the uninterrupted N=2 trajectory (to 1e-13).
- Planted bugs are caught: shard losses averaged 1/N instead of by token count; a ring one step short.
- Faults: ranks started with different settings are refused in one line; a rank that cannot start stops
  every rank with its line; Ctrl-C stops every rank with exit 130; a rank killed with SIGKILL ends the run
  non-zero in bounded time (Hydra kills the others at once) with the last checkpoint intact; a full disk
  on rank 0 stops every rank with rank 0's line and no lock left behind; a hostfile
  naming this machine twice runs.
Skipped, with the reason, where mpi4py or mpiexec is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
MPIEXEC = shutil.which("mpiexec") or shutil.which("mpiexec", path=str(Path(sys.executable).parent))
if importlib.util.find_spec("mpi4py") is None:
    pytest.skip("mpi4py is not installed (pip install -e '.[dist]')", allow_module_level=True)
if MPIEXEC is None:
    pytest.skip("no mpiexec on PATH or beside the Python executable (pip install -e '.[dist]')",
                allow_module_level=True)

from reference.programs.checkpoint import load_checkpoint  # noqa: E402

RTOL = 1e-13
TEXT = "".join(f"{w} " for w in ("to be or not to be that is the question whether tis nobler in the mind "
                                 "to suffer the slings and arrows of outrageous fortune ").split()) * 12
TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "8", "--eval_iters", "3",
        "--warmup_iters", "2", "--lr_decay_iters", "20", "--learning_rate", "1e-2", "--dtype", "float64",
        "--always_save_checkpoint", "--no-progress", "--kernels", "textbook", "--dropout", "0.1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": str(REPO)}
# A planted bug, applied inside each rank before the command runs (python -c PLANT[name] train ...).
PLANTS = {
    # the shards' gradients averaged 1/N (the mean of shard means) instead of weighted by target tokens
    "one_over_n": "import reference.loss as L; b = L.CrossEntropyLoss.backward; "
                  "L.CrossEntropyLoss.backward = lambda self, d, c: b(self, 1 / int(os.environ['PMI_SIZE']), c)",
    # a ring all-reduce one step short: one rank's share never arrives
    "short_ring": "import reference.programs.collectives as D; f = D.ring_reduce_scatter\n"
                  "def short(comm, flat, chunks):\n"
                  "    class C: rank, size = comm.rank, comm.size - 1\n"
                  "    C.sendrecv = comm.sendrecv\n"
                  "    if comm.rank < comm.size - 1: f(C, flat, chunks[:-1])\n"
                  "D.ring_reduce_scatter = short",
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("data_prepare", REPO / "data" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    d = tmp_path_factory.mktemp("dp") / "data"
    module.prepare(TEXT.encode(), d, kind="char")
    return d


def train(n: int, data_dir, out_dir, *args, plant: str | None = None, mpi_args=(), timeout=120):
    """`mpiexec -n n python -m reference train` (n = 0: one plain process, no mpiexec): (rc, stderr)."""
    base = [sys.executable, "-m", "reference", "train"]
    if plant is not None:
        base = [sys.executable, "-c", f"import os, sys\n{PLANTS[plant]}\nfrom reference.programs.cli import main\n"
                                     "sys.exit(main(sys.argv[1:]))", "train"]
    cmd = base + ["--data_dir", str(data_dir), "--out_dir", str(out_dir), *TINY, *map(str, args)]
    if n:
        cmd = [MPIEXEC, *mpi_args, "-n", str(n), *cmd]
    p = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stderr


def losses(out_dir) -> np.ndarray:
    lines = [json.loads(x) for x in (Path(out_dir) / "log.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in lines if r["event"] == "train"])


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def differences(a, b) -> dict[str, float]:
    """Per check, the largest per-tensor max|a - b| / max|b| between two run directories' results."""
    ca, cb = load_checkpoint(Path(a) / "ckpt.safetensors"), load_checkpoint(Path(b) / "ckpt.safetensors")
    assert ca.step == cb.step
    out = {"loss": rel(losses(a), losses(b)),
           "weights": max(rel(ca.model_state[k], cb.model_state[k]) for k in cb.model_state)}
    for key in ("exp_avg", "exp_avg_sq"):
        out[key] = max(rel(ca.optimizer["state"][k][key], cb.optimizer["state"][k][key]) for k in cb.optimizer["state"])
    return out


def identical(a, b) -> bool:
    ca, cb = load_checkpoint(Path(a) / "ckpt.safetensors"), load_checkpoint(Path(b) / "ckpt.safetensors")
    same = np.array_equal(losses(a), losses(b))
    same &= all(np.array_equal(ca.model_state[k], cb.model_state[k]) for k in cb.model_state)
    return same and all(np.array_equal(ca.optimizer["state"][k][m], cb.optimizer["state"][k][m])
                        for k in cb.optimizer["state"] for m in ("exp_avg", "exp_avg_sq"))


STEPS = ["--max_iters", "20", "--eval_interval", "20"]


@pytest.fixture(scope="module")
def one_process(data_dir, tmp_path_factory):
    """One process, the whole batch of 9 rows in one forward, 20 steps."""
    out = tmp_path_factory.mktemp("dp") / "one"
    rc, err = train(0, data_dir, out, "--batch_size", "9", *STEPS)
    assert rc == 0, err
    return out


@pytest.mark.parametrize("n", [2, 3])
def test_n_ranks_times_k_micro_batches_equal_one_process(n, data_dir, one_process, tmp_path):
    # batch 9 = batch_size 3 x K 3; N=2: shards of 5 and 4 rows, micro-batches [3, 2] and [2, 2]
    rc, err = train(n, data_dir, tmp_path / "dp", "--batch_size", "3", "--gradient_accumulation_steps", "3", *STEPS)
    assert rc == 0, err
    shards = {2: "[5, 4]", 3: "[3, 3, 3]"}[n]
    assert f"data parallel: {n} rank(s)" in err and f"shards of {shards} rows" in err
    diff = differences(tmp_path / "dp", one_process)
    assert all(v <= RTOL for v in diff.values()), diff
    assert not identical(tmp_path / "dp", one_process)     # the check compares two real runs


@pytest.mark.parametrize("n", [2, 3])
def test_zero1_equals_plain_data_parallel_bit_for_bit(n, data_dir, tmp_path):
    for zero in (0, 1):
        rc, err = train(n, data_dir, tmp_path / f"z{zero}", "--batch_size", "4", "--gradient_accumulation_steps", "2",
                        "--zero_stage", zero, *STEPS)
        assert rc == 0, err
    assert "ZeRO-1" in err
    assert identical(tmp_path / "z1", tmp_path / "z0")


def test_checkpoint_at_two_ranks_resumes_at_one_and_three(data_dir, one_process, tmp_path):
    args = ["--batch_size", "5", "--max_iters", "20", "--eval_interval", "10"]
    rc, err = train(2, data_dir, tmp_path / "whole", *args, "--zero_stage", "1")
    assert rc == 0, err
    rc, err = train(2, data_dir, tmp_path / "half", *args, "--zero_stage", "1", "--max_iters", "10")
    assert rc == 0, err
    ckpt = load_checkpoint(tmp_path / "half" / "ckpt.safetensors")
    single = load_checkpoint(one_process / "ckpt.safetensors")                        # the one-process layout
    assert ckpt.step == 10 and ckpt.optimizer["state"].keys() == single.optimizer["state"].keys()
    assert {s["step"] for s in ckpt.optimizer["state"].values()} == {10}
    for n in (0, 3):
        out = tmp_path / f"resumed{n}"
        shutil.copytree(tmp_path / "half", out)
        rc, err = train(n, data_dir, out, *args, "--resume")
        assert rc == 0, err
        diff = differences(out, tmp_path / "whole")
        assert all(v <= RTOL for v in diff.values()), (n, diff)


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_planted_bugs_are_caught(plant, data_dir, one_process, tmp_path):
    rc, err = train(2, data_dir, tmp_path / "bug", "--batch_size", "3", "--gradient_accumulation_steps", "3", *STEPS,
                    plant=plant)
    assert rc == 0, err
    assert differences(tmp_path / "bug", one_process)["weights"] > 1e-6


def test_ranks_with_different_settings_are_refused_in_one_line(data_dir, tmp_path):
    rank = [sys.executable, "-m", "reference", "train", "--data_dir", str(data_dir), "--out_dir", str(tmp_path / "o"),
            *TINY, "--max_iters", "4"]
    cmd = [MPIEXEC, "-n", "1", *rank, "--batch_size", "4", ":", "-n", "1", *rank, "--batch_size", "5"]
    p = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = [x for x in p.stderr.splitlines() if x.startswith("error")]
    assert lines == ["error: rank 1 was started with other settings than rank 0; start every rank with the same "
                     "flags and the same data (mpiexec -n 2 python -m reference train ...)"], p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "o" / "ckpt.safetensors").exists()


def test_a_rank_failing_to_start_stops_every_rank_with_its_line(data_dir, tmp_path):
    rank = [sys.executable, "-m", "reference", "train", "--out_dir", str(tmp_path / "o"), *TINY, "--max_iters", "4"]
    cmd = [MPIEXEC, "-n", "1", *rank, "--data_dir", str(data_dir), ":", "-n", "1", *rank,
           "--data_dir", str(tmp_path / "missing")]
    p = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "rank 1: error: no prepared data" in p.stderr, p.stderr


def _start(n, data_dir, out, *args):
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "reference", "train", "--data_dir", str(data_dir),
           "--out_dir", str(out), *TINY, *map(str, args)]
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for_step(out, step, p, limit=60.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        log = out / "log.jsonl"
        if log.exists() and any(json.loads(x).get("step", -1) >= step and json.loads(x)["event"] == "train"
                                for x in log.read_text().splitlines() if x.endswith("}")):
            return
        assert p.poll() is None, p.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {limit} s")


def ctrl_c(p: subprocess.Popen) -> str:
    """A terminal's Ctrl-C to every process of `p`'s group; its stderr, once every rank stopped with 130."""
    os.killpg(p.pid, signal.SIGINT)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise AssertionError("the ranks did not stop within 60 s of Ctrl-C") from None
    assert p.returncode == 130, err
    return err


def test_ctrl_c_stops_every_rank_with_130(data_dir, tmp_path):
    out = tmp_path / "run"
    p = _start(2, data_dir, out, "--batch_size", "4", "--max_iters", "100000", "--eval_interval", "5")
    _wait_for_step(out, 7, p)
    err = ctrl_c(p)
    assert "interrupted at step" in err and "is left as it was" in err and "Traceback" not in err
    assert load_checkpoint(out / "ckpt.safetensors").step % 5 == 0


# Rank 0's checkpoint writes fail as on a full disk (reference/programs/atomic.py opens every file it writes).
DISK_FULL = ("import errno, reference.programs.atomic as A\n"
             "def full(path, mode):\n"
             "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
             "if os.environ.get('PMI_RANK') == '0': A.open = full\n")


def test_a_full_disk_on_rank_0_stops_every_rank_with_its_line_and_leaves_no_lock(data_dir, tmp_path):
    """Rank 0 tells every rank that its save failed (Trainer.save's broadcast), so every rank stops alike: rank
    0's line, exit 1, no MPI_Abort (whose launcher may kill rank 0 before its line is out), the lock released."""
    out = tmp_path / "run"
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-c", f"import os, sys\n{DISK_FULL}from reference.programs.cli "
           "import main\nsys.exit(main(sys.argv[1:]))", "train", "--data_dir", str(data_dir), "--out_dir", str(out),
           *TINY, "--batch_size", "4", "--max_iters", "10", "--eval_interval", "5"]
    p = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("error")]
    assert lines == [f"error: writing to {out} failed: No space left on device; free some space; no checkpoint "
                     "was written"], p.stderr
    assert "Abort" not in p.stderr and "Traceback" not in p.stderr
    assert sorted(x.name for x in out.iterdir()) == ["log.jsonl"]           # no lock, no temporary file


def _rank_pid(out, rank: int) -> int:
    """The pid of `rank`, from the log's "start" record (each rank's host and pid)."""
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and len(start["ranks"]) == 3
    return start["ranks"][rank]["pid"]


def _no_worker_left(out, limit=10.0):
    """Every rank's worker has ended (the survivors' die with their watchers): nothing is left running."""
    pids = [r["pid"] for r in json.loads((out / "log.jsonl").read_text().splitlines()[0])["ranks"]]
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()
                 and Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in "ZX"]
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"workers {alive} still run {limit} s after the run ended")


def test_a_rank_killed_mid_run_ends_the_run_with_the_checkpoint_intact(data_dir, tmp_path):
    out = tmp_path / "run"
    p = _start(3, data_dir, out, "--batch_size", "6", "--max_iters", "100000", "--eval_interval", "5")
    _wait_for_step(out, 12, p)
    pid = _rank_pid(out, 1)
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    try:
        said, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise AssertionError("the other ranks hung after a rank was killed") from None
    assert p.returncode != 0 and time.monotonic() - t0 < 60
    # The rank's watcher (reference/programs/rank_watch.py) outlives its worker and names it, in one line.
    lines = [x for x in err.splitlines() if "was killed by" in x]
    assert lines == [f"error: rank 1 (pid {pid} on {socket.gethostname()}) was killed by SIGKILL (kill -9, or the "
                     "out-of-memory killer); every rank stops now. Checkpoints are written whole or not at all: "
                     "--resume continues from the last one in out_dir, if the run wrote one, at any number of ranks"], err
    assert "Traceback" not in err
    _no_worker_left(out)
    assert load_checkpoint(out / "ckpt.safetensors").step >= 10           # the last checkpoint loads, checked


def test_a_killed_watcher_takes_its_worker_along_and_leaves_nothing_running(data_dir, tmp_path):
    """Killing the process Hydra started (the watcher) instead of the worker: the worker dies with it
    (PR_SET_PDEATHSIG), Hydra ends the others, and no worker is left running or waiting."""
    out = tmp_path / "run"
    p = _start(3, data_dir, out, "--batch_size", "6", "--max_iters", "100000", "--eval_interval", "5")
    _wait_for_step(out, 7, p)
    worker = _rank_pid(out, 2)
    watcher = int(Path(f"/proc/{worker}/stat").read_text().rpartition(")")[2].split()[1])     # its parent
    os.kill(watcher, signal.SIGKILL)
    try:
        p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise AssertionError("the ranks hung after a watcher was killed") from None
    assert p.returncode != 0
    _no_worker_left(out)
    assert load_checkpoint(out / "ckpt.safetensors").step >= 5


def test_the_watchers_line_and_when_a_rank_is_watched():
    from reference.programs import rank_watch
    env = {"PMI_FD": "9", "PMI_SIZE": "3", "PMI_RANK": "1"}
    assert rank_watch.should_watch(env)
    assert not rank_watch.should_watch({**env, "PMI_SIZE": "1"})                        # one rank: nothing to name
    assert not rank_watch.should_watch({**env, rank_watch.WORKER_ENV: "123"})          # the worker itself
    assert not rank_watch.should_watch({"OMPI_COMM_WORLD_SIZE": "3"})                  # Open MPI names ranks itself
    line = rank_watch.describe_death("1", 42, "h", signal.SIGSEGV)
    assert line.startswith("error: rank 1 (pid 42 on h) was killed by SIGSEGV; every rank stops now.")
    assert "\n" not in line


def test_a_hostfile_naming_this_machine_twice(data_dir, one_process, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text(f"{socket.gethostname()}\n{socket.gethostname()}\n")
    rc, err = train(2, data_dir, tmp_path / "dp", "--batch_size", "3", "--gradient_accumulation_steps", "3", *STEPS,
                    mpi_args=["-f", str(hosts)])
    assert rc == 0, err
    diff = differences(tmp_path / "dp", one_process)
    assert all(v <= RTOL for v in diff.values()), diff


def test_against_torch_ddp_and_zero_redundancy_optimizer(data_dir, tmp_path):
    """The twin (tests/ddp_twin.py): torch.distributed (gloo), DistributedDataParallel and
    ZeroRedundancyOptimizer on the same shards, against our N=2 ZeRO-1 run; float64, the tolerances of
    tests/test_trajectory.py's float64 trajectory (loss 1e-9, weights and moments 1e-8)."""
    pytest.importorskip("torch.distributed")
    import torch.distributed as tdist
    if not tdist.is_available() or not tdist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    args = ["--batch_size", "6", "--dropout", "0.0", *STEPS]
    rc, err = train(2, data_dir, tmp_path / "ours", *args, "--zero_stage", "1")
    assert rc == 0, err
    ckpt = load_checkpoint(tmp_path / "ours" / "ckpt.safetensors")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "twin.npz"
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "ddp_twin.py"), str(data_dir), str(out), "20",
                               json.dumps(ckpt.train_config)], cwd=REPO, stderr=subprocess.PIPE, text=True,
                              env={**ENV, "RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port)})
             for r in range(2)]
    for p in procs:
        _, perr = p.communicate(timeout=300)
        assert p.returncode == 0, perr
    twin = np.load(out)
    ours = losses(tmp_path / "ours")
    assert np.max(np.abs(ours - twin["losses"]) / np.abs(twin["losses"])) <= 1e-9
    for name, w in ckpt.model_state.items():
        if f"w.{name}" not in twin:
            continue                                               # a tied weight, saved under its other name
        assert rel(w, twin[f"w.{name}"]) <= 1e-8, name
        for key in ("exp_avg", "exp_avg_sq"):
            assert rel(ckpt.optimizer["state"][name][key], twin[f"{key}.{name}"]) <= 1e-8, (name, key)


def test_a_rank_that_loses_a_peer_and_hears_no_watcher_says_so_in_one_line(monkeypatch, capsys):
    """Where no watcher names the lost rank (a rank on another machine, another launcher), the survivor
    whose exchange failed waits PEER_LOST_GRACE_S, then prints one line and aborts every rank."""
    from mpi4py import MPI
    from reference.programs import rank_rendezvous
    from reference.programs.collectives import MPIComm, PeerLost

    class Dead:                                   # COMM_WORLD after a peer died: every exchange fails
        def Get_rank(self):
            return 0

        def Get_size(self):
            return 2

        def allgather(self, obj):
            raise MPI.Exception(MPI.ERR_OTHER)
    comm = MPIComm(Dead())
    with pytest.raises(PeerLost):
        comm.allgather(1)
    aborted = []
    comm.abort = aborted.append

    def run(*a):
        return comm.allgather("ready")
    monkeypatch.setattr(rank_rendezvous, "PEER_LOST_GRACE_S", 0.0)
    assert rank_rendezvous.run_ranks(comm, run) == 1 and aborted == [1]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: rank 0 lost contact with another rank (") and "--resume" in err[0]


@pytest.mark.parametrize("progress", [True, False])
def test_the_watcher_names_a_worker_killed_by_a_signal_on_a_line_of_its_own(monkeypatch, capfd, progress):
    """watch_worker on a worker that SIGKILLs itself: exit 137 and one line, after a newline that ends rank 0's
    progress bar (a bar's line has none) unless the run shows no bar."""
    from reference.programs import rank_watch
    r, w = os.pipe()                                           # stands in for Hydra's PMI socket
    monkeypatch.setenv("PMI_FD", str(r))
    monkeypatch.setenv("PMI_RANK", "1")
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = rank_watch.watch_worker([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), 9)",
                                        *([] if progress else ["--no-progress"])])
    finally:
        for s, h in before.items():
            signal.signal(s, h)
        os.close(r), os.close(w)
    err = capfd.readouterr().err
    assert code == 137
    assert err.startswith("\nerror: rank 1 (pid " if progress else "error: rank 1 (pid "), err
    assert err.count("\n") == (2 if progress else 1) and "was killed by SIGKILL" in err
