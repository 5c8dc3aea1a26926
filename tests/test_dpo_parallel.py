"""`train --objective dpo` under `mpiexec -n N` (reference/programs/distributed.py, reference/programs/dpo.py),
proven equal to one process with tests/test_data_parallel.py's helpers and bound (float64, 12 steps, dropout
0.1; per tensor max|a - b| / max|b| <= 1e-13 for the losses, every weight and both AdamW moments):

- N = 2 and N = 3 ranks x micro-batches of 2 pairs equal one process with the whole batch of 8 pairs
  (N = 3: an uneven share of pairs, 3, 3 and 2, so pieces weigh 2/8 and 1/8);
- LoRA adapters (only they are reduced over the ranks; the frozen base weights stay the starting ones);
- ZeRO-1 equals plain data parallel bit for bit; a run checkpointed at N = 2 resumes at N = 1 on the
  uninterrupted N = 2 trajectory (the reference log-probabilities come from the checkpoint);
- planted bugs are caught: shard losses weighted 1/N instead of by their pairs, and a pair's chosen and
  rejected rows sent to different ranks (the rows shared out as the language model's);
- Ctrl-C while the ranks compute the reference (before they meet) is one line and exit 130.
Skipped, with the reason, where mpi4py or mpiexec is missing (as tests/test_data_parallel.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

dp = pytest.importorskip("test_data_parallel")                 # skipped there, with the reason

from reference.programs.checkpoint import load_checkpoint  # noqa: E402

from test_dpo import write_pairs  # noqa: E402

DPO = ["--objective", "dpo", "--beta", "0.5", "--block_size", "16", "--max_iters", "12", "--eval_interval", "6",
       "--eval_iters", "3"]
WHOLE = ["--batch_size", "8"]                                  # one process: 8 pairs in one forward
PIECES = ["--batch_size", "2", "--gradient_accumulation_steps", "4"]   # the same 8 pairs, micro-batches of 2
LORA = ["--lora_rank", "2", "--lora_targets", "c_attn,c_fc", "--lora_dropout", "0.2"]
PLANTS = {
    # each rank's pieces weighted 1/N, the mean of shard means, instead of by their share of the pairs
    "one_over_n": "import reference.programs.dpo as D; f = D.dpo_loss_and_backward\n"
                  "D.dpo_loss_and_backward = lambda m, x, y, r, beta, masks=None, weight=1.0: "
                  "f(m, x, y, r, beta, masks, 1 / int(os.environ['PMI_SIZE']))",
    # the batch's rows shared out as the language model's: a pair's chosen and rejected rows apart
    "pairs_split": "import numpy as np, reference.programs.dpo as D\n"
                   "def piece(self, batch, a, b):\n"
                   "    rows = np.r_[2 * a:2 * b]\n"
                   "    return tuple(t[rows] for t in batch), rows\n"
                   "D.DPOObjective.piece = piece",
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from test_sft import prepare
    d = tmp_path_factory.mktemp("dpo-dp")
    assert prepare.main(["--dpo", str(write_pairs(d / "p.jsonl", 40)), "--out", str(d / "data")]) == 0
    return d / "data"


def train(n, data_dir, out, *args, plant=None):
    if plant is None:
        return dp.train(n, data_dir, out, *DPO, *args)
    code = f"import os, sys\n{PLANTS[plant]}\nfrom reference.programs.cli import main\nsys.exit(main(sys.argv[1:]))"
    cmd = [dp.MPIEXEC, "-n", str(n), sys.executable, "-c", code, "train", "--data_dir", str(data_dir),
           "--out_dir", str(out), *dp.TINY, *DPO, *map(str, args)]
    p = subprocess.run(cmd, cwd=dp.REPO, env=dp.ENV, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stderr


@pytest.fixture(scope="module")
def one_process(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo-dp") / "one"
    rc, err = train(0, data_dir, out, *WHOLE)
    assert rc == 0, err
    return out


@pytest.mark.parametrize("n", [2, 3])
def test_n_ranks_times_micro_batches_of_pairs_equal_one_process(n, data_dir, one_process, tmp_path):
    rc, err = train(n, data_dir, tmp_path / "dp", *PIECES)
    assert rc == 0, err
    shards = {2: "[4, 4]", 3: "[3, 3, 2]"}[n]
    assert f"data parallel: {n} rank(s), a step's batch 8 pairs in shards of {shards} pairs" in err, err
    diff = dp.differences(tmp_path / "dp", one_process)
    print(f"DPO, {n} ranks x micro-batches of 2 pairs vs one process: {diff}")
    assert all(v <= dp.RTOL for v in diff.values()), diff
    assert not dp.identical(tmp_path / "dp", one_process)       # two real runs, compared
    # evaluation (batches of batch_size pairs, dealt round-robin over the ranks) against one process with the
    # same flags: to round-off, and bit for bit at step 0, where the weights are the same bits
    rc, err = train(0, data_dir, tmp_path / "one_k", *PIECES)
    assert rc == 0, err
    evals = [[(r["train_loss"], r["val_loss"]) for r in map(json.loads, (d / "log.jsonl").read_text().splitlines())
              if r["event"] == "eval"] for d in (tmp_path / "dp", tmp_path / "one_k")]
    assert len(evals[0]) == 3 and dp.rel(evals[0], evals[1]) <= dp.RTOL and evals[0][0] == evals[1][0]
    refs = [load_checkpoint(d / "ckpt.safetensors").extra["objective"] for d in (tmp_path / "dp", one_process)]
    assert refs[0] == refs[1]                                   # every rank computed the whole reference


def test_lora_dpo_on_two_ranks_equals_one_process(data_dir, tmp_path):
    for name, n, flags in (("one", 0, WHOLE), ("two", 2, PIECES)):
        rc, err = train(n, data_dir, tmp_path / name, *flags, *LORA)
        assert rc == 0, err
    diff = dp.differences(tmp_path / "two", tmp_path / "one")
    print(f"DPO + LoRA, 2 ranks x micro-batches of 2 pairs vs one process: {diff}")
    assert all(v <= dp.RTOL for v in diff.values()), diff
    ckpt = load_checkpoint(tmp_path / "two" / "ckpt.safetensors")
    assert ckpt.optimizer["state"] and all("lora_" in k for k in ckpt.optimizer["state"])   # only adapters stepped


def test_zero1_equals_plain_and_a_run_saved_at_two_ranks_resumes_at_one(data_dir, tmp_path):
    for name, zero, iters in (("plain", 0, 12), ("zero", 1, 12), ("half", 1, 6)):
        rc, err = train(2, data_dir, tmp_path / name, *PIECES, "--zero_stage", zero, "--max_iters", iters)
        assert rc == 0, err
    assert dp.identical(tmp_path / "zero", tmp_path / "plain")
    assert load_checkpoint(tmp_path / "half" / "ckpt.safetensors").step == 6
    shutil.copytree(tmp_path / "half", tmp_path / "resumed")
    rc, err = train(0, data_dir, tmp_path / "resumed", *PIECES, "--resume")
    assert rc == 0, err
    diff = dp.differences(tmp_path / "resumed", tmp_path / "zero")
    print(f"DPO saved at 2 ranks (ZeRO-1), resumed in one process, vs the uninterrupted run: {diff}")
    assert all(v <= dp.RTOL for v in diff.values()), diff
    saved = load_checkpoint(tmp_path / "half" / "ckpt.safetensors").extra["objective"]["reference"]
    final = load_checkpoint(tmp_path / "resumed" / "ckpt.safetensors").extra["objective"]["reference"]
    assert saved == final                                       # the run's own reference, kept


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_planted_bugs_are_caught(plant, data_dir, one_process, tmp_path):
    rc, err = train(3, data_dir, tmp_path / "bug", *PIECES, plant=plant)
    assert rc == 0, err
    diff = dp.differences(tmp_path / "bug", one_process)
    print(f"planted {plant}: weights off by {diff['weights']:.2g}")
    assert diff["weights"] > 1e-6


def test_ctrl_c_while_the_ranks_compute_the_reference_is_one_line_and_130(data_dir, tmp_path):
    """Ctrl-C before the ranks have met (here: while they compute the reference's log-probabilities, which
    takes minutes on a real preference set): every rank stops with one line and exit 130, no traceback, no
    MPI_Abort, nothing left in out_dir. A plant holds each rank in the reference computation until then."""
    import time
    out, marks = tmp_path / "run", tmp_path / "marks"
    marks.mkdir()
    hold = ("import time, reference.programs.dpo as D\n"
            "def held(model, encoded, batch_size=8):\n"
            f"    open(os.path.join({str(marks)!r}, os.environ['PMI_RANK']), 'w').close()\n"
            "    while True: time.sleep(0.01)\n"
            "D.reference_logprobs = held\n")
    code = f"import os, sys\n{hold}from reference.programs.cli import main\nsys.exit(main(sys.argv[1:]))"
    cmd = [dp.MPIEXEC, "-n", "2", sys.executable, "-c", code, "train", "--data_dir", str(data_dir), "--out_dir",
           str(out), *dp.TINY, *DPO, *WHOLE]
    p = subprocess.Popen(cmd, cwd=dp.REPO, env=dp.ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    t0 = time.monotonic()
    while len(list(marks.iterdir())) < 2:
        assert p.poll() is None and time.monotonic() - t0 < 60, p.communicate()
        time.sleep(0.05)
    err = dp.ctrl_c(p)
    assert [x for x in err.splitlines() if "interrupted" in x] == [
        "interrupted: python -m reference train stopped before training started"], err
    assert "Traceback" not in err and "Abort" not in err
    assert not out.exists()                          # the lock made the directory, and took it away again
