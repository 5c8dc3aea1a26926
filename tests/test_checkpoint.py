"""Checkpoints: exact round trip and resume, refusal of anything truncated, corrupt or mismatched,
atomic writes, and the way on to PyTorch (the tensors load into the twin and give the same logits)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from oracle.core import tolerance as tol
from oracle.bridge import twins
from oracle.core import rel_error
from reference.programs import atomic
from reference.programs.checkpoint import METADATA_KEY, CheckpointError, build_model, check_compatible, load_checkpoint, seal
from reference.programs.tokenizers import CharTokenizer
from reference.programs.safetensors_io import load_file, save_file
from reference.programs.training.settings import TrainConfig
from reference.programs.training.trainer import Trainer

from faults import fail_writes

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def tiny_config(**changes) -> TrainConfig:
    base = dict(out_dir="", seed=7, n_layer=2, n_head=2, n_embd=16, block_size=8, batch_size=4, max_iters=8,
                learning_rate=3e-3, min_lr=3e-4, warmup_iters=2, lr_decay_iters=8, eval_interval=2, eval_iters=2,
                dropout=0.1, bias=True)
    return TrainConfig(**{**base, **changes})


def make_trainer(config: TrainConfig, text: str = TEXT, **kw) -> Trainer:
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    n = int(len(ids) * 0.9)
    return Trainer(config, train_data=ids[:n], val_data=ids[n:], tokenizer=tok, **kw)


@pytest.fixture
def saved(tmp_path):
    """A trainer after 3 steps and its checkpoint."""
    trainer = make_trainer(tiny_config(out_dir=str(tmp_path)))
    trainer.run(until=3)
    return trainer, trainer.save()


def state_of(trainer: Trainer) -> dict[str, np.ndarray]:
    """Every parameter and optimizer moment, by name."""
    out = {}
    for name, p in trainer.model.named_parameters():
        out[name] = p.data
        st = trainer.optimizer.state[id(p)]
        out[f"{name}.exp_avg"], out[f"{name}.exp_avg_sq"] = st["exp_avg"], st["exp_avg_sq"]
        out[f"{name}.step"] = np.array(st["step"])
    return out


def assert_identical(a: Trainer, b: Trainer) -> None:
    sa, sb = state_of(a), state_of(b)
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and np.array_equal(sa[name], sb[name]), name
    for role in a.rng:
        assert a.rng[role].bit_generator.state == b.rng[role].bit_generator.state, role
    assert a.step == b.step and a.best_val_loss == b.best_val_loss


# --------------------------------------------------------------------------------- round trip


def test_round_trip(saved):
    trainer, path = saved
    ckpt = load_checkpoint(path)
    assert ckpt.step == 3 and ckpt.config == trainer.model_config
    assert ckpt.tokenizer == trainer.tokenizer.to_dict()
    assert ckpt.train_config == trainer.config.to_dict()
    assert ckpt.best_val_loss == trainer.best_val_loss and ckpt.extra["last_eval_step"] == 2
    model = build_model(ckpt)
    assert model.lm_head.weight is model.transformer.wte.weight          # re-tied, not two copies
    for (n, p), (m, q) in zip(trainer.model.named_parameters(), model.named_parameters()):
        assert n == m and q.data.dtype == np.float32 and np.array_equal(p.data, q.data)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for g, saved_g in zip(trainer.optimizer.param_groups, ckpt.optimizer["param_groups"]):
        assert saved_g["params"] == [names[id(p)] for p in g["params"]]
        assert saved_g["weight_decay"] == g["weight_decay"] and tuple(saved_g["betas"]) == g["betas"]
    for p in trainer.model.parameters():
        st, saved_st = trainer.optimizer.state[id(p)], ckpt.optimizer["state"][names[id(p)]]
        assert saved_st["step"] == st["step"] == 3
        assert np.array_equal(saved_st["exp_avg"], st["exp_avg"]) and np.array_equal(saved_st["exp_avg_sq"], st["exp_avg_sq"])
    for role, g in trainer.rng.items():
        assert ckpt.rng[role] == g.bit_generator.state


def test_tied_weight_stored_once_and_untied_stored_twice(tmp_path, saved):
    _, path = saved
    tensors, metadata = load_file(path)
    assert "transformer.wte.weight" in tensors and "lm_head.weight" not in tensors
    assert "optimizer.transformer.wte.weight.exp_avg" in tensors and "optimizer.lm_head.weight.exp_avg" not in tensors
    header = json.loads(metadata[METADATA_KEY])
    assert header["format"] == "numpy-gpt-checkpoint" and header["version"] == 2
    assert header["step"] == 3 and set(header["rng"]) == {"train", "dropout"}

    untied = make_trainer(tiny_config(out_dir=str(tmp_path / "u"), tie_weights=False))
    untied.run(until=1)
    tensors, _ = load_file(untied.save())
    assert "lm_head.weight" in tensors and "optimizer.lm_head.weight.exp_avg_sq" in tensors
    model = build_model(load_checkpoint(untied.ckpt_path))
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert np.array_equal(model.lm_head.weight.data, untied.model.lm_head.weight.data)


# ------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [3, 4])      # stop between evaluations, and right after one
def test_resume_is_bit_identical(tmp_path, dtype, n):
    """N steps, save, load, N more == 2N uninterrupted: np.array_equal on every parameter, both moments,
    the steps and the generators, with dropout on and evaluations (which draw batches) in between."""
    config = tiny_config(dtype=dtype)
    straight = make_trainer(config)
    straight.run(until=2 * n)

    first = make_trainer(config)
    first.run(until=n)
    path = first.save(tmp_path / "ckpt.safetensors")
    resumed = make_trainer(config, resume=path)
    assert resumed.step == n
    resumed.run(until=2 * n)
    assert_identical(resumed, straight)
    # the evaluation at step n (when there is one) ran before the save and is not repeated
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in straight.history if r["step"] > n]


# ------------------------------------------------------------------------------------ refusal


def rewrite(path, *, tensors=None, header=None, drop=(), add=None):
    """Re-save a checkpoint with edited tensors / header (a valid safetensors file, wrong contents), with
    checksums recomputed (`seal`), as a buggy writer would: what is checked here is the content."""
    t, meta = load_file(path)
    h = json.loads(meta[METADATA_KEY])
    for name in drop:
        del t[name]
    t.update(add or {})
    if tensors:
        tensors(t)
    if header:
        header(h)
    save_file(t, path, metadata=seal(t, json.dumps(h)))


def test_truncated_file_is_refused(saved):
    _, path = saved
    raw = path.read_bytes()
    for cut in (4, 100, len(raw) // 2, len(raw) - 1):
        path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError):
            load_checkpoint(path)


def test_corrupt_files_are_refused(saved):
    _, path = saved
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    bad = bytearray(raw)
    bad[8] = ord("[")                                          # header no longer a JSON object
    path.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="JSON"):
        load_checkpoint(path)
    path.write_bytes(bytes(raw) + b"\0" * 8)                   # trailing bytes
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(path)
    path.write_bytes((n + 10 ** 9).to_bytes(8, "little") + bytes(raw[8:]))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(path)


def test_foreign_or_future_files_are_refused(saved, tmp_path):
    _, path = saved
    other = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, other)
    with pytest.raises(CheckpointError, match="not a numpy-gpt checkpoint"):
        load_checkpoint(other)
    save_file({"w": np.zeros(3, np.float32)}, other, metadata={METADATA_KEY: "{not json"})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(other)
    rewrite(path, header=lambda h: h.update(version=99))
    with pytest.raises(CheckpointError, match="unsupported checkpoint version 99"):
        load_checkpoint(path)


@pytest.mark.parametrize("edit, message", [
    (dict(drop=["transformer.h.1.mlp.c_fc.weight"]), r"missing model tensors \['transformer.h.1.mlp.c_fc.weight'\]"),
    (dict(add={"surprise": np.zeros(2, np.float32)}), r"unexpected tensors \['surprise'\]"),
    (dict(add={"lm_head.weight": np.zeros((28, 16), np.float32)}), r"unexpected tensors \['lm_head.weight'\]"),
    (dict(tensors=lambda t: t.update({"transformer.wpe.weight": np.zeros((9, 16), np.float32)})),
     r"'transformer.wpe.weight' has shape \(9, 16\), expected \(8, 16\)"),
    (dict(tensors=lambda t: t.update({"transformer.ln_f.weight": t["transformer.ln_f.weight"].astype(np.float64)})),
     r"'transformer.ln_f.weight' has dtype float64, expected float32"),
    (dict(drop=["optimizer.transformer.ln_f.bias.exp_avg_sq"]), r"missing optimizer tensor"),
    (dict(tensors=lambda t: t.update({"optimizer.transformer.ln_f.bias.exp_avg": np.zeros(3, np.float32)})),
     r"'optimizer.transformer.ln_f.bias.exp_avg' has shape \(3,\)"),
    (dict(header=lambda h: h["config"].update(n_embd=32)), r"has shape .* expected"),
    (dict(header=lambda h: h["config"].update(n_head=3)), r"invalid model config.*divisible"),
    (dict(header=lambda h: h["config"].update(flux=1)), r"invalid model config.*unknown GPTConfig fields"),
    (dict(header=lambda h: h["rng"]["train"].update(bit_generator="os.system")), r"unknown bit generator 'os.system'"),
    (dict(header=lambda h: h["tokenizer"].update(chars="abc")), r"tokenizer has 3 symbols but .* vocab_size is 28"),
    (dict(header=lambda h: h.update(step=-1)), r"step must be a non-negative integer"),
])
def test_mismatched_contents_are_refused(saved, edit, message):
    _, path = saved
    rewrite(path, **edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_resuming_into_another_config_or_vocabulary_is_refused(saved):
    trainer, path = saved
    with pytest.raises(CheckpointError, match=r"model config mismatch: n_embd: checkpoint 16, here 32"):
        make_trainer(tiny_config(n_embd=32), resume=path)
    with pytest.raises(CheckpointError, match=r"model config mismatch: dtype: checkpoint 'float32', here 'float64'"):
        make_trainer(tiny_config(dtype="float64"), resume=path)
    other = TEXT.replace("q", "Q")                             # same size vocabulary, one symbol differs
    with pytest.raises(CheckpointError, match=r"vocabulary mismatch: .*only in the checkpoint \['q'\], only here \['Q'\]"):
        make_trainer(tiny_config(), text=other, resume=path)
    shuffled = CharTokenizer("".join(reversed(trainer.tokenizer.chars)))
    with pytest.raises(CheckpointError, match="the same symbols in another order"):
        check_compatible(load_checkpoint(path), tokenizer=shuffled)
    check_compatible(load_checkpoint(path), trainer.model_config, trainer.tokenizer)   # itself: fine


def test_loading_never_unpickles(saved, monkeypatch):
    import pickle
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads called"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load called"))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load called"))
    build_model(load_checkpoint(saved[1]))


# ------------------------------------------------------------------------------------ atomic


class Boom(OSError):
    pass


def test_failed_save_leaves_the_previous_checkpoint_intact(saved, monkeypatch):
    trainer, path = saved
    trainer.run(until=5)                                        # new state to save (the eval at 4 may save)
    before, step_before = path.read_bytes(), load_checkpoint(path).step
    assert step_before < 5

    def raises(message):
        def fail(*args):
            raise Boom(message)
        return fail

    faults = {"write": lambda m: fail_writes(m, Boom("disk died mid-write")),   # the process "dies" mid-data
              "fsync": lambda m: m.setattr(atomic.os, "fsync", raises("fsync failed")),
              "rename": lambda m: m.setattr(atomic.os, "replace", raises("rename failed"))}
    for where, install in faults.items():
        with monkeypatch.context() as m:
            install(m)
            with pytest.raises(Boom):
                trainer.save()
        assert path.read_bytes() == before, where
        assert sorted(p.name for p in path.parent.iterdir()) == [path.name, "log.jsonl"], f"temp file left: {where}"
        assert load_checkpoint(path).step == step_before
    trainer.save()
    assert load_checkpoint(path).step == 5


# ------------------------------------------------------------------------------- on to PyTorch


def torch_state(path) -> dict[str, torch.Tensor]:
    """The documented recipe: safetensors.torch.load_file, drop the optimizer, re-tie lm_head."""
    from safetensors.torch import load_file as torch_load_file
    tensors = torch_load_file(str(path))
    state = {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("variant", [dict(), dict(tie_weights=False, pos="rope", n_kv_head=1, norm="rmsnorm", mlp="swiglu"),
                                     dict(pos="alibi", bias=False), dict(pos="sinusoidal", n_kv_head=2)])
def test_checkpoint_loads_into_the_torch_twin_with_the_same_logits(tmp_path, dtype, variant):
    trainer = make_trainer(tiny_config(out_dir=str(tmp_path), dtype=dtype, n_head=4, **variant))
    trainer.run(until=3)
    path = trainer.save()
    ckpt = load_checkpoint(path)
    ours = build_model(ckpt)

    twin = twins.GPT(ckpt.config).to(torch.float64 if dtype == "float64" else torch.float32)
    state = torch_state(path)
    assert all(v.dtype == twin.state_dict()[k].dtype for k, v in state.items())
    twin.load_state_dict(state, strict=True)
    if ckpt.config.tie_weights:
        assert twin.lm_head.weight is twin.transformer.wte.weight
    idx = np.random.default_rng(1).integers(0, ckpt.config.vocab_size, (3, 8))
    logits, _ = ours.forward(idx)
    with torch.no_grad():
        theirs = twin(torch.from_numpy(idx)).numpy()
    if dtype == "float64":
        assert rel_error(logits, theirs)[0] <= 1e-12
    else:                                                       # oracle/core/tolerance.py's float32 policy
        truth_twin = twins.GPT(ckpt.config).double()
        truth_twin.load_state_dict({k: v.double() for k, v in state.items()})
        with torch.no_grad():
            truth = truth_twin(torch.from_numpy(idx)).numpy()
        bound = max(tol.FLOAT32_FACTOR * rel_error(theirs, truth)[0], tol.FLOAT32_FLOOR)
        assert logits.dtype == np.float32 and rel_error(logits, truth)[0] <= bound
    assert not np.array_equal(ours.transformer.wte.weight.data, make_trainer(  # trained, not the init
        tiny_config(dtype=dtype, n_head=4, **variant)).model.transformer.wte.weight.data)
