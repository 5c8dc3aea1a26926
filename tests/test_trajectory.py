"""A whole training trajectory equals PyTorch's, and training learns.

The reference side is the real training code: `reference.programs.training.trainer.Trainer.train_step` (its AdamW param
groups, warmup-cosine schedule, clipping, dropout masks and batches). The PyTorch side is written here
independently: the twin (`oracle.bridge.twins.GPT`), `torch.optim.AdamW` with nanoGPT's two param groups,
`LambdaLR` with nanoGPT's get_lr written out below, `torch.nn.utils.clip_grad_norm_`, and
`F.cross_entropy`. Both start from the same weights and see the same batches and the same dropout masks
(drawn by the reference with `DropoutMasks(rng, record=True)` and replayed by the twin).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oracle.core import tolerance as tol
from oracle.bridge import twins
from oracle.core import rel_error
from reference.programs.training.settings import TrainConfig
from reference.programs.training.trainer import Trainer

STEPS = 24
VOCAB = 11
TORCH = {"float64": torch.float64, "float32": torch.float32}


def nanogpt_lr(it: int, *, lr: float, min_lr: float, warmup: int, decay: int) -> float:
    """nanoGPT's get_lr, written independently of reference.optim.cosine_lr."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def config(dtype: str) -> TrainConfig:
    # A schedule that goes through warmup, the cosine and the floor within STEPS; a clip threshold that
    # clips most steps but not all; dropout on the embeddings, attention weights and residuals.
    return TrainConfig(out_dir="", seed=3, n_layer=2, n_head=2, n_embd=16, block_size=8, dropout=0.1, bias=True,
                       dtype=dtype, batch_size=4, max_iters=STEPS, learning_rate=1e-2, min_lr=1e-3, warmup_iters=5,
                       lr_decay_iters=20, weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.1)


def reference_run(dtype: str, kernels: str):
    """The reference trajectory on one path: per-step records, batches, masks, the initial and final state."""
    data = learnable_corpus(600, VOCAB)
    trainer = Trainer(config(dtype), train_data=data[:500], val_data=data[500:], vocab_size=VOCAB, kernels=kernels)
    trainer.record = True
    init = {k: v.copy() for k, v in trainer.model.state_dict().items()}
    records, batches, masks = [], [], []
    for _ in range(STEPS):
        records.append(trainer.train_step())
        batches.append(trainer.last_batch)
        masks.append(dict(trainer.last_masks.drawn))
    assert masks[0], "dropout drew no masks: the dropout path went untested"
    return trainer, init, records, batches, masks


def torch_run(cfg: TrainConfig, model_config, init: dict, batches, masks, dtype: torch.dtype):
    """The twin trained with torch's own optimizer, scheduler and clipping on the given batches and masks."""
    twin = twins.GPT(model_config).to(dtype)
    twins.load_reference_state(twin, init, dtype)
    named = list(twin.named_parameters())                   # a tied weight once, as nanoGPT
    groups = [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: nanogpt_lr(
        it, lr=cfg.learning_rate, min_lr=cfg.min_lr, warmup=cfg.warmup_iters, decay=cfg.lr_decay_iters) / cfg.learning_rate)
    losses, lrs, norms = [], [], []
    for (x, y), m in zip(batches, masks):
        lrs.append(opt.param_groups[0]["lr"])
        assert opt.param_groups[1]["lr"] == lrs[-1]
        opt.zero_grad()
        logits = twin(torch.from_numpy(x), masks=m)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1))
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(twin.parameters(), cfg.grad_clip)))
        opt.step()
        sched.step()
        losses.append(loss.item())
    params = {n: p.detach().numpy().copy() for n, p in named}
    moments = {n: {k: opt.state[p][k].numpy().copy() for k in ("exp_avg", "exp_avg_sq")} for n, p in named}
    steps = {n: int(opt.state[p]["step"]) for n, p in named}
    return losses, lrs, norms, params, moments, steps


def reference_final(trainer: Trainer):
    named = dict(trainer.model.named_parameters())
    params = {n: p.data for n, p in named.items()}
    moments = {n: {k: trainer.optimizer.state[id(p)][k] for k in ("exp_avg", "exp_avg_sq")} for n, p in named.items()}
    steps = {n: trainer.optimizer.state[id(p)]["step"] for n, p in named.items()}
    return params, moments, steps


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny tensors: torch's thread pool only adds synchronisation (badly so on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=["fast", "textbook"])
def runs(request, one_torch_thread):
    """Both dtypes on one path (reference/fast/kernels.py): every trajectory test runs on both paths."""
    return {dtype: reference_run(dtype, request.param) for dtype in ("float64", "float32")}


def test_float64_trajectory_matches_torch(runs):
    trainer, init, records, batches, masks = runs["float64"]
    cfg = trainer.config
    losses, lrs, norms, params, moments, steps = torch_run(cfg, trainer.model_config, init, batches, masks, torch.float64)

    for rec, loss, lr, norm in zip(records, losses, lrs, norms):
        s = rec["step"]
        assert abs(rec["loss"] - loss) <= 1e-9 * abs(loss), f"step {s}: loss {rec['loss']!r} vs torch {loss!r}"
        assert abs(rec["lr"] - lr) <= 1e-14 * lr, f"step {s}: lr {rec['lr']!r} vs LambdaLR {lr!r}"
        assert abs(rec["grad_norm"] - norm) <= 1e-9 * norm, f"step {s}: norm {rec['grad_norm']!r} vs {norm!r}"
    # The check covers warmup, decay and floor, and clipping both active and inactive.
    assert records[0]["lr"] < records[5]["lr"] and records[-1]["lr"] == pytest.approx(cfg.min_lr)
    clipped = [r["grad_norm"] > cfg.grad_clip for r in records]
    assert any(clipped) and not all(clipped), [r["grad_norm"] for r in records]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.1       # it trains

    ours, ours_m, ours_steps = reference_final(trainer)
    assert set(ours) == set(params)
    assert ours_steps == steps == {n: STEPS for n in params}
    for name in params:
        err = rel_error(ours[name], params[name])[0]
        assert err <= 1e-8, f"{name}: rel error {err:.2e}"
        for key in ("exp_avg", "exp_avg_sq"):
            err = rel_error(ours_m[name][key], moments[name][key])[0]
            assert err <= 1e-8, f"{name}.{key}: rel error {err:.2e}"
        assert not np.array_equal(ours[name], init[name]), f"{name} never moved"


def test_float32_trajectory_under_the_tolerance_policy(runs):
    """float32 under oracle/core/tolerance.py's policy, applied to the whole trajectory.

    Two float32 runs of 24 Adam steps cannot be compared to each other with a fixed tight constant: each
    rounds differently, and Adam's normalised update turns a tiny gradient difference into an O(lr)
    parameter difference. So, as the policy says for every float32 check, the truth is PyTorch in float64
    on the same float32-representable inputs (the same float32 initial weights, batches and float32 dropout
    masks), and our float32 error must be within FLOAT32_FACTOR of torch float32's own error, or below
    FLOAT32_FLOOR: per step for the loss, per tensor for the final parameters and both moments.
    """
    trainer, init, records, batches, masks = runs["float32"]
    cfg = trainer.config
    t32 = torch_run(cfg, trainer.model_config, init, batches, masks, torch.float32)
    t64 = torch_run(cfg, trainer.model_config, {k: v.astype(np.float64) for k, v in init.items()},
                    batches, masks, torch.float64)

    def bound(theirs, truth) -> float:
        return max(tol.FLOAT32_FACTOR * rel_error(theirs, truth)[0], tol.FLOAT32_FLOOR)

    for rec, l32, l64, lr, n32, n64 in zip(records, t32[0], t64[0], t32[1], t32[2], t64[2]):
        s = rec["step"]
        assert rel_error(rec["loss"], l64)[0] <= bound(l32, l64), f"step {s}: loss {rec['loss']} torch32 {l32} truth {l64}"
        assert rel_error(rec["grad_norm"], n64)[0] <= bound(n32, n64), f"step {s}: norm {rec['grad_norm']} vs {n64}"
        assert rec["lr"] == pytest.approx(lr, rel=1e-14)
    ours, ours_m, ours_steps = reference_final(trainer)
    assert ours_steps == t32[5]
    for name in ours:
        assert ours[name].dtype == np.float32
        err = rel_error(ours[name], t64[3][name])[0]
        assert err <= bound(t32[3][name], t64[3][name]), f"{name}: err {err:.2e}"
        for key in ("exp_avg", "exp_avg_sq"):
            err = rel_error(ours_m[name][key], t64[4][name][key])[0]
            assert err <= bound(t32[4][name][key], t64[4][name][key]), f"{name}.{key}: err {err:.2e}"


def learnable_corpus(n: int, vocab: int = 6, seed: int = 0) -> np.ndarray:
    """A fixed random 12-symbol phrase over `vocab` symbols, repeated, with 5% of the symbols replaced at
    random. Bigrams are ambiguous within the phrase, so predicting it needs more than the last symbol."""
    rng = np.random.default_rng(seed)
    phrase = rng.integers(0, vocab, 12)
    ids = np.tile(phrase, n // 12 + 1)[:n]
    noise = rng.random(n) < 0.05
    ids[noise] = rng.integers(0, vocab, noise.sum())
    return ids


def test_small_model_learns_far_below_unigram_entropy():
    data = learnable_corpus(6000)
    train, val = data[:5400], data[5400:]
    counts = np.bincount(train, minlength=6) / len(train)
    unigram = float(-(counts[counts > 0] * np.log(counts[counts > 0])).sum())
    cfg = TrainConfig(out_dir="", seed=0, n_layer=1, n_head=2, n_embd=32, block_size=16, dtype="float32",
                      batch_size=16, max_iters=100, learning_rate=1e-2, min_lr=1e-3, warmup_iters=10,
                      lr_decay_iters=100, eval_interval=100, eval_iters=10, grad_clip=1.0)
    trainer = Trainer(cfg, train_data=train, val_data=val, vocab_size=6)
    summary = trainer.run()
    first, last = trainer.history[0], trainer.history[-1]
    assert first["step"] == 0 and last["step"] == 100
    assert first["val_loss"] > 0.9 * unigram                # starts near chance
    assert last["val_loss"] < 0.5 * unigram, (last, unigram)  # then learns the phrase (0.68 vs 1.59 nats)
    assert summary["best_val_loss"] == last["val_loss"]
