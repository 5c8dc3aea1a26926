"""Gradient accumulation in one process (`--gradient_accumulation_steps K`, reference/programs/distributed.py):
K micro-batches weighted by their target-token counts give the gradient of the one batch K times the
size, ignored positions and uneven micro-batches included; 25 float64 steps of AdamW equal the big batch
(losses, every weight, both moments) to round-off; ZeRO-1 on one rank equals plain AdamW; a planted
1/K weighting is caught.

Equality is to round-off, not bitwise: the big batch sums every row's gradient in one matrix product,
the micro-batches in K products added afterwards, another order of the same float64 additions. The
measure is per tensor, max |a - b| / max |b|, and the bound 1e-13 (measured: about 1e-14)."""

from __future__ import annotations

import numpy as np
import pytest

from reference.model import GPT
from reference.config import GPTConfig
from reference.programs.distributed import DataParallel, shard_bounds
from reference.programs.training.settings import TrainConfig
from reference.programs.training.trainer import Trainer

RTOL = 1e-13
DATA = np.random.default_rng(0).integers(0, 11, 3000)


def rel(a, b) -> float:
    """max |a - b| / max |b| over a tensor (0 for two zero tensors)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.max(np.abs(b))
    return float(np.max(np.abs(a - b)) / scale) if scale > 0 else float(np.max(np.abs(a)))


def run(batch_size, k, *, zero_stage=0, dropout=0.0, steps=25):
    cfg = TrainConfig(out_dir="", n_layer=2, n_head=2, n_embd=16, block_size=8, batch_size=batch_size,
                      gradient_accumulation_steps=k, dtype="float64", max_iters=steps, eval_interval=1000,
                      eval_iters=2, warmup_iters=3, lr_decay_iters=steps, learning_rate=1e-2,
                      zero_stage=zero_stage, dropout=dropout)
    t = Trainer(cfg, train_data=DATA[:2500], val_data=DATA[2500:], vocab_size=11, kernels="textbook")
    losses = np.array([t.train_step()["loss"] for _ in range(steps)])
    t.dist.full_optimizer_state(t.optimizer)                   # ZeRO-1: the moments in the one-process layout
    return t, losses


def differences(a: Trainer, la, b: Trainer, lb) -> dict[str, float]:
    out = {"loss": rel(la, lb), "weights": max(rel(p.data, q.data) for p, q in zip(a.params, b.params))}
    for key in ("exp_avg", "exp_avg_sq"):
        out[key] = max(rel(a.optimizer.state[id(p)][key], b.optimizer.state[id(q)][key])
                       for p, q in zip(a.params, b.params))
    return out


def test_shard_bounds_cover_in_order_and_differ_by_at_most_one():
    for n in range(0, 30):
        for parts in range(1, 7):
            bounds = shard_bounds(n, parts)
            sizes = [b - a for a, b in bounds]
            assert bounds[0][0] == 0 and bounds[-1][1] == n and len(bounds) == parts
            assert all(bounds[i][1] == bounds[i + 1][0] for i in range(parts - 1))
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_micro_batches_hold_at_most_batch_size_rows():
    dp = DataParallel()
    assert dp.micro_batches(12, 4) == [(0, 4), (4, 8), (8, 12)]
    assert dp.micro_batches(12, 5) == [(0, 4), (4, 8), (8, 12)]
    assert dp.micro_batches(3, 12) == [(0, 3)]


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_k_micro_batches_equal_the_big_batch_over_25_steps(dropout):
    big, lb = run(12, 1, dropout=dropout)
    acc, la = run(4, 3, dropout=dropout)
    diff = differences(acc, la, big, lb)
    assert all(v <= RTOL for v in diff.values()), diff
    assert not all(np.array_equal(p.data, q.data) for p, q in zip(acc.params, big.params))  # it did run apart


def test_zero1_on_one_rank_equals_plain_adamw_bit_for_bit():
    plain, lp = run(4, 3)
    zero, lz = run(4, 3, zero_stage=1)
    assert np.array_equal(lp, lz)
    assert all(np.array_equal(p.data, q.data) for p, q in zip(zero.params, plain.params))
    for p, q in zip(zero.params, plain.params):
        for key in ("exp_avg", "exp_avg_sq"):
            assert np.array_equal(zero.optimizer.state[id(p)][key], plain.optimizer.state[id(q)][key])
    assert zero.dist.zero.nbytes() == 2 * sum(p.data.nbytes for p in zero.params)    # one rank owns it all


def _grads_with_ignored_targets(pieces_rows: int, criterion_patch=None):
    """The gradient of a batch whose targets are partly ignore_index (unevenly over the micro-batches):
    through DataParallel's micro-batches, and through one loss_and_backward of the whole batch."""
    cfg = GPTConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=8, block_size=6, dtype="float64")
    rng = np.random.default_rng(3)
    x = rng.integers(0, 11, (6, 6))
    y = rng.integers(0, 11, (6, 6))
    y[0, :5] = -100                                            # micro-batch 0 keeps few targets
    y[4, 2:] = -100
    model = GPT(cfg, seed=1)
    model.zero_grad()
    full = model.loss_and_backward(x, y)
    want = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    dp = DataParallel()
    dp.attach(model.parameters(), None)
    if criterion_patch is not None:
        criterion_patch(model)
    got_loss = dp.forward_backward(model, (x, y), None, pieces_rows)
    got = [p.grad.copy() for p in model.parameters()]
    return full, got_loss, want, got


def test_ignored_positions_give_exactly_the_full_batch_mean():
    full, loss, want, got = _grads_with_ignored_targets(2)
    assert rel(loss, full) <= RTOL
    assert max(rel(g, w) for g, w in zip(got, want)) <= RTOL


def test_a_planted_one_over_k_weighting_is_caught():
    def one_over_k(model):                                     # the bug: mean of micro-batch means
        backward = model.criterion.backward
        model.criterion.backward = lambda dloss, cache: backward(1 / 3, cache)
    full, loss, want, got = _grads_with_ignored_targets(2, one_over_k)
    assert max(rel(g, w) for g, w in zip(got, want)) > 1e-3


def test_zero_stage_needs_adamw():
    with pytest.raises(ValueError, match="zero_stage 1 splits AdamW's moments"):
        TrainConfig(zero_stage=1, optimizer="sgd")
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be >= 1"):
        TrainConfig(gradient_accumulation_steps=0)
