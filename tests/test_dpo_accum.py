"""DPO in pieces (reference/programs/dpo.py::DPOObjective through distributed.py::DataParallel.forward_backward),
one process: K micro-batches of pairs equal the one batch K times the size.

- A piece of pairs is `make_batch` of those pairs, bit for bit: both rows of each pair, padded to the
  piece's own longest row.
- The gradient of 10 pairs in 3 uneven micro-batches (4, 3, 3 pairs; weights 4/10, 3/10, 3/10) equals the
  whole batch's, to 1e-13 relative per tensor; the planted bugs (each piece weighted 1/3; a pair's chosen
  and rejected rows in different pieces) are caught.
- 12 float64 AdamW steps with dropout: K = 3 micro-batches of 3 pairs equal one batch of 9 (losses, every
  weight, both moments, 1e-13), on both paths, and with LoRA adapters (frozen base weights untouched);
  ZeRO-1 on one rank equals plain AdamW bit for bit (without clipping). Not bitwise against one batch:
  each piece pads to its own longest row, so its matrix products have other shapes than the whole
  batch's, and its rows' gradients are added in another order. A planted mask that is drawn per piece
  (not once per step, as one process draws it) is caught.
"""

from __future__ import annotations

import numpy as np
import pytest

from reference.programs import distributed, dpo
from reference.programs.distributed import DataParallel
from reference.programs.tokenizers import CharTokenizer
from reference.programs.training.settings import TrainConfig
from reference.programs.training.trainer import Trainer
from reference import GPT, GPTConfig

from test_dpo import BETA, pairs
from test_grad_accum import differences, rel

RTOL = 1e-13


def encoded(n: int = 16):
    ps = pairs(n)
    tok = CharTokenizer.from_text("".join("".join(p) for p in ps))
    return tok, dpo.encode_pairs(ps, tok, 16)


def objective_and_batch(idx):
    tok, enc = encoded()
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
                          dtype="float64"), seed=0)
    obj = dpo.DPOObjective(enc, enc, BETA)
    obj.prepare(model)
    for p in model.parameters():                                # a policy that has moved from the reference
        p.data += np.random.default_rng(7).standard_normal(p.data.shape) * 0.05
    ref = obj.reference["train"][idx]
    x, y = dpo.make_batch(enc, idx)
    return model, obj, enc, (x, y, np.concatenate([ref[:, 0], ref[:, 1]]))


def test_a_piece_is_make_batch_of_its_pairs():
    idx = np.array([3, 0, 7, 12, 5, 9, 1])
    _, obj, enc, batch = objective_and_batch(idx)
    assert obj.units(batch) == 7
    for a in range(7):
        for b in range(a + 1, 8):
            (x, y, ref), rows = obj.piece(batch, a, b)
            want_x, want_y = dpo.make_batch(enc, idx[a:b])
            assert np.array_equal(x, want_x) and np.array_equal(y, want_y)
            assert np.array_equal(ref, np.r_[batch[2][a:b], batch[2][7 + a:7 + b]])
            assert rows.tolist() == [*range(a, b), *range(7 + a, 7 + b)]     # a pair's two rows, together
    lengths = {obj.piece(batch, a, a + 1)[0][0].shape[1] for a in range(7)}
    assert len(lengths) > 1                                     # pieces do pad to their own lengths


def pieces_gradient(micro, plant=None):
    """(loss, grads) of 10 pairs through DataParallel's micro-batches, and of the whole batch at once."""
    idx = np.array([3, 0, 7, 12, 5, 9, 1, 14, 2, 11])
    model, obj, _, batch = objective_and_batch(idx)
    model.zero_grad()
    full = obj.loss_and_backward(model, batch)
    want = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    dp = DataParallel()
    dp.attach(model.parameters(), None)
    with pytest.MonkeyPatch.context() as mp:
        if plant is not None:
            plant(mp)
        loss = dp.forward_backward(model, batch, None, micro, obj)
    return rel(loss, full), max(rel(p.grad, w) for p, w in zip(model.parameters(), want))


def test_uneven_micro_batches_of_pairs_give_the_batch_gradient():
    assert DataParallel().micro_batches(10, 4) == [(0, 4), (4, 7), (7, 10)]
    errs = pieces_gradient(4)
    print(f"DPO, 10 pairs in micro-batches of 4, 3, 3 vs the whole batch: loss {errs[0]:.1e}, gradients {errs[1]:.1e}")
    assert max(errs) <= RTOL


def _one_over_pieces(mp):                                       # the bug: every piece weighs 1/3, not b / B
    f = dpo.dpo_loss_and_backward
    mp.setattr(dpo, "dpo_loss_and_backward", lambda m, x, y, r, beta, masks=None, weight=1.0:
               f(m, x, y, r, beta, masks, 1 / 3))


def _pairs_split(mp):                                           # the bug: pieces of rows, as the LM's
    def piece(self, batch, a, b):
        x, y, ref = batch
        rows = np.r_[2 * a:2 * b]                               # chosen and rejected of one pair apart
        return (x[rows], y[rows], ref[rows]), rows
    mp.setattr(dpo.DPOObjective, "piece", piece)


@pytest.mark.parametrize("plant", [_one_over_pieces, _pairs_split])
def test_planted_bugs_in_the_pieces_are_caught(plant):
    errs = pieces_gradient(4, plant)
    print(f"planted {plant.__name__}: gradients off by {errs[1]:.2g}")
    assert errs[1] > 1e-3


def run(batch_size, k, *, steps=12, lora=False, zero_stage=0, grad_clip=1.0, kernels="textbook"):
    tok, enc = encoded(24)
    stream = np.concatenate([np.concatenate(e) for e in enc])
    cfg = TrainConfig(out_dir="", seed=1, n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=batch_size,
                      gradient_accumulation_steps=k, max_iters=steps, learning_rate=1e-2, warmup_iters=2,
                      lr_decay_iters=steps, dropout=0.1, eval_iters=2, dtype="float64", objective="dpo",
                      zero_stage=zero_stage, grad_clip=grad_clip,
                      **({"lora_rank": 2, "lora_targets": "c_attn,c_fc", "lora_dropout": 0.2} if lora else {}))
    t = Trainer(cfg, train_data=stream, val_data=stream, tokenizer=tok, kernels=kernels,
                objective=dpo.DPOObjective(enc[:20], enc[20:], BETA))
    losses = np.array([t.train_step()["loss"] for _ in range(steps)])
    t.dist.full_optimizer_state(t.optimizer)
    return t, losses




@pytest.mark.parametrize("lora, kernels", [(False, "textbook"), (True, "textbook"), (False, "fast")])
def test_k_micro_batches_of_pairs_equal_the_big_batch_over_12_steps(lora, kernels):
    big, lb = run(9, 1, lora=lora, kernels=kernels)
    acc, la = run(3, 3, lora=lora, kernels=kernels)
    diff = differences(acc, la, big, lb)
    print(f"DPO{' + LoRA' if lora else ''} ({kernels}), K = 3 x 3 pairs vs 9 pairs, 12 steps with dropout: {diff}")
    assert all(v <= RTOL for v in diff.values()), diff
    assert not all(np.array_equal(p.data, q.data) for p, q in zip(acc.params, big.params))   # two real runs
    if lora:                                                    # only the adapters moved
        start, _ = run(9, 1, steps=0, lora=True)
        base = dict(start.model.named_parameters())
        frozen = [(n, p) for n, p in acc.model.named_parameters() if "lora_" not in n]
        assert frozen and all(np.array_equal(p.data, base[n].data) for n, p in frozen)
        assert len(acc.params) == sum("lora_" in n for n, _ in acc.model.named_parameters())


def test_zero1_on_one_rank_equals_plain_for_dpo_bit_for_bit():
    # Without clipping: one process sums the gradient's squares parameter by parameter
    # (reference.optim.clip_grad_norm_), ZeRO-1 over its flat slice, so a clipped step agrees to round-off only.
    plain, lp = run(3, 3, steps=6, grad_clip=0.0)
    zero, lz = run(3, 3, steps=6, zero_stage=1, grad_clip=0.0)
    assert np.array_equal(lp, lz)
    assert all(np.array_equal(p.data, q.data) for p, q in zip(zero.params, plain.params))


def test_a_planted_per_piece_dropout_draw_is_caught(monkeypatch):
    big, lb = run(9, 1, steps=3)
    monkeypatch.setattr(distributed._StepMasks, "rows_of", lambda self, rows, time=None: self.source)
    acc, la = run(3, 3, steps=3)
    assert differences(acc, la, big, lb)["weights"] > 1e-6


def test_a_dpo_step_feeds_two_rows_a_pair_and_memory_is_estimated_for_them():
    from reference.programs.training.memory import estimate_memory
    t, _ = run(3, 2, steps=1)
    x = t.get_batch("train", np.random.default_rng(0), 6)[0]
    assert x.shape[0] == 12 and t.step_tokens <= 12 * 16            # 6 pairs: 12 rows, each <= block_size
    lm = estimate_memory(t.config.replace(objective="lm"), 50)
    pairs = estimate_memory(t.config, 50)
    assert pairs["weights"] == lm["weights"] and pairs["activations"] == 2 * lm["activations"]
