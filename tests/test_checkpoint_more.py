"""Checkpoints, the less travelled paths: saving without an optimizer, with a fresh or partial one, or
without a tokenizer; refusal of every malformed header field with the message that names it; refusal to
restore moments into an optimizer grouped differently; and a vocabulary of another kind.

(tests/test_checkpoint.py covers the round trip, resume, truncation, tensor mismatches and atomic writes.)
"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from reference.programs.checkpoint import (BIT_GENERATORS, METADATA_KEY, seal, STATE_LAYOUTS, CheckpointError, build_model,
                                           check_compatible, generator_from_state, load_checkpoint, restore_optimizer,
                                           save_checkpoint, state_from_json)
from reference.model import GPT
from reference.programs.tokenizers import ByteTokenizer, CharTokenizer
from reference.module import Parameter
from reference.optim import AdamW
from reference.programs.safetensors_io import load_file, save_file
from reference.programs.training.settings import TrainConfig
from reference.programs.training.trainer import Trainer, configure_optimizers

TEXT = "the quick brown fox jumps over the lazy dog. " * 40
LN = "transformer.ln_f.weight"          # a parameter every tiny config has


def tiny_config(**changes) -> TrainConfig:
    base = dict(out_dir="", seed=7, n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=4, max_iters=4,
                learning_rate=3e-3, min_lr=3e-4, warmup_iters=1, lr_decay_iters=4, eval_interval=2, eval_iters=1,
                bias=True)
    return TrainConfig(**{**base, **changes})


def make_trainer(config: TrainConfig | None = None) -> Trainer:
    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode(TEXT)
    return Trainer(config or tiny_config(), train_data=ids[:1600], val_data=ids[1600:], tokenizer=tok)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trainer after 2 steps (every parameter has optimizer state) and its checkpoint's bytes."""
    trainer = make_trainer()
    trainer.run(until=2)
    return trainer, trainer.save(tmp_path_factory.mktemp("trained") / "ckpt.safetensors").read_bytes()


@pytest.fixture
def ckpt_path(trained, tmp_path):
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(trained[1])
    return path


def edit_header(path, edit) -> None:
    """Re-save `path` with its JSON header changed by `edit(header)` (tensors untouched)."""
    tensors, meta = load_file(path)
    header = json.loads(meta[METADATA_KEY])
    edit(header)
    save_file(tensors, path, metadata=seal(tensors, json.dumps(header)))   # checksums recomputed


def refused(path, message: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert text.startswith(f"{path}: "), text                   # every refusal names the file
    assert re.search(message, text), text
    return text


# ------------------------------------------------------------------------------------ saving


def test_model_only_checkpoint_without_tokenizer(trained, tmp_path):
    """No optimizer, no tokenizer, a non-finite best loss: loads as such, and cannot restore moments."""
    trainer, _ = trained
    path = tmp_path / "weights.safetensors"
    save_checkpoint(path, trainer.model, None, step=5, best_val_loss=float("inf"))
    tensors, meta = load_file(path)
    assert not any(name.startswith("optimizer.") for name in tensors)
    header = json.loads(meta[METADATA_KEY])
    assert header["optimizer"] is None and header["tokenizer"] is None and header["rng"] == {}
    assert header["best_val_loss"] is None                      # inf is not JSON: stored as null

    ckpt = load_checkpoint(path)
    assert (ckpt.step, ckpt.optimizer, ckpt.tokenizer, ckpt.best_val_loss, ckpt.rng) == (5, None, None, None, {})
    model = build_model(ckpt)
    for (n, p), (m, q) in zip(trainer.model.named_parameters(), model.named_parameters()):
        assert n == m and np.array_equal(p.data, q.data)
    # no vocabulary saved: nothing to compare, so any tokenizer is accepted
    check_compatible(ckpt, trainer.model_config, CharTokenizer("xyz"))
    opt = configure_optimizers(model, trainer.config)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: the checkpoint holds no optimizer state$"):
        restore_optimizer(opt, model, ckpt)


def test_nan_best_val_loss_is_stored_as_null(trained, tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, trained[0].model, step=1, best_val_loss=float("nan"))
    assert load_checkpoint(path).best_val_loss is None
    save_checkpoint(path, trained[0].model, step=1, best_val_loss=1.25)
    assert load_checkpoint(path).best_val_loss == 1.25


def test_tokenizer_given_as_a_dict_is_stored_as_is(trained, tmp_path):
    trainer, _ = trained
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, trainer.model, step=0, tokenizer=trainer.tokenizer.to_dict())
    assert load_checkpoint(path).tokenizer == {"kind": "char", "chars": trainer.tokenizer.chars}


def test_fresh_optimizer_saves_its_groups_and_no_moments(trained, ckpt_path, tmp_path):
    """An optimizer that has not stepped yet has no state: its groups are saved, no moment tensors;
    restoring it empties the state of the optimizer it is restored into."""
    trainer, _ = trained
    model = build_model(load_checkpoint(ckpt_path))
    fresh = configure_optimizers(model, trainer.config)
    path = tmp_path / "fresh.safetensors"
    save_checkpoint(path, model, fresh, step=0)
    tensors, _ = load_file(path)
    assert not any(name.startswith("optimizer.") for name in tensors)
    ckpt = load_checkpoint(path)
    assert ckpt.optimizer["type"] == "AdamW" and ckpt.optimizer["state"] == {}
    assert [len(g["params"]) for g in ckpt.optimizer["param_groups"]] == [len(g["params"]) for g in fresh.param_groups]

    busy = configure_optimizers(model, trainer.config)
    busy.state = {id(p): {"step": 9, "exp_avg": p.data * 0, "exp_avg_sq": p.data * 0} for p in model.parameters()}
    restore_optimizer(busy, model, ckpt)
    assert busy.state == {}


def test_partial_optimizer_state_is_restored_per_parameter(trained, ckpt_path, tmp_path):
    """Parameters without state in the saved optimizer stay without state; the others get theirs back."""
    trainer, _ = trained
    model = build_model(load_checkpoint(ckpt_path))
    opt = configure_optimizers(model, trainer.config)
    x, y = np.zeros((2, 8), np.int64), np.ones((2, 8), np.int64)
    model.zero_grad()
    model.loss_and_backward(x, y, None)
    opt.step()
    names = {id(p): n for n, p in model.named_parameters()}
    dropped = next(p for p in model.parameters() if names[id(p)] == LN)
    del opt.state[id(dropped)]
    path = tmp_path / "partial.safetensors"
    save_checkpoint(path, model, opt, step=1)
    tensors, _ = load_file(path)
    assert f"optimizer.{LN}.exp_avg" not in tensors and "optimizer.transformer.wte.weight.exp_avg" in tensors

    ckpt = load_checkpoint(path)
    assert LN not in ckpt.optimizer["state"] and len(ckpt.optimizer["state"]) == len(names) - 1
    other = configure_optimizers(model, trainer.config)
    restore_optimizer(other, model, ckpt)
    assert set(other.state) == set(opt.state) and id(dropped) not in other.state
    for pid, st in opt.state.items():
        assert other.state[pid]["step"] == st["step"] == 1
        assert np.array_equal(other.state[pid]["exp_avg"], st["exp_avg"])
        assert other.state[pid]["exp_avg"] is not st["exp_avg"]       # copies, not the loaded arrays


def test_saving_an_optimizer_over_foreign_parameters_is_refused(trained, tmp_path):
    model = trained[0].model
    stranger = Parameter(np.zeros(3, np.float32))
    opt = AdamW(list(model.parameters()) + [stranger], lr=1e-3)
    path = tmp_path / "c.safetensors"
    with pytest.raises(ValueError, match=r"^the optimizer holds 1 parameter\(s\) that are not the model's$"):
        save_checkpoint(path, model, opt)
    assert not path.exists()


def test_generator_states_round_trip_through_the_file(trained, tmp_path):
    """A saved generator continues its stream after loading, whatever its (listed) bit generator."""
    gens = {"train": np.random.default_rng(3), "eval": np.random.Generator(np.random.PCG64DXSM(4))}
    for g in gens.values():
        g.random(5)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, trained[0].model, step=0, rng=gens)
    ckpt = load_checkpoint(path)
    assert set(ckpt.rng) == {"train", "eval"}
    for role, g in gens.items():
        again = generator_from_state(ckpt.rng[role])
        assert type(again.bit_generator) is type(g.bit_generator)
        assert np.array_equal(again.random(4), g.random(4)), role
    # array-valued states (Philox) load from their JSON (list) form too
    philox = np.random.Generator(np.random.Philox(3))
    state = json.loads(json.dumps(philox.bit_generator.state, default=lambda a: a.tolist()))
    assert np.array_equal(generator_from_state(state).random(4), philox.random(4))
    with pytest.raises(ValueError, match=r"^unknown bit generator 'PCG65'; expected one of \['MT19937', 'PCG64', "):
        generator_from_state({"bit_generator": "PCG65"})
    for not_a_state in (42, "PCG64"):
        with pytest.raises(ValueError, match=r"^a bit generator state must be an object \{'bit_generator': name, "
                                             rf"\.\.\.\}}, got {not_a_state!r}$"):
            generator_from_state(not_a_state)


@pytest.mark.parametrize("name", sorted(BIT_GENERATORS))
def test_every_allowed_bit_generator_round_trips_through_the_file(trained, tmp_path, name):
    """Philox, SFC64 and MT19937 hold arrays in their state: saved as lists of ints, read back as the
    arrays numpy gives (same dtype), and the generator goes on with the same stream."""
    g = np.random.Generator(BIT_GENERATORS[name](11))
    g.random(7)                                                 # mid-stream (Philox: mid-buffer)
    g.integers(0, 10, 3, dtype=np.uint32)                       # and a buffered 32-bit half where there is one
    before = g.bit_generator.state
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, trained[0].model, step=0, rng={"train": g})
    saved = load_checkpoint(path).rng["train"]

    def same(a, b):
        if isinstance(a, dict):
            return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, np.ndarray):
            return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
        return type(a) is type(b) and a == b
    assert same(saved, before)
    again = generator_from_state(saved)
    assert type(again.bit_generator) is BIT_GENERATORS[name]
    assert np.array_equal(again.random(5), g.random(5))
    assert np.array_equal(again.integers(0, 99, 5), g.integers(0, 99, 5))


@pytest.mark.parametrize("name", sorted(BIT_GENERATORS))
def test_state_layouts_describe_numpys_states(name):
    """STATE_LAYOUTS, against which a state from a file is checked, is what numpy's states look like."""
    def layout_of(value):
        if isinstance(value, dict):
            return {k: layout_of(v) for k, v in value.items()}
        if isinstance(value, np.ndarray):
            return (len(value), value.dtype)
        return int
    def simplify(layout):
        if isinstance(layout, dict):
            return {k: simplify(v) for k, v in layout.items()}
        return (layout[0], np.dtype(layout[1])) if isinstance(layout, tuple) else int
    state = BIT_GENERATORS[name](5).state
    assert state.pop("bit_generator") == name
    assert layout_of(state) == simplify(STATE_LAYOUTS[name])
    assert set(STATE_LAYOUTS) == set(BIT_GENERATORS)


def _mt(key=None, pos=0):
    return {"bit_generator": "MT19937", "state": {"key": [1] * 624 if key is None else key, "pos": pos}}


def _philox(**changes):
    state = {"bit_generator": "Philox", "state": {"counter": [0] * 4, "key": [1, 2]}, "buffer": [0] * 4,
             "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
    return {**state, **changes}


@pytest.mark.parametrize("state, message", [
    # numpy itself would take these two and then read past its buffers
    (_mt(pos=9999), r"^MT19937 state\['state'\]\['pos'\] must be an integer in \[0, 625\), got 9999$"),
    (_philox(buffer_pos=99), r"^Philox state\['buffer_pos'\] must be an integer in \[0, 5\), got 99$"),
    (_mt(key=[1, 2, 3]), r"^MT19937 state\['state'\]\['key'\] must be a list of 624 integers in \[0, 2\*\*32\), "
                         r"got \[1, 2, 3\]$"),
    (_mt(key=[-1] * 624), r"must be a list of 624 integers in \[0, 2\*\*32\), got \[-1, -1, "),
    (_mt(key=[2**32] * 624), r"must be a list of 624 integers in \[0, 2\*\*32\)"),
    (_mt(key=[1.0] * 624), r"must be a list of 624 integers"),
    (_mt(key=np.ones(624, np.float64)), r"must be a list of 624 integers"),
    (_philox(state={"counter": [0] * 4}),
     r"^Philox state\['state'\] must be an object with keys \['counter', 'key'\], got \['counter'\]$"),
    (_philox(state=[0] * 6),
     r"^Philox state\['state'\] must be an object with keys \['counter', 'key'\], got \[0, "),
    (_philox(has_uint32=True), r"^Philox state\['has_uint32'\] must be an integer in \[0, 2\), got True$"),
    ({"bit_generator": "SFC64", "state": {"state": [1, 2, 3, 4]}},
     r"^SFC64 state must be an object with keys \['has_uint32', 'state', 'uinteger'\], got \['state'\]$"),
    ({"bit_generator": ["PCG64"]}, r"^unknown bit generator \['PCG64'\]; expected one of \['MT19937', "),
    ({"bit_generator": "PCG64", "state": {"state": 2**128, "inc": 1}, "has_uint32": 0, "uinteger": 0},
     r"^PCG64 state\['state'\]\['state'\] must be an integer in \[0, \d+\), got \d+$"),
])
def test_malformed_generator_states_are_refused(state, message):
    with pytest.raises(ValueError, match=message):
        generator_from_state(state)
    with pytest.raises(ValueError, match=message):
        state_from_json(json.loads(json.dumps(state, default=lambda a: a.tolist())))


def test_a_malformed_generator_state_in_a_file_is_refused(ckpt_path):
    edit_header(ckpt_path, lambda h: h["rng"].update(train=_mt(pos=700)))
    refused(ckpt_path, r"invalid generator state for 'train': MT19937 state\['state'\]\['pos'\] must be an integer "
                       r"in \[0, 625\), got 700$")


def test_saving_a_generator_a_checkpoint_cannot_hold_is_refused(trained, tmp_path):
    class MyPCG(np.random.PCG64):
        pass
    path = tmp_path / "c.safetensors"
    with pytest.raises(ValueError, match=r"^rng\['train'\] uses the bit generator MyPCG; a checkpoint holds only "
                                         r"\['MT19937', 'PCG64', 'PCG64DXSM', 'Philox', 'SFC64'\]$"):
        save_checkpoint(path, trained[0].model, rng={"train": np.random.Generator(MyPCG(1))})
    with pytest.raises(TypeError, match=r"^rng\['eval'\] must be a numpy Generator, got RandomState$"):
        save_checkpoint(path, trained[0].model, rng={"eval": np.random.RandomState(1)})
    with pytest.raises(TypeError, match=r"^extra must be a dict \(or None\), got list$"):
        save_checkpoint(path, trained[0].model, extra=[1])
    with pytest.raises(TypeError, match=r"^train_config must be a dict \(or None\), got str$"):
        save_checkpoint(path, trained[0].model, train_config="cfg.json")
    assert not path.exists()


# ------------------------------------------------------------------------------------ header refusals


def test_header_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, path, metadata={METADATA_KEY: "[1, 2]"})
    refused(path, r"the checkpoint header must be a JSON object, got list$")


def test_header_nested_too_deep_is_refused(tmp_path):
    """json raises RecursionError (not ValueError) on deep nesting: still a refusal naming the file."""
    path = tmp_path / "c.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, path, metadata={METADATA_KEY: "[" * 100_000 + "]" * 100_000})
    refused(path, r"the checkpoint header is not valid JSON: ")


def _param_groups_drop_one(h):
    h["optimizer"]["param_groups"][1]["params"].pop()


def _param_groups_duplicate(h):
    groups = h["optimizer"]["param_groups"]
    groups[1]["params"][-1] = groups[0]["params"][0]


@pytest.mark.parametrize("edit, message", [
    (lambda h: h.update(format="other-format"),
     r"not a numpy-gpt checkpoint: format is 'other-format', expected 'numpy-gpt-checkpoint'$"),
    (lambda h: h.pop("format"), r"not a numpy-gpt checkpoint: format is None"),
    (lambda h: h.pop("version"), r"unsupported checkpoint version None; this code reads versions 1, 2$"),
    (lambda h: h.pop("config"), r"the checkpoint header has no 'config'$"),
    (lambda h: h.pop("step"), r"the checkpoint header has no 'step'$"),
    (lambda h: h.update(step=True), r"step must be a non-negative integer, got True$"),
    (lambda h: h.update(step=2.0), r"step must be a non-negative integer, got 2.0$"),
    (lambda h: h.update(config=7), r"invalid model config in the checkpoint"),
    (lambda h: h.update(optimizer=[]), r"the optimizer header must be an object with 'param_groups' \(list\) "
                                       r"and 'steps' \(object\)$"),
    (lambda h: h["optimizer"].update(steps=[]), r"the optimizer header must be an object"),
    (lambda h: h["optimizer"].pop("param_groups"), r"the optimizer header must be an object"),
    (lambda h: h["optimizer"]["steps"].update(ghost=1),
     r"optimizer state for 'ghost', which is not a parameter of this model$"),
    (lambda h: h["optimizer"]["steps"].update({LN: -1}),
     rf"optimizer step for '{LN}' must be a non-negative integer, got -1$"),
    (lambda h: h["optimizer"]["steps"].update({LN: True}),
     rf"optimizer step for '{LN}' must be a non-negative integer, got True$"),
    (_param_groups_drop_one, r"the optimizer's param groups name \[.*\], expected each of \[.*\] once$"),
    (_param_groups_duplicate, r"the optimizer's param groups name .* expected each of .* once$"),
    (lambda h: h.update(rng=["PCG64"]), r"'rng' must be an object mapping a role to a bit generator state$"),
    (lambda h: h["rng"].update(eval={"bit_generator": "PCG64", "state": "?"}),
     r"invalid generator state for 'eval': "),
    (lambda h: h.update(best_val_loss="low"), r"best_val_loss must be a finite number or null, got 'low'$"),
    # Python's json reads NaN and Infinity, and true is an int to Python: none is a loss
    (lambda h: h.update(best_val_loss=float("nan")), r"best_val_loss must be a finite number or null, got nan$"),
    (lambda h: h.update(best_val_loss=float("inf")), r"best_val_loss must be a finite number or null, got inf$"),
    (lambda h: h.update(best_val_loss=True), r"best_val_loss must be a finite number or null, got True$"),
    (lambda h: h.update(best_val_loss=10**400), r"best_val_loss must be a finite number or null, got 1000+\.\.\.$"),
    (lambda h: h.update(extra=[1]), r"extra must be an object, got \[1\]$"),
    (lambda h: h.update(extra="last_eval_step"), r"extra must be an object, got 'last_eval_step'$"),
    (lambda h: h.update(train_config=[1]),
     r"train_config must be an object \(the training config's fields\) or null, got \[1\]$"),
    (lambda h: h.update(train_config=0), r"train_config must be an object .* or null, got 0$"),
    (lambda h: h.update(rng=[]), r"'rng' must be an object mapping a role to a bit generator state$"),
    # the optimizer section, all of it: restore_optimizer relies on every group's "params"
    (lambda h: h["optimizer"]["param_groups"].__setitem__(0, 5),
     r"optimizer param group 0 must be an object with keys \['lr', 'betas', 'eps', 'weight_decay', 'params'\], "
     r"got 5$"),
    (lambda h: h["optimizer"]["param_groups"][1].pop("params"),
     r"optimizer param group 1 has no \['params'\]; "
     r"a group holds \['lr', 'betas', 'eps', 'weight_decay', 'params'\]$"),
    (lambda h: h["optimizer"]["param_groups"][0]["params"].__setitem__(0, 3),
     r"optimizer param group 0: 'params' holds 3, not a parameter name \(a string\)$"),
    (lambda h: h["optimizer"]["param_groups"][1]["params"].append(None),
     r"optimizer param group 1: 'params' holds None, not a parameter name \(a string\)$"),
    (lambda h: h["optimizer"]["param_groups"][0].update(params="transformer.wte.weight"),
     r"optimizer param group 0: 'params' must be a list of parameter names, got 'transformer.wte.weight'$"),
    (lambda h: h["optimizer"]["param_groups"][0].update(lr="fast"),
     r"optimizer param group 0: 'lr' must be a finite number, got 'fast'$"),
    (lambda h: h["optimizer"]["param_groups"][1].update(eps=float("nan")),
     r"optimizer param group 1: 'eps' must be a finite number, got nan$"),
    (lambda h: h["optimizer"]["param_groups"][0].update(weight_decay=True),
     r"optimizer param group 0: 'weight_decay' must be a finite number, got True$"),
    (lambda h: h["optimizer"]["param_groups"][0].update(betas=[0.9]),
     r"optimizer param group 0: 'betas' must be a list of two finite numbers, got \[0.9\]$"),
    (lambda h: h["optimizer"]["param_groups"][0].update(betas="ab"),
     r"optimizer param group 0: 'betas' must be a list of two finite numbers, got 'ab'$"),
    (lambda h: h["optimizer"].pop("type"), r"the optimizer's 'type' must be a string \(its class name\), got None$"),
    # model config fields GPTConfig refuses: each a CheckpointError naming the file and the field
    (lambda h: h["config"].update(mlp_hidden="8"),
     r"invalid model config in the checkpoint: mlp_hidden must be None or a positive integer, got '8'$"),
    (lambda h: h["config"].update(mlp_hidden=-1),
     r"invalid model config in the checkpoint: mlp_hidden must be None or a positive integer, got -1$"),
    (lambda h: h["config"].update(rope_base="x"),
     r"invalid model config in the checkpoint: rope_base must be a positive finite number, got 'x'$"),
    (lambda h: h["config"].update(rope_base=10**400),
     r"invalid model config in the checkpoint: rope_base must be a positive finite number, got 1000+$"),
    (lambda h: h["config"].update(n_kv_head=1.0),
     r"invalid model config in the checkpoint: n_kv_head must be None or a positive integer, got 1.0$"),
    (lambda h: h["config"].update(dropout="0"),
     r"invalid model config in the checkpoint: dropout must be a number in \[0, 1\), got '0' \(str\)$"),
    (lambda h: h["config"].update(norm_eps=None),
     r"invalid model config in the checkpoint: norm_eps must be positive \(a finite number > 0\), got None$"),
    (lambda h: h["config"].update(bias="true"),
     r"invalid model config in the checkpoint: bias must be a boolean \(true or false\), got 'true'$"),
    (lambda h: h["config"].update(tie_weights=0),
     r"invalid model config in the checkpoint: tie_weights must be a boolean \(true or false\), got 0$"),
    (lambda h: h.update(config=[["n_layer", 1]]),
     r"invalid model config in the checkpoint: a GPTConfig is built from a dict \(JSON object\) of its fields, "
     r"got list$"),
    (lambda h: h.update(tokenizer="abc"), r"tokenizer must be an object, got 'abc'$"),
    (lambda h: h.update(tokenizer={"kind": "wordpiece"}),
     r"invalid tokenizer: unknown tokenizer kind 'wordpiece'; expected one of 'bpe', 'byte', 'char'$"),
    (lambda h: h.update(tokenizer={"kind": "bpe"}),
     r"invalid tokenizer: a tokenizer dict of kind 'bpe' needs its 'tokenizer_json'"),
    (lambda h: h.update(tokenizer={"kind": "char"}), r"invalid tokenizer: 'chars'$"),
    (lambda h: h.update(tokenizer={"kind": "char", "chars": "aa"}),
     r"invalid tokenizer: the characters of a CharTokenizer must be distinct$"),
    (lambda h: h.update(tokenizer={"kind": "byte"}), r"the tokenizer has 256 symbols but the model's vocab_size is 28$"),
], ids=lambda v: "" if callable(v) else v[:40])
def test_malformed_header_fields_are_refused(ckpt_path, edit, message):
    edit_header(ckpt_path, edit)
    refused(ckpt_path, message)


def test_an_untouched_copy_still_loads(ckpt_path, trained):
    """The control for the refusals above: the same file, re-saved without edits, loads."""
    edit_header(ckpt_path, lambda h: None)
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt.step == 2 and ckpt.config == trained[0].model_config
    assert ckpt.extra == {"last_eval_step": 2} and ckpt.train_config == trained[0].config.to_dict()


def test_null_extra_train_config_and_rng_load_as_empty(ckpt_path):
    edit_header(ckpt_path, lambda h: h.update(extra=None, train_config=None, rng=None))
    ckpt = load_checkpoint(ckpt_path)
    assert (ckpt.extra, ckpt.train_config, ckpt.rng) == ({}, None, {})


# ------------------------------------------------------------------------------------ sizes from the header


@pytest.mark.parametrize("changes, message", [
    (dict(n_embd=2**20, vocab_size=2**20, n_head=2),
     r"tensor 'transformer.wte.weight' has shape \(\d+, 16\), expected \(1048576, 1048576\) for this config$"),
    (dict(mlp_hidden=2**40),
     r"tensor 'transformer.h.0.mlp.c_fc.weight' has shape \(64, 16\), expected \(1099511627776, 16\)"),
    (dict(block_size=2**40), r"tensor 'transformer.wpe.weight' has shape \(8, 16\), expected \(1099511627776, 16\)"),
    (dict(n_layer=10**9), r"the model config in the header \(1000000000 layers\) has \d+ tensors, but the file "
                          r"holds only \d+$"),
])
def test_a_header_claiming_a_huge_model_is_refused_without_building_it(ckpt_path, monkeypatch, changes, message):
    """A small file whose header claims a huge model: refused by comparing the tensors with the sizes the
    config implies, before any array sized by the header is allocated (GPT is never constructed)."""
    edit_header(ckpt_path, lambda h: h["config"].update(changes))
    monkeypatch.setattr(GPT, "__init__", lambda *a, **k: pytest.fail("GPT built while loading a checkpoint"))
    t0 = time.perf_counter()
    refused(ckpt_path, message)
    assert time.perf_counter() - t0 < 1.0


# ------------------------------------------------------------------------------------ restoring


def test_restoring_into_differently_grouped_optimizers_is_refused(ckpt_path, trained):
    trainer, _ = trained
    ckpt = load_checkpoint(ckpt_path)
    model = build_model(ckpt)

    one_group = AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(CheckpointError, match=r": the checkpoint's optimizer has 2 param groups, this one 1$"):
        restore_optimizer(one_group, model, ckpt)
    assert one_group.state == {}                                # refused before touching anything

    names = {id(p): n for n, p in model.named_parameters()}
    good = configure_optimizers(model, trainer.config)
    swapped = AdamW([dict(good.param_groups[1]), dict(good.param_groups[0])], lr=1e-3)
    first = [names[id(p)] for p in swapped.param_groups[0]["params"]]
    with pytest.raises(CheckpointError, match=r": param group 0 holds \[.*'transformer.wte.weight'.*\] in the "
                                              r"checkpoint but \[.*'transformer.ln_f.weight'.*\] here$") as info:
        restore_optimizer(swapped, model, ckpt)
    assert str(first) in str(info.value) and swapped.state == {}

    other_model = build_model(ckpt)                             # same groups, but over another model's parameters
    foreign = configure_optimizers(other_model, trainer.config)
    with pytest.raises(CheckpointError, match=r"in the checkpoint but \[None, None"):
        restore_optimizer(foreign, model, ckpt)


def test_vocabulary_of_another_kind_is_refused(ckpt_path):
    ckpt = load_checkpoint(ckpt_path)
    with pytest.raises(CheckpointError, match=r": vocabulary mismatch: a 'char' tokenizer in the checkpoint, 'byte' "
                                              r"here\. The checkpoint was trained on other data"):
        check_compatible(ckpt, tokenizer=ByteTokenizer())
    check_compatible(ckpt)                                      # nothing to compare with: fine
    check_compatible(ckpt, tokenizer=ckpt.tokenizer)            # a dict is compared as well


def test_missing_file_is_a_file_not_found_error(tmp_path):
    path = tmp_path / "nowhere" / "ckpt.safetensors"
    with pytest.raises(FileNotFoundError, match=rf"^no checkpoint at {re.escape(str(path))}$"):
        load_checkpoint(path)
