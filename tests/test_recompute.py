"""Activation checkpointing (GPT(config, recompute=True), train --recompute; docs/checkpointing.md).

Recompute runs the same operations in the same order as the plain run, on the same block inputs, with
the same dropout masks, so the proof is equality, not a tolerance: the loss and every gradient bit for
bit, on both paths, for every model variant, with dropout. Planted bugs (fresh masks in the recomputed
forward, a generator shared instead of copied, no masks at all, a block that changes its kept input in
place) must each break that equality, so the comparison below is shown able to fail.
"""

from __future__ import annotations

import importlib.util
import types

import numpy as np
import pytest

import reference.model as model_mod
from reference import GPT, GPTConfig
from reference.fast import use_kernels
from reference.fast import model as fast_model
from reference.layers import DropoutMasks
from reference.model import BlockCheckpoint, KVCache

VARIANTS = {
    "learned": dict(pos="learned", dropout=0.2),
    "rope-gqa-swiglu-rmsnorm": dict(pos="rope", n_kv_head=2, mlp="swiglu", norm="rmsnorm", dropout=0.1),
    "alibi-mqa-untied": dict(pos="alibi", n_kv_head=1, bias=False, tie_weights=False, gelu_approximate="tanh",
                             dropout=0.3),
    "sinusoidal-no-dropout": dict(pos="sinusoidal", dropout=0.0),
}


def config_of(variant: str, dtype: str = "float32") -> GPTConfig:
    return GPTConfig(vocab_size=13, block_size=12, n_layer=3, n_head=4, n_embd=16, dtype=dtype, **VARIANTS[variant])


def batch(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 13, (2, 12)), rng.integers(0, 13, (2, 12))


def training_pass(config: GPTConfig, kernels: str, recompute: bool, masks=None) -> tuple[float, dict]:
    """One forward, loss and backward from seed-7 weights: (loss, {name: gradient})."""
    model = use_kernels(GPT(config, seed=7, recompute=recompute), kernels)
    idx, targets = batch()
    masks = DropoutMasks(np.random.default_rng(11)) if masks is None else masks
    loss = model.loss_and_backward(idx, targets, masks)
    return loss, {name: p.grad.copy() for name, p in model.named_parameters()}


def differences(a: tuple[float, dict], b: tuple[float, dict]) -> list[str]:
    """What differs, bit for bit, between two training passes: 'loss' and the names of unequal gradients."""
    out = [] if a[0] == b[0] else ["loss"]
    return out + [name for name in a[1] if not np.array_equal(a[1][name], b[1][name])]


# ------------------------------------------------------------------------------------ the proof


@pytest.mark.parametrize("kernels", ["textbook", "fast"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_recompute_gives_the_same_loss_and_gradients_bit_for_bit(variant, kernels):
    config = config_of(variant)
    plain, recomputed = training_pass(config, kernels, False), training_pass(config, kernels, True)
    assert differences(plain, recomputed) == []
    assert all(np.any(g != 0) for g in plain[1].values())             # every parameter got a gradient


@pytest.mark.parametrize("kernels", ["textbook", "fast"])
def test_float64_too(kernels):
    config = config_of("rope-gqa-swiglu-rmsnorm", "float64")
    assert differences(training_pass(config, kernels, False), training_pass(config, kernels, True)) == []


@pytest.mark.parametrize("kernels", ["textbook", "fast"])
def test_the_cache_keeps_block_inputs_only(kernels):
    """With recompute the forward's cache holds, per block, a BlockCheckpoint: the block's input (B, T, C) and
    no array of the block's own."""
    model = use_kernels(GPT(config_of("learned"), seed=7, recompute=True), kernels)
    idx, _ = batch()
    _, cache = model.forward(idx, DropoutMasks(np.random.default_rng(11)))
    c_blocks = cache[3]
    assert len(c_blocks) == 3 and all(type(c) is BlockCheckpoint for c in c_blocks)
    assert all(c.x.shape == (2, 12, 16) and c.kept == {} for c in c_blocks)   # a generator copy, no masks kept


def test_any_other_mask_source_is_replayed_from_its_kept_masks():
    """A MaskSource that is not a DropoutMasks (here: each call draws anew, so calling it again would give
    other masks) is called once per mask; the recomputed forward gets the kept masks back."""
    def source_from(seed: int):
        rng, calls = np.random.default_rng(seed), []

        def draw(name, shape, p, dtype):
            calls.append(name)
            return (rng.random(shape) >= p).astype(dtype) / (1 - p)
        return draw, calls
    config = config_of("rope-gqa-swiglu-rmsnorm")
    for kernels in ("textbook", "fast"):
        (plain_src, plain_calls), (rc_src, rc_calls) = source_from(5), source_from(5)
        plain = training_pass(config, kernels, False, plain_src)
        recomputed = training_pass(config, kernels, True, rc_src)
        assert differences(plain, recomputed) == [] and rc_calls == plain_calls


def test_recorded_masks_are_recorded_once_and_equal():
    """DropoutMasks(record=True) (the oracle and the trainer's tests read `.drawn`): the recomputed forward
    does not draw into it again (which would raise "drew twice"), and it holds the plain run's masks."""
    config = config_of("learned")
    plain, recomputed = (DropoutMasks(np.random.default_rng(11), record=True) for _ in range(2))
    assert differences(training_pass(config, "fast", False, plain),
                       training_pass(config, "fast", True, recomputed)) == []
    assert plain.drawn.keys() == recomputed.drawn.keys() and len(plain.drawn) == 1 + 3 * 3
    assert all(np.array_equal(plain.drawn[k], recomputed.drawn[k]) for k in plain.drawn)


# ------------------------------------------------------------------------------------ planted bugs


def fresh_masks(monkeypatch):
    """The recomputed forward draws from the live source: new uniforms, other masks."""
    monkeypatch.setattr(BlockCheckpoint, "replay", lambda self: self.source)


def shared_generator(monkeypatch):
    """The generator is kept, not copied: by the backward it has moved on past every block's draws."""
    monkeypatch.setattr(model_mod, "copy", types.SimpleNamespace(deepcopy=lambda obj: obj))


def no_masks(monkeypatch):
    """The recomputed forward runs without dropout."""
    monkeypatch.setattr(BlockCheckpoint, "replay", lambda self: None)


def input_changed_in_place(monkeypatch):
    """A block whose forward adds its residual into its input in place: the kept input is not the input."""
    def forward(self, x, masks=None, kv_cache=None):
        h, c1 = self.ln_1.forward(x)
        a, c2 = self.attn.forward(h, masks, kv_cache)
        x += a                                                 # the bug: x is the previous block's output
        h, c3 = self.ln_2.forward(x)
        m, c4 = self.mlp.forward(h, masks)
        return x + m, (c1, c2, c3, c4)
    monkeypatch.setattr(fast_model.Block, "forward", forward)


@pytest.mark.parametrize("plant", [fresh_masks, shared_generator, no_masks, input_changed_in_place])
def test_planted_bugs_are_caught(plant, monkeypatch):
    config = config_of("learned")
    plain = training_pass(config, "fast", False)
    plant(monkeypatch)
    found = differences(plain, training_pass(config, "fast", True))
    assert found, f"{plant.__name__} was not caught"
    assert any(name.startswith("transformer.h.") for name in found)


# ------------------------------------------------------------------------------------ inference


@pytest.mark.parametrize("kernels", ["textbook", "fast"])
def test_kv_cache_and_attention_maps_run_as_without_recompute(kernels):
    """A recomputed forward would append its keys to a KV cache twice, and attention maps read every
    block's cache: with either, the forward keeps every block's cache, as a model without recompute."""
    config = config_of("rope-gqa-swiglu-rmsnorm")
    plain = use_kernels(GPT(config, seed=7), kernels)
    rc = use_kernels(GPT(config, seed=7, recompute=True), kernels)
    idx, targets = batch()
    kv_plain, kv_rc = KVCache(config, 2), KVCache(config, 2)
    for part in (idx[:, :5], idx[:, 5:6], idx[:, 6:]):
        a, b = plain.forward(part, kv_cache=kv_plain)[0], rc.forward(part, kv_cache=kv_rc)[0]
        assert np.array_equal(a, b)
    assert kv_rc.length == 12
    assert all(np.array_equal(p.k, r.k) for p, r in zip(kv_plain.layers, kv_rc.layers))
    logits_p, _, maps_p = plain.forward(idx, return_attentions=True)
    logits_r, cache_r, maps_r = rc.forward(idx, return_attentions=True)
    assert np.array_equal(logits_p, logits_r) and all(np.array_equal(p, r) for p, r in zip(maps_p, maps_r))
    assert not any(isinstance(c, BlockCheckpoint) for c in cache_r[3])     # full caches: a backward still works
    rc.backward(np.ones_like(logits_r), cache_r)


def test_recompute_is_off_by_default_and_settable():
    config = config_of("learned")
    model = GPT(config)
    assert model.recompute is False
    model.recompute = True
    assert differences(training_pass(config, "textbook", False), training_pass(config, "textbook", True)) == []


# ------------------------------------------------------------------------------------ the fast loss


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fast_cross_entropy_is_the_textbook_bit_for_bit(dtype):
    """reference/fast/loss.py computes each row with the textbook's operations in place: the same loss and
    gradient bit for bit, ignored targets included (it keeps one (N, V) array where the textbook keeps three)."""
    from reference.fast.loss import CrossEntropyLoss as Fast
    from reference.loss import CrossEntropyLoss as Textbook
    rng = np.random.default_rng(0)
    for n, v in ((7, 13), (300, 3001)):
        z = (rng.standard_normal((n, v)) * 4).astype(dtype)
        y = rng.integers(0, v, n)
        y[::3] = -100
        (lt, ct), (lf, cf) = Textbook().forward(z, y), Fast().forward(z, y)
        assert lt == lf and np.array_equal(Textbook().backward(0.5, ct), Fast().backward(0.5, cf))
    with pytest.raises(IndexError, match="target 13 is out of range for 13 classes"):
        Fast().forward(np.zeros((2, 13), dtype), np.array([0, 13]))


# ------------------------------------------------------------------------------------ train --recompute


def test_train_flag_memory_estimate():
    from reference.programs.training.memory import estimate_memory
    from reference.programs.training.settings import TrainConfig
    plain = TrainConfig(n_layer=12, n_embd=768, n_head=12, block_size=1024, batch_size=4)
    rc = plain.replace(recompute=True)
    a, b = estimate_memory(plain, 50257), estimate_memory(rc, 50257)
    assert a["weights"] == b["weights"] and b["activations"] < 0.45 * a["activations"]
    with pytest.raises(ValueError, match="recompute must be a boolean"):
        TrainConfig(recompute="yes")


def test_train_recompute_resumed_is_bit_identical_to_a_plain_run(tmp_path, capsys, monkeypatch):
    """`train --recompute` (dropout 0.1, both halves of a resumed run) ends with the same weights, optimizer
    state and evaluations, bit for bit, as one plain run; and it did recompute (the replays are counted)."""
    from test_train import REPO, TEXT, TINY, cli, load_file, read_log
    spec = importlib.util.spec_from_file_location("data_prepare", REPO / "data" / "prepare.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    data = tmp_path / "data"
    prepare.prepare(TEXT.encode(), data, kind="char")
    replays = []
    original = BlockCheckpoint.replay
    monkeypatch.setattr(BlockCheckpoint, "replay", lambda self: replays.append(1) or original(self))
    common = ("--data_dir", data, "--eval_interval", 4, "--always_save_checkpoint", *TINY)
    assert cli(capsys, "--out_dir", tmp_path / "a", "--max_iters", 8, *common)[0] == 0
    assert replays == []
    rc, _, err = cli(capsys, "--out_dir", tmp_path / "b", "--max_iters", 4, "--recompute", *common)
    assert rc == 0 and "recompute=True (flag)" in err, err
    assert len(replays) == 4 * 1                               # 4 steps x 1 layer
    rc, _, err = cli(capsys, "--out_dir", tmp_path / "b", "--resume", "--max_iters", 8, "--no-progress")
    assert rc == 0 and "recompute=True (checkpoint)" in err, err
    assert len(replays) == 8
    a, _ = load_file(tmp_path / "a" / "ckpt.safetensors")
    b, _ = load_file(tmp_path / "b" / "ckpt.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    evals = [[(r["step"], r["val_loss"]) for r in read_log(tmp_path / d / "log.jsonl") if r["event"] == "eval"]
             for d in ("a", "b")]
    assert evals[0] == evals[1]
