"""Training, the refusals and edges: config values of the wrong type, data that cannot be trained on,
resuming without saved generators, saving nowhere or saving non-finite weights, a non-finite loss or
evaluation stopping the run, log_interval, `train()`, and config files that are missing or not JSON.

(tests/test_train.py covers the recipe, the CLI runs, resume and divergence end to end.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from reference.programs import train as train_mod
from reference.programs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from reference.programs.cli import main
from reference.programs.tokenizers import CharTokenizer
from reference.programs.options import check_field
from reference.programs.training.settings import TrainConfig, read_config_file, resolve_config
from reference.programs.training.trainer import Trainer, TrainingDiverged, train

TEXT = "to be or not to be that is the question whether tis nobler in the mind to suffer " * 8
TOK = CharTokenizer.from_text(TEXT)
IDS = TOK.encode(TEXT)


def tiny(**changes) -> TrainConfig:
    base = dict(out_dir="", seed=3, n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=4, max_iters=4,
                learning_rate=3e-3, min_lr=3e-4, warmup_iters=1, lr_decay_iters=4, eval_interval=2, eval_iters=1)
    return TrainConfig(**{**base, **changes})


def trainer(config: TrainConfig | None = None, **kw) -> Trainer:
    return Trainer(config or tiny(), train_data=IDS[:500], val_data=IDS[500:], tokenizer=TOK, **kw)


def read_log(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("changes, message", [
    (dict(learning_rate=True), r"^learning_rate must be finite and > 0 \(float\), got True$"),
    (dict(learning_rate="1e-3"), r"^learning_rate must be finite and > 0 \(float\), got '1e-3'$"),
    (dict(weight_decay=-0.1), r"^weight_decay must be finite and >= 0 \(float\), got -0.1$"),
    (dict(grad_clip=float("nan")), r"^grad_clip must be finite and >= 0 \(float\), got nan$"),
    (dict(beta1=-0.5), r"^beta1 must be in \[0, 1\) \(float\), got -0.5$"),
    (dict(batch_size=2.0), r"^batch_size must be >= 1 \(int\), got 2.0$"),
    (dict(eval_iters=True), r"^eval_iters must be >= 1 \(int\), got True$"),
    (dict(max_iters=-1), r"^max_iters must be >= 0 \(int\), got -1$"),
    (dict(seed=-5), r"^seed must be >= 0 \(int\), got -5$"),
    (dict(decay_lr=1), r"^decay_lr must be a boolean \(bool\), got 1$"),
    (dict(always_save_checkpoint="yes"), r"^always_save_checkpoint must be a boolean \(bool\), got 'yes'$"),
])
def test_config_values_of_the_wrong_kind_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_ints_are_taken_for_floats():
    c = TrainConfig(learning_rate=1, min_lr=0, beta1=0, grad_clip=2)
    assert (c.learning_rate, c.min_lr, c.beta1, c.grad_clip) == (1.0, 0.0, 0.0, 2.0)
    assert all(type(v) is float for v in (c.learning_rate, c.min_lr, c.beta1, c.grad_clip))
    # the checker never takes a bool for a number (True is an int to Python); ints for floats are
    # converted by __post_init__ before it, so it need not (and does not) convert them itself
    with pytest.raises(ValueError, match=r"^x must be > 0 \(float\), got 3$"):
        check_field("x", 3, float, lambda v: v > 0, "> 0")
    with pytest.raises(ValueError, match=r"^x must be > 0 \(float\), got True$"):
        check_field("x", True, float, lambda v: v > 0, "> 0")


def test_replace_gives_a_new_validated_config():
    c = tiny()
    d = c.replace(max_iters=9, learning_rate=2)
    assert (d.max_iters, d.learning_rate) == (9, 2.0) and c.max_iters == 4       # the original is unchanged
    assert d.replace() == d and d.replace() is not d
    with pytest.raises(ValueError, match=r"^eval_interval must be >= 1 \(int\), got 0$"):
        c.replace(eval_interval=0)


# ------------------------------------------------------------------------------------ data


def test_data_arguments_must_come_together():
    with pytest.raises(ValueError, match=r"^give both train_data and val_data, or neither \(to read config.data_dir\)$"):
        Trainer(tiny(), train_data=IDS, tokenizer=TOK)
    with pytest.raises(ValueError, match=r"^give both train_data and val_data, or neither"):
        Trainer(tiny(), val_data=IDS, tokenizer=TOK)
    with pytest.raises(ValueError, match=r"^give a tokenizer or a vocab_size with train_data/val_data$"):
        Trainer(tiny(), train_data=IDS, val_data=IDS)
    t = Trainer(tiny(), train_data=IDS, val_data=IDS, vocab_size=40)               # a vocab_size alone is enough
    assert t.tokenizer is None and t.model_config.vocab_size == 40


@pytest.mark.parametrize("train_data, val_data, message", [
    (IDS.astype(np.float64), IDS, r"^train data must be a 1-D array of token ids, got float64 \(\d+,\)$"),
    (IDS, IDS.reshape(-1, 2), r"^val data must be a 1-D array of token ids, got int64 \(\d+, 2\)$"),
    (IDS, IDS[:8], r"^the val split has 8 tokens, too few for one window of block_size 8 \(\+1 target\); "
                   r"use a smaller block_size$"),
    (IDS[:3], IDS, r"^the train split has 3 tokens, too few"),
    (np.append(IDS, TOK.vocab_size), IDS, rf"^the train split's token id {TOK.vocab_size} is out of range for "
                                          rf"vocab_size {TOK.vocab_size} "
                                          rf"\(expected 0 <= id < {TOK.vocab_size}\)$"),
])
def test_data_that_cannot_be_trained_on_is_refused(train_data, val_data, message):
    with pytest.raises(ValueError, match=message):
        Trainer(tiny(), train_data=train_data, val_data=val_data, tokenizer=TOK)


def test_a_negative_token_id_is_refused():
    """The message names the id that is out of range (here -1), not the largest id of the split."""
    V = TOK.vocab_size
    with pytest.raises(ValueError, match=rf"^the val split's token id -1 is out of range for vocab_size {V} "
                                         rf"\(expected 0 <= id < {V}\)$"):
        Trainer(tiny(), train_data=IDS, val_data=np.append(IDS, -1), tokenizer=TOK)
    # several bad ids: the first one in the split is named
    with pytest.raises(ValueError, match=rf"^the train split's token id -7 is out of range for vocab_size {V} "):
        Trainer(tiny(), train_data=np.concatenate([IDS, [-7, V + 3, -1]]), val_data=IDS, tokenizer=TOK)


# ------------------------------------------------------------------------------------ save / resume


def test_resume_needs_every_generator(tmp_path):
    t = trainer()
    t.run(until=1)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, t.model, t.optimizer, step=1, tokenizer=TOK, rng={"train": t.rng["train"]})
    with pytest.raises(CheckpointError, match=rf"^{path}: no saved state for the \['dropout'\] generator\(s\); "
                                              r"cannot resume exactly$"):
        trainer(resume=path)


def test_save_needs_a_path():
    t = trainer(tiny(out_dir=""))
    assert t.ckpt_path is None
    with pytest.raises(ValueError, match=r"^no checkpoint path: config.out_dir is empty$"):
        t.save()


def test_non_finite_weights_are_never_saved(tmp_path):
    t = trainer(tiny(out_dir=str(tmp_path)))
    t.run(until=1)
    good = t.save().read_bytes()
    t.model.transformer.wpe.weight.data[0, 0] = np.inf
    with pytest.raises(TrainingDiverged, match=rf"^non-finite weights after step 0; not saving over "
                                               rf"{tmp_path / 'ckpt.safetensors'}$") as info:
        t.save()
    assert info.value.step == 1
    assert (tmp_path / "ckpt.safetensors").read_bytes() == good
    with pytest.raises(TrainingDiverged):
        t.save(tmp_path / "elsewhere.safetensors")
    assert not (tmp_path / "elsewhere.safetensors").exists()


def test_a_non_finite_loss_stops_the_step(tmp_path):
    t = trainer(tiny(max_iters=3))
    t.run(until=1)
    before = {n: p.data.copy() for n, p in t.model.named_parameters()}
    t.model.transformer.wte.weight.data[:] = np.nan
    with pytest.raises(TrainingDiverged, match=r"^non-finite loss \(nan\) at step 1 \(lr .*\); training stopped$") as info:
        t.train_step()
    assert info.value.step == 1 and t.step == 1                       # no step counted
    for n, p in t.model.named_parameters():                           # and no update applied
        if n != "transformer.wte.weight":
            assert np.array_equal(p.data, before[n]), n


def test_a_non_finite_evaluation_stops_the_run_and_is_logged(tmp_path):
    t = trainer(tiny(out_dir=str(tmp_path)))
    t.model.transformer.wpe.weight.data[:] = np.nan
    with pytest.raises(TrainingDiverged, match=r"^non-finite eval loss \(train nan, val nan\) at step 0; "
                                               r"training stopped$") as info:
        t.run()
    assert info.value.step == 0 and t.step == 0 and t.history == []
    log = read_log(tmp_path / "log.jsonl")
    assert [r["event"] for r in log] == ["start", "diverged"]
    assert log[1]["step"] == 0 and log[1]["message"] == str(info.value)
    assert not (tmp_path / "ckpt.safetensors").exists()


# ------------------------------------------------------------------------------------ loop


def test_log_interval_logs_every_nth_step(tmp_path):
    t = trainer(tiny(out_dir=str(tmp_path), max_iters=5, log_interval=2, eval_interval=10))
    t.run()
    log = read_log(tmp_path / "log.jsonl")
    assert [r["step"] for r in log if r["event"] == "train"] == [0, 2, 4]
    assert [r["step"] for r in log if r["event"] == "eval"] == [0, 5]          # start and end
    assert t.step == 5


def test_train_runs_to_max_iters():
    summary = train(tiny(max_iters=3, eval_interval=2), train_data=IDS[:500], val_data=IDS[500:], tokenizer=TOK)
    assert summary["step"] == 3
    assert summary["last_eval"]["step"] == 3 and summary["best_val_loss"] <= summary["last_eval"]["val_loss"] + 1e-12
    assert summary["tokens_per_s"] > 0 and summary["train_s"] <= summary["wall_s"]
    again = train(tiny(max_iters=3, eval_interval=2), train_data=IDS[:500], val_data=IDS[500:], tokenizer=TOK)
    assert again["last_eval"] == summary["last_eval"]                         # seeded: the same run


# ------------------------------------------------------------------------------------ config files


def parse(*argv) -> argparse.Namespace:
    return train_mod.parse_args(list(argv))


def test_config_file_errors(tmp_path):
    missing = tmp_path / "none.json"
    with pytest.raises(ValueError, match=rf"^config file not found: {missing}$"):
        read_config_file(missing)
    broken = tmp_path / "broken.json"
    broken.write_text('{"n_layer": 2,}')
    with pytest.raises(ValueError, match=rf"^config file {broken} is not valid JSON: Expecting property name"):
        read_config_file(broken)
    with pytest.raises(ValueError, match="is not valid JSON"):
        resolve_config(parse("--config", broken))
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"n_layer": 2, "learning_rate": 1}))
    assert read_config_file(good) == {"n_layer": 2, "learning_rate": 1}


def test_config_file_errors_through_the_cli(tmp_path, capsys):
    rc = main(["train", "--config", str(tmp_path / "none.json"), "--out_dir", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"error: config file not found: {tmp_path / 'none.json'}\n"
    assert not (tmp_path / "out").exists()
