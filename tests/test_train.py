"""The training command and library: config (defaults, preset, file, flags), nanoGPT's optimizer groups
and schedule, logs, checkpoints on schedule, resume through the CLI, refusal of mismatches, a non-finite
loss stopping the run with the last good checkpoint intact, the progress bar, and the plot command."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from reference.programs import train as train_mod
from reference.programs.checkpoint import load_checkpoint
from reference.programs.cli import main
from reference.programs.tokenizers import CharTokenizer
from reference.optim import AdamW
from reference.programs.safetensors_io import load_file
from reference.programs.training.settings import PRESETS, TrainConfig, resolve_config
from reference.programs.training.trainer import Trainer, TrainingDiverged

REPO = Path(__file__).resolve().parent.parent
TEXT = "".join(f"{w} " for w in ("to be or not to be that is the question whether tis nobler in the mind "
                                 "to suffer the slings and arrows of outrageous fortune ").split()) * 12
TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "8", "--batch_size", "4",
        "--eval_iters", "2", "--warmup_iters", "2", "--lr_decay_iters", "8", "--learning_rate", "3e-3",
        "--dropout", "0.1", "--no-progress"]


@pytest.fixture(scope="module")
def prepare_module():
    spec = importlib.util.spec_from_file_location("data_prepare", REPO / "data" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def data_dir(tmp_path, prepare_module):
    d = tmp_path / "data"
    prepare_module.prepare(TEXT.encode(), d, kind="char")
    return d


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(["train", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def read_log(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ------------------------------------------------------------------------------------ config


def test_defaults_and_preset_are_nanogpts_shakespeare_char_cpu_recipe():
    expected = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False, batch_size=12,
                    max_iters=2000, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000,
                    decay_lr=True, weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0, eval_interval=250,
                    eval_iters=20, log_interval=1, always_save_checkpoint=False, seed=1337)
    preset = TrainConfig.from_dict(PRESETS["shakespeare_char"])
    for key, value in expected.items():
        assert getattr(preset, key) == value, key
        assert getattr(TrainConfig(), key) == value, key
    assert preset.out_dir == "out-shakespeare-char" and preset.data_dir == "data/shakespeare_char"
    mc = preset.model_config(65)
    assert (mc.norm, mc.mlp, mc.pos, mc.gelu_approximate, mc.tie_weights, mc.dtype) == \
        ("layernorm", "gelu", "learned", "none", True, "float32")


def test_config_validation():
    with pytest.raises(ValueError, match=r"unknown training config keys \['lr'\]"):
        TrainConfig.from_dict({"lr": 1e-3})
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="beta2 must be in"):
        TrainConfig(beta2=1.0)
    with pytest.raises(ValueError, match="learning_rate must be finite"):
        TrainConfig(learning_rate=float("inf"))
    assert isinstance(TrainConfig.from_dict({"learning_rate": 1}).learning_rate, float)   # JSON's 1 for 1.0
    with pytest.raises(ValueError, match="n_embd .* divisible by n_head"):
        TrainConfig(n_embd=30).model_config(65)


def parse(*argv) -> argparse.Namespace:
    return train_mod.parse_args(list(argv))


def test_precedence_defaults_preset_file_flags(tmp_path):
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"n_layer": 2, "learning_rate": 5e-4, "out_dir": "from-file"}))
    c = resolve_config(parse("--preset", "shakespeare_char", "--config", file, "--learning-rate", "2e-3",
                             "--no-bias", "--n_kv_head", "2", "--pos", "rope"))
    assert (c.n_layer, c.learning_rate, c.out_dir, c.bias, c.n_kv_head, c.pos) == (2, 2e-3, "from-file", False, 2, "rope")
    assert c.n_embd == 128 and c.eval_iters == 20                 # from the preset
    assert resolve_config(parse("--bias")).bias is True
    assert resolve_config(parse("--max_iters", "7")).max_iters == 7  # nanoGPT's underscore spelling too
    file.write_text(json.dumps({"n_layers": 2}))
    with pytest.raises(ValueError, match=r"unknown keys \['n_layers'\]"):
        resolve_config(parse("--config", file))
    file.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        resolve_config(parse("--config", file))


def test_optimizer_groups_are_nanogpts():
    """Decay on every parameter with ndim >= 2 (linear weights and embeddings, the tied one once), none on
    biases and norm weights; lr, betas, eps from the config."""
    config = TrainConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, bias=True)
    trainer = Trainer(config, train_data=np.arange(100) % 7, val_data=np.arange(50) % 7, vocab_size=7)
    opt = trainer.optimizer
    assert isinstance(opt, AdamW) and len(opt.param_groups) == 2
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    decay = [names[id(p)] for p in opt.param_groups[0]["params"]]
    no_decay = [names[id(p)] for p in opt.param_groups[1]["params"]]
    assert decay == [n for n, p in trainer.model.named_parameters() if p.data.ndim >= 2]
    assert "transformer.wte.weight" in decay and "transformer.wpe.weight" in decay and "lm_head.weight" not in decay
    assert no_decay and all(n.endswith(".bias") or ".ln_" in n for n in no_decay)
    assert sorted(decay + no_decay) == sorted(n for n, _ in trainer.model.named_parameters())
    assert (opt.param_groups[0]["weight_decay"], opt.param_groups[1]["weight_decay"]) == (0.1, 0.0)
    assert all(g["betas"] == (0.9, 0.99) and g["eps"] == 1e-8 for g in opt.param_groups)


def test_learning_rate_schedule():
    c = TrainConfig()
    assert c.lr_at(0) == pytest.approx(1e-3 / 101) and c.lr_at(99) == pytest.approx(1e-3 * 100 / 101)
    assert c.lr_at(100) == pytest.approx(1e-3)
    assert c.lr_at(1050) == pytest.approx(1e-4 + 0.5 * 0.9e-3)        # halfway down the cosine
    assert c.lr_at(2000) == pytest.approx(1e-4) and c.lr_at(5000) == 1e-4
    assert TrainConfig(decay_lr=False).lr_at(0) == 1e-3


# ------------------------------------------------------------------------------------ CLI runs


def test_train_cli_writes_logs_and_best_checkpoint(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = cli(capsys, "--data_dir", data_dir, "--out_dir", out, "--max_iters", 7, "--eval_interval", 3, *TINY)
    assert rc == 0, err
    log = read_log(out / "log.jsonl")
    events = [r["event"] for r in log]
    assert events[0] == "start" and events[-1] == "end"
    evals = [r for r in log if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [0, 3, 6, 7]                 # every eval_interval, and at the end
    steps = [r for r in log if r["event"] == "train"]
    assert [r["step"] for r in steps] == list(range(7))
    for r in steps:
        assert set(r) >= {"loss", "lr", "grad_norm", "dt_s", "tokens_per_s"} and math.isfinite(r["loss"])
    assert steps[0]["lr"] == pytest.approx(3e-3 / 3)
    assert not evals[0]["saved"]                                       # never at step 0 (nanoGPT)
    best = min(evals[1:], key=lambda r: r["val_loss"])
    for r in evals[1:]:                                                # saved exactly when val improved
        assert r["saved"] == (r["val_loss"] == min(e["val_loss"] for e in evals[: evals.index(r) + 1]))
    ckpt = load_checkpoint(out / "ckpt.safetensors")
    last_saved = [r for r in evals if r["saved"]][-1]
    assert ckpt.step == last_saved["step"] and ckpt.best_val_loss == pytest.approx(best["val_loss"])
    assert ckpt.train_config["max_iters"] == 7 and ckpt.tokenizer["kind"] == "char"
    assert ckpt.config.dtype == "float32" and ckpt.config.dropout == 0.1


def test_train_cli_refuses_to_clobber_a_run(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ("--data_dir", data_dir, "--out_dir", out, "--max_iters", 2, "--eval_interval", 1, *TINY)
    assert cli(capsys, *args)[0] == 0
    rc, _, err = cli(capsys, *args)
    assert rc == 2 and "already holds a checkpoint" in err and "--resume" in err
    assert cli(capsys, *args, "--overwrite")[0] == 0
    rc, _, err = cli(capsys, "--data_dir", tmp_path / "nowhere", "--out_dir", tmp_path / "o2", *TINY)
    assert rc == 2 and "no prepared data" in err and "prepare.py" in err
    rc, _, err = cli(capsys, "--data_dir", data_dir, "--out_dir", tmp_path / "o3", "--resume", *TINY)
    assert rc == 2 and "no checkpoint at" in err


@pytest.mark.parametrize("kernels", ["fast", "textbook"])
def test_resume_through_the_cli_is_bit_identical(data_dir, tmp_path, capsys, kernels):
    """On either path (reference/fast/kernels.py), a run resumed with the same path is bit-identical."""
    common = ("--data_dir", data_dir, "--eval_interval", 4, "--always_save_checkpoint", "--kernels", kernels, *TINY)
    assert cli(capsys, "--out_dir", tmp_path / "a", "--max_iters", 8, *common)[0] == 0
    assert cli(capsys, "--out_dir", tmp_path / "b", "--max_iters", 4, *common)[0] == 0
    # the rest of the config comes from the checkpoint; only max_iters is extended
    rc, _, err = cli(capsys, "--out_dir", tmp_path / "b", "--resume", "--max_iters", 8, "--no-progress",
                     "--kernels", kernels)
    assert rc == 0, err
    a, _ = load_file(tmp_path / "a" / "ckpt.safetensors")
    b, meta_b = load_file(tmp_path / "b" / "ckpt.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("optimizer.") for k in a)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    ca, cb = load_checkpoint(tmp_path / "a" / "ckpt.safetensors"), load_checkpoint(tmp_path / "b" / "ckpt.safetensors")
    assert ca.step == cb.step == 8 and ca.rng == cb.rng and ca.best_val_loss == cb.best_val_loss
    log = read_log(tmp_path / "b" / "log.jsonl")                       # appended, not overwritten
    starts = [r for r in log if r["event"] == "start"]
    assert [(s["step"], s["resumed"]) for s in starts] == [(0, False), (4, True)]
    evals_a = [(r["step"], r["val_loss"]) for r in read_log(tmp_path / "a" / "log.jsonl") if r["event"] == "eval"]
    evals_b = [(r["step"], r["val_loss"]) for r in log if r["event"] == "eval"]
    assert evals_a == evals_b == [(s, v) for s, v in evals_a if s in (0, 4, 8)]


def test_a_run_stopped_between_evaluations_logs_the_same_evaluations_once_resumed(data_dir, tmp_path, capsys):
    """Stopped at step 3 (max_iters, no eval_interval multiple: it evaluates there) and resumed to 6, a run
    logs at steps 0, 5 and 6 the very losses of the run that went to 6 in one go: an evaluation's batches
    depend on the seed and the step alone, not on how many evaluations came before."""
    common = ("--data_dir", data_dir, "--eval_interval", 5, "--always_save_checkpoint", *TINY)
    assert cli(capsys, "--out_dir", tmp_path / "a", "--max_iters", 6, *common)[0] == 0
    assert cli(capsys, "--out_dir", tmp_path / "b", "--max_iters", 3, *common)[0] == 0
    assert cli(capsys, "--out_dir", tmp_path / "b", "--resume", "--max_iters", 6, "--no-progress")[0] == 0
    evals = {d: {r["step"]: (r["train_loss"], r["val_loss"]) for r in read_log(tmp_path / d / "log.jsonl")
                 if r["event"] == "eval"} for d in ("a", "b")}
    assert sorted(evals["a"]) == [0, 5, 6] and sorted(evals["b"]) == [0, 3, 5, 6]
    assert all(evals["a"][s] == evals["b"][s] for s in (0, 5, 6)), evals


def test_resume_refuses_another_model_or_vocabulary(data_dir, tmp_path, capsys, prepare_module):
    out = tmp_path / "out"
    assert cli(capsys, "--data_dir", data_dir, "--out_dir", out, "--max_iters", 2, "--eval_interval", 1, *TINY)[0] == 0
    before = (out / "ckpt.safetensors").read_bytes()
    rc, _, err = cli(capsys, "--out_dir", out, "--resume", "--n_embd", 32, "--no-progress")
    assert rc == 2 and "model config mismatch: n_embd: checkpoint 16, here 32" in err
    other = tmp_path / "other"
    prepare_module.prepare(TEXT.upper().encode(), other, kind="char")
    rc, _, err = cli(capsys, "--out_dir", out, "--resume", "--data_dir", other, "--no-progress")
    assert rc == 2 and "vocabulary mismatch" in err
    assert (out / "ckpt.safetensors").read_bytes() == before


# ------------------------------------------------------------------------------------ divergence


def test_non_finite_loss_stops_with_the_last_good_checkpoint_intact(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(capsys, "--data_dir", data_dir, "--out_dir", out, "--max_iters", 4, "--eval_interval", 2, *TINY)[0] == 0
    good = (out / "ckpt.safetensors").read_bytes()
    good_step = load_checkpoint(out / "ckpt.safetensors").step
    # inject a huge learning rate: the weights blow up and a later loss is non-finite
    rc, _, err = cli(capsys, "--out_dir", out, "--resume", "--max_iters", 12, "--learning_rate", "1e30",
                     "--no-decay_lr", "--always_save_checkpoint", "--no-progress")
    assert rc == 1
    assert "error: non-finite" in err and "at step" in err and "left as it was" in err, err
    assert (out / "ckpt.safetensors").read_bytes() == good              # byte for byte
    ckpt = load_checkpoint(out / "ckpt.safetensors")
    assert ckpt.step == good_step and all(np.isfinite(v).all() for v in ckpt.model_state.values())
    diverged = [r for r in read_log(out / "log.jsonl") if r["event"] == "diverged"]
    assert len(diverged) == 1 and f"at step {diverged[0]['step']}" in diverged[0]["message"] in err


def test_divergence_in_the_library_names_the_step(tmp_path):
    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode(TEXT)
    config = TrainConfig(out_dir=str(tmp_path), n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=4,
                         max_iters=20, eval_interval=2, eval_iters=2, warmup_iters=0, learning_rate=3e-3,
                         dtype="float64")
    trainer = Trainer(config, train_data=ids[:700], val_data=ids[700:], tokenizer=tok)
    saves = []
    real_save = trainer.save
    trainer.save = lambda *a: saves.append((trainer.step, real_save(*a).read_bytes())) or trainer.ckpt_path
    normal = trainer.lr_at
    trainer.lr_at = lambda step: normal(step) if step < 4 else 1e30
    with pytest.raises(TrainingDiverged, match=r"non-finite .* at step (\d+)") as info:
        trainer.run()
    # the update at step 4 blows the weights up; how many steps until a loss overflows depends on the numerics
    assert 4 < info.value.step < 20 and f"at step {info.value.step}" in str(info.value)
    assert saves and saves[-1][0] <= info.value.step
    assert (tmp_path / "ckpt.safetensors").read_bytes() == saves[-1][1]
    assert all(np.isfinite(v).all() for v in load_checkpoint(tmp_path / "ckpt.safetensors").model_state.values())


# ------------------------------------------------------------------------------------ progress, plot


def test_progress_bar_and_its_fallback(data_dir, tmp_path, capsys, monkeypatch):
    pytest.importorskip("tqdm")
    rc, _, err = cli(capsys, "--data_dir", data_dir, "--out_dir", tmp_path / "a", "--max_iters", 3,
                     "--eval_interval", 3, *TINY[:-1])
    assert rc == 0 and "train:" in err and "step 3: train loss" in err and "tok_s" in err
    monkeypatch.setitem(sys.modules, "tqdm", None)                     # tqdm not installed
    rc, _, err = cli(capsys, "--data_dir", data_dir, "--out_dir", tmp_path / "b", "--max_iters", 3,
                     "--eval_interval", 3, *TINY[:-1])
    assert rc == 0 and "install tqdm" in err and "step 2: loss" in err and "tok/s" in err


def test_plot_command(data_dir, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    assert cli(capsys, "--data_dir", data_dir, "--out_dir", out, "--max_iters", 4, "--eval_interval", 2, *TINY)[0] == 0
    png = tmp_path / "img" / "curve.png"
    rc = main(["plot", str(out / "log.jsonl"), str(out / "log.jsonl"), "-o", str(png), "--labels", "a", "b"])
    assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event": "train", "step": 0, "loss": 1.0}\nnot json\n')
    assert main(["plot", str(bad), "-o", str(png)]) == 2
    assert "bad.jsonl:2: not a JSON line" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)              # matplotlib not installed
    assert main(["plot", str(out / "log.jsonl"), "-o", str(png)]) == 2
    assert "plotting needs matplotlib" in capsys.readouterr().err


def test_new_modules_import_numpy_and_stdlib_only():
    """Module level: numpy, the standard library and the package itself; tqdm and matplotlib only lazily."""
    for name in ("train", "sample", "checkpoint", "plot"):
        tree = ast.parse((REPO / "reference" / "programs" / f"{name}.py").read_text())
        top, lazy = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                roots = {m.split(".")[0] for m in mods if not (isinstance(node, ast.ImportFrom) and node.level)}
                (top if node in tree.body else lazy).update(roots)
        assert top - {"numpy", "__future__"} <= set(sys.stdlib_module_names), (name, top)
        assert lazy - {"tqdm", "matplotlib", "numpy"} <= set(sys.stdlib_module_names), (name, lazy)
        assert "torch" not in top | lazy
