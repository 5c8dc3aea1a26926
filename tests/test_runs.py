"""Runs do what they say: settings precedence (flags > config file > resumed checkpoint > preset >
defaults) printed at start, `--resume` finding its run, plain words when nothing is left to train or the
schedule is longer than the run, `--no-progress` keeping the final line, and every option of train, sample,
plot and prepare.py showing its default in --help."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reference.programs import cli
from reference.programs.checkpoint import load_checkpoint
from test_train import TEXT, TINY, prepare_module  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent
SMALL_MODEL = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "8", "--batch_size", "4",
               "--eval_iters", "1", "--eval_interval", "1", "--always_save_checkpoint"]


@pytest.fixture
def data_dir(tmp_path, prepare_module):  # noqa: F811
    d = tmp_path / "data"
    prepare_module.prepare(TEXT.encode(), d, kind="char")
    return d


def train(capsys, *args) -> tuple[int, str]:
    rc = cli.main(["train", *map(str, args)])
    return rc, capsys.readouterr().err


def settings_line(err: str) -> str:
    (line,) = [x for x in err.splitlines() if x.startswith("settings: ")]
    return line


def test_preset_with_resume_keeps_the_runs_own_settings(data_dir, tmp_path, capsys, monkeypatch):
    """The report: `--preset shakespeare_char --resume` put the preset's max_iters (2000) back over the run's.
    The checkpoint's settings outrank the preset; the run is found in the preset's out_dir."""
    monkeypatch.chdir(tmp_path)
    rc, err = train(capsys, "--preset", "shakespeare_char", "--data_dir", data_dir, "--max_iters", 2, *SMALL_MODEL,
                    "--lr_decay_iters", 2, "--warmup_iters", 0, "--no-progress")
    assert rc == 0, err
    run_dir = tmp_path / "out-shakespeare-char"                         # the preset's out_dir
    assert load_checkpoint(run_dir / "ckpt.safetensors").step == 2
    rc, err = train(capsys, "--preset", "shakespeare_char", "--resume", "--no-progress")
    assert rc == 0, err
    line = settings_line(err)
    assert "max_iters=2 (checkpoint)" in line and "n_layer=1 (checkpoint)" in line
    assert f"data_dir={str(data_dir)!r} (checkpoint)" in line
    assert err.strip().splitlines()[-1] == ("nothing to train: the checkpoint out-shakespeare-char/ckpt.safetensors is at "
                                            "step 2 and max_iters is 2; pass --max_iters N with N > 2 to train further")
    assert "done:" not in err and load_checkpoint(run_dir / "ckpt.safetensors").step == 2

    rc, err = train(capsys, "--preset", "shakespeare_char", "--resume", "--max_iters", 3, "--no-progress")
    assert rc == 0 and "max_iters=3 (flag)" in settings_line(err)       # a flag extends it
    assert err.strip().splitlines()[-1].startswith("done: step 3")        # --no-progress keeps the final line


def test_precedence_flag_over_file_over_checkpoint(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc, err = train(capsys, "--data_dir", data_dir, "--out_dir", out, "--max_iters", 2, *SMALL_MODEL,
                    "--learning_rate", "2e-3", "--no-progress")
    assert rc == 0, err
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"max_iters": 3, "learning_rate": 1e-3, "eval_iters": 2}))
    rc, err = train(capsys, "--resume", out, "--config", file, "--learning_rate", "5e-4", "--no-progress")
    assert rc == 0, err
    line = settings_line(err)
    assert "learning_rate=0.0005 (flag)" in line and "max_iters=3 (config file)" in line
    assert "eval_iters=2 (config file)" in line and "batch_size=4 (checkpoint)" in line
    assert f"out_dir={str(out)!r} (checkpoint)" in line


def test_resume_path_finds_the_run_by_file_or_directory(data_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "somewhere" / "run"
    assert train(capsys, "--data_dir", data_dir, "--out_dir", out, "--max_iters", 2, *SMALL_MODEL, "--no-progress")[0] == 0
    monkeypatch.chdir(tmp_path)                                          # no ./out here
    for target in (out, out / "ckpt.safetensors"):
        rc, err = train(capsys, "--resume", target, "--no-progress")
        assert rc == 0 and "nothing to train" in err, err
    rc, err = train(capsys, "--resume", "--max_iters", 3, "--no-progress")
    assert rc == 2 and "no checkpoint at out/ckpt.safetensors to resume (out_dir 'out'); give the run with " \
                       "--out_dir DIR or --resume PATH" in err
    rc, err = train(capsys, "--resume", out, "--max_iters", 3, "--no-progress")  # continues in its own directory
    assert rc == 0 and load_checkpoint(out / "ckpt.safetensors").step == 3, err


def test_a_schedule_longer_than_the_run_is_warned_about(data_dir, tmp_path, capsys):
    rc, err = train(capsys, "--preset", "shakespeare_char", "--data_dir", data_dir, "--out_dir", tmp_path / "o",
                    "--max_iters", 2, *SMALL_MODEL, "--no-progress")
    assert rc == 0, err
    assert ("warning: the learning-rate schedule decays over lr_decay_iters=2000 steps but the run stops at "
            "max_iters=2: the last lr is ") in err and "pass --lr_decay_iters 2" in err
    assert "warning: warmup_iters=100 is longer than the run (max_iters=2)" in err
    rc, err = train(capsys, "--data_dir", data_dir, "--out_dir", tmp_path / "p", "--max_iters", 2, *SMALL_MODEL,
                    "--lr_decay_iters", 2, "--warmup_iters", 1, "--no-progress")
    assert rc == 0 and "warning" not in err


def test_a_schedule_that_rises_is_warned_about(data_dir, tmp_path, capsys):
    """min_lr above learning_rate makes the 'decay' climb: said at start, not refused (it may be meant)."""
    rc, err = train(capsys, "--data_dir", data_dir, "--out_dir", tmp_path / "o", "--max_iters", 2, *SMALL_MODEL,
                    "--lr_decay_iters", 2, "--warmup_iters", 1, "--learning_rate", 1e-3, "--min_lr", 1e-2,
                    "--no-progress")
    assert rc == 0, err
    assert "warning: min_lr=0.01 is above learning_rate=0.001: the cosine schedule rises" in err


def test_settings_are_printed_at_start_and_the_defaults_say_so(capsys, tmp_path):
    from reference.programs.training.settings import TrainConfig, describe_settings
    assert describe_settings(TrainConfig(), {}) == "settings: the defaults (the shakespeare_char recipe)"
    line = describe_settings(TrainConfig(max_iters=5, seed=1337), {"max_iters": "flag", "seed": "preset"})
    assert line == "settings: max_iters=5 (flag); the rest at their defaults"      # the preset's seed is the default


@pytest.mark.parametrize("kernels", ["fast", "textbook"])
def test_the_settings_line_says_which_path_runs(data_dir, tmp_path, capsys, kernels):
    """`kernels=fast` or `kernels=textbook` leads the settings line (not a TrainConfig field: checkpoints
    do not save it), and the log's "start" record names it too."""
    from reference.programs.training.settings import TrainConfig, describe_settings
    assert describe_settings(TrainConfig(), {}, kernels=kernels) == \
        f"settings: kernels={kernels}; the defaults (the shakespeare_char recipe)"
    args = [] if kernels == "fast" else ["--kernels", kernels]                # fast is the default
    rc, err = train(capsys, "--data_dir", data_dir, "--out_dir", tmp_path / "o", "--max_iters", 1, *SMALL_MODEL,
                    "--no-progress", *args)
    assert rc == 0, err
    assert settings_line(err).startswith(f"settings: kernels={kernels}; data_dir=")
    start = json.loads((tmp_path / "o" / "log.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["kernels"] == kernels


# ------------------------------------------------------------------------------------ --help defaults


def options_without_default(parser: argparse.ArgumentParser) -> list[str]:
    """Every optional argument whose --help entry does not show a default."""
    text = parser.format_help()
    missing = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        entry = re.search(rf"^  {re.escape(', '.join(action.option_strings[:1]))}\b.*?(?=^  -|\Z)", text,
                          re.M | re.S)
        assert entry, action.option_strings
        if action.required:                                # before: `export --to DIR ... (default: None)`
            assert "(required)" in entry.group(0) and "default" not in entry.group(0).lower(), entry.group(0)
        elif "default" not in entry.group(0).lower():
            missing.append(action.option_strings[0])
    return missing


@pytest.mark.parametrize("command", ["train", "sample", "plot", "export"])
def test_every_option_shows_its_default_in_help(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    parser = cli.command_parser(command)
    assert options_without_default(parser) == []


def test_prepare_script_shows_every_default(prepare_module, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        prepare_module.parse_args(["--help"])
    text = capsys.readouterr().out
    entries = re.split(r"\n  (?=-)", text.split("options:")[1])[1:]
    assert [e.split()[0] for e in entries] == ["-h,", "--from", "--out", "--tokenizer", "--sft", "--dpo", "--timeout"]
    for entry in entries[1:]:
        assert "default" in entry, entry


def test_help_through_a_real_process_mentions_the_precedence():
    proc = subprocess.run([sys.executable, "-m", "reference", "train", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(REPO), "COLUMNS": "200", "PATH": ""})
    assert proc.returncode == 0
    assert "highest precedence first: flags, --config FILE.json, the resumed checkpoint's saved settings, " \
           "--preset, the defaults" in " ".join(proc.stdout.split())


def test_done_line_says_where_the_checkpoint_is_or_why_there_is_none(data_dir, tmp_path, capsys):
    """A short run whose val loss never beats step 0's writes no checkpoint, and its `done: ...` line says so
    and why (`sample` and `export` would then say "no checkpoint"); otherwise the line names the checkpoint
    and its step."""
    small = [a for a in SMALL_MODEL if a != "--always_save_checkpoint"]
    out = tmp_path / "run"
    # At lr 1e-9 the weights stay put and each evaluation's loss differs by its batches alone (drawn per step):
    # with seed 1333 steps 1 and 2 draw worse batches than step 0 (2.989 and 2.978 against 2.956).
    rc, err = train(capsys, "--data_dir", data_dir, "--out_dir", out, "--max_iters", 2, *small, "--learning_rate",
                    "1e-9", "--warmup_iters", 0, "--no-progress", "--seed", 1333)
    done = err.strip().splitlines()[-1]
    assert rc == 0 and done.startswith("done: step 2") and not (out / "ckpt.safetensors").exists()
    assert done.endswith("no checkpoint was written: the val loss never beat the best so far, "
                         f"{json.loads((out / 'log.jsonl').read_text().splitlines()[1])['val_loss']:.4f} "
                         "(--always_save_checkpoint saves at every evaluation)"), done
    rc, err = train(capsys, "--data_dir", data_dir, "--out_dir", out, "--max_iters", 2, *SMALL_MODEL, "--overwrite",
                    "--no-progress", "--seed", 1333)
    assert rc == 0 and err.strip().endswith(f"; checkpoint {out / 'ckpt.safetensors'} (step 2)"), err
    rc, err = train(capsys, "--resume", out, "--max_iters", 3, "--learning_rate", "1e-9", "--warmup_iters", 0,
                    "--no-always_save_checkpoint", "--no-progress")
    assert rc == 0 and f"; {out / 'ckpt.safetensors'} is unchanged: the val loss never beat" in err, err
    assert load_checkpoint(out / "ckpt.safetensors").step == 2


def test_a_flag_of_the_other_optimizer_is_refused(data_dir, tmp_path, capsys):
    """Before: `--momentum 0.5` with the default AdamW, or `--optimizer sgd --beta1 0.5`, trained without using
    the flag and without a word."""
    base = ["--data_dir", data_dir, "--out_dir", tmp_path / "run", "--max_iters", 1, *SMALL_MODEL, "--no-progress"]
    for extra, want in ((["--momentum", "0.5"], "--momentum is a setting of --optimizer sgd, but this run uses "
                                                "adamw; drop it or pass --optimizer sgd"),
                        (["--nesterov", "--dampening", "0.1"], "--dampening and --nesterov are settings of --optimizer "
                                                               "sgd, but this run uses adamw; drop them or pass "
                                                               "--optimizer sgd"),
                        (["--optimizer", "sgd", "--beta1", "0.5"], "--beta1 is a setting of --optimizer adamw, but this "
                                                                   "run uses sgd; drop it or pass --optimizer adamw")):
        rc, err = train(capsys, *base, *extra)
        assert rc == 2 and err.strip().splitlines()[-1] == f"error: {want}", err
        assert not (tmp_path / "run").exists()
    config = tmp_path / "saved.json"                   # a config file may hold every key (a saved train_config)
    config.write_text(json.dumps({"momentum": 0.9, "beta1": 0.9}))
    rc, err = train(capsys, *base, "--config", config)
    assert rc == 0, err
