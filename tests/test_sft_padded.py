"""SFT with one example per row (`--no-packing`, reference/programs/sft.py::PaddedExamples): the rows built by
hand; loss and every gradient of a padded batch against the twin, both on the padded batch with
F.cross_entropy(ignore_index=-100) and on each example alone, unpadded (float64); planted bugs (padding
or prompt tokens counted, left padding) reported; padded == packed when every example is one window; a
trajectory of 10 steps with gradient accumulation against torch's AdamW; LoRA on both paths; MPI data
parallel equal to one process; prepare's lengths checked on load; too-long examples refused in one line;
resume bit-exact."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from oracle.bridge import twins  # noqa: E402
from oracle.core.tolerance import FLOAT64_TOL  # noqa: E402
from reference import GPT, GPTConfig  # noqa: E402
from reference.fast import use_kernels  # noqa: E402
from reference.programs import sft  # noqa: E402
from reference.programs.tokenizers import CharTokenizer  # noqa: E402
from reference.programs.training.settings import TrainConfig  # noqa: E402
from reference.programs.training.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data"))
sys.path.insert(0, str(ROOT / "tests"))
import prepare  # noqa: E402
from test_sft import assert_resume_bit_identical, reverse_examples  # noqa: E402


from test_trajectory import one_torch_thread  # noqa: E402,F401  (autouse: torch on one thread here too)


def varied_examples(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """reverse_examples' task with words of 1 to 7 letters: examples of 4 to 16 tokens."""
    rng = np.random.default_rng(seed)
    words = ("".join(rng.choice(list("abcde"), size=int(rng.integers(1, 8)))) for _ in range(n))
    return [(f"{w}=", f"{w[::-1]}.") for w in words]


def encoded(examples):
    tok = CharTokenizer.from_text("".join(p + r for p, r in examples))
    return tok, *sft.encode_examples(examples, tok)


def test_rows_by_hand():
    tok, ids, mask, lengths = encoded([("ab", "cd"), ("e", "fgh"), ("abc", "d")])
    assert lengths.tolist() == [4, 4, 4] and mask.tolist() == [0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1]
    ex = sft.PaddedExamples(ids, mask, lengths, block_size=3)
    x, y = ex.rows(np.array([2, 0]))
    c = {ch: int(tok.encode(ch)[0]) for ch in "abcdefgh"}
    assert x.tolist() == [[c["a"], c["b"], c["c"]], [c["a"], c["b"], c["c"]]]
    assert y.tolist() == [[-100, -100, c["d"]], [-100, c["c"], c["d"]]]
    tok, ids, mask, lengths = encoded([("ab", "cd"), ("e", "fghij")])
    x, y = sft.PaddedExamples(ids, mask, lengths, block_size=8).rows(np.array([0, 1]))
    assert x.shape == (2, 5)                                    # the longest row: 6 tokens, 5 inputs
    assert x[0, 3:].tolist() == [sft.PAD_ID] * 2 and y[0].tolist() == [-100, c["c"], c["d"], -100, -100]


def test_refusals():
    tok, ids, mask, lengths = encoded([("ab", "cd"), ("efgh", "abcd")])
    with pytest.raises(ValueError, match=r"^the train split's example 2 has 8 tokens, more than block_size \+ 1 = 5 "
                                         r"\(--no-packing puts each example whole in one row; 1 example\(s\) are too "
                                         r"long\): raise --block_size"):
        sft.PaddedExamples(ids, mask, lengths, 4, "the train split's example")
    sft.PaddedExamples(ids, mask, lengths, 7)                   # exactly block_size + 1: one whole row
    tok, ids, mask, lengths = encoded([("ab", "cd"), ("", "e")])
    with pytest.raises(ValueError, match="example 2 has no target to count"):
        sft.PaddedExamples(ids, mask, lengths, 8)
    with pytest.raises(ValueError, match="examples: their lengths add up to 4 tokens for 5 ids"):
        sft.PaddedExamples(ids, mask, lengths - np.array([0, 1]), 8)
    cfg = TrainConfig(out_dir="", n_layer=1, n_head=1, n_embd=8, block_size=4, batch_size=2, max_iters=1,
                      packing=False)
    data = np.arange(20) % 5
    with pytest.raises(ValueError, match="--no-packing lays out SFT examples one per row, but the given data is not "
                                         "SFT data: expected data from python data/prepare.py --sft"):
        Trainer(cfg, train_data=data, val_data=data, vocab_size=5)


def small_config(**kw):
    cfg = dict(vocab_size=12, block_size=16, n_layer=2, n_head=2, n_embd=16, dtype="float64")
    cfg.update(kw)
    return GPTConfig(**cfg)


def twin_errors(model, x, y, examples, tok) -> dict[str, float]:
    """Our loss and gradients on the padded batch (x, y) against the twin's, computed twice: on (x, y) with
    F.cross_entropy(ignore_index=-100), and on each example alone (its own text, no padding: prompt targets
    ignored, response targets counted), the mean over every counted target. Relative errors by name."""
    model.zero_grad()
    loss = model.loss_and_backward(x, y)
    ours = {n: p.grad.copy() for n, p in model.named_parameters()}
    errs = {}
    for how in ("padded", "alone"):
        twin = twins.twin_of(model.config)
        twins.load_reference_state(twin, model.state_dict())
        if how == "padded":
            logits = twin(torch.as_tensor(x))
            loss_t = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.as_tensor(y).reshape(-1),
                                     ignore_index=-100)
        else:
            pieces, targets = [], []
            for prompt, response in examples:
                p, r = tok.encode(prompt), tok.encode(response)
                full = torch.as_tensor(np.concatenate([p, r]))
                pieces.append(twin(full[None, :-1])[0])
                targets.append(torch.where(torch.arange(1, len(full)) >= len(p), full[1:], -100))
            loss_t = F.cross_entropy(torch.cat(pieces), torch.cat(targets), ignore_index=-100)
        loss_t.backward()
        errs[f"{how}: loss"] = abs(loss - loss_t.item()) / abs(loss_t.item())
        for n, p in twin.named_parameters():
            g = p.grad.numpy()
            errs[f"{how}: {n}"] = float(np.abs(ours[n] - g).max() / np.abs(g).max())
    return errs


@pytest.mark.parametrize("kernels", ["textbook", "fast"])
def test_loss_and_gradients_against_twin(kernels):
    examples = reverse_examples(12, seed=4)
    tok, ids, mask, lengths = encoded(examples)
    ex = sft.PaddedExamples(ids, mask, lengths, block_size=12)
    index = np.random.default_rng(1).integers(0, len(ex), size=5)
    x, y = ex.rows(index)
    assert (lengths[index] < x.shape[1] + 1).any()             # some rows are padded
    model = use_kernels(GPT(small_config(vocab_size=tok.vocab_size), seed=0), kernels)
    errs = twin_errors(model, x, y, [examples[i] for i in index], tok)
    worst = max(errs, key=errs.get)
    print(f"padded SFT batch vs the twin (padded and each example alone), {kernels}: worst {errs[worst]:.2e} ({worst})")
    assert errs[worst] <= FLOAT64_TOL, worst

    pad = np.arange(x.shape[1])[None, :] >= (lengths[index] - 1)[:, None]           # (B, L) padded positions
    prompt = (y == -100) & ~pad
    planted = {"padding counted as a target": (x, np.where(pad, sft.PAD_ID, y)),
               "prompt tokens counted": (x, np.where(prompt, np.roll(x, -1, axis=1), y)),
               "left padding": tuple(np.stack([np.roll(r, int(k)) for r, k in zip(a, pad.sum(1))]) for a in (x, y))}
    for name, (xb, yb) in planted.items():
        bad = twin_errors(model, xb, yb, [examples[i] for i in index], tok)
        assert max(v for k, v in bad.items() if k.startswith("alone")) > 1e3 * FLOAT64_TOL, name


def test_padded_equals_packed_when_each_example_is_one_window():
    """Examples of exactly block_size + 1 tokens: the packed windows starting at the examples' offsets are the
    padded rows, drawn by the same generator, bit for bit."""
    rng = np.random.default_rng(0)
    T = 6
    examples = [(w[:k], w[k:]) for w, k in (("".join(rng.choice(list("abcdef"), T + 1)), int(rng.integers(1, T)))
                                            for _ in range(9))]
    tok, ids, mask, lengths = encoded(examples)
    assert (lengths == T + 1).all()
    ex = sft.PaddedExamples(ids, mask, lengths, block_size=T)
    xa, ya = ex.get_batch(16, np.random.default_rng(5))
    xb, yb = sft.get_batch(ids, mask, 16, T, np.random.default_rng(5), starts=ex.offsets)
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


def sft_trainer(examples, n_val, kernels="fast", **kw):
    tok, ids, mask, lengths = encoded(examples)
    cut = int(lengths[:-n_val].sum())
    cfg = TrainConfig(**{**dict(out_dir="", seed=3, n_layer=2, n_head=2, n_embd=16, block_size=12, dtype="float64",
                                batch_size=4, max_iters=10, eval_iters=2, packing=False), **kw})
    return Trainer(cfg, train_data=ids[:cut], val_data=ids[cut:], tokenizer=tok, loss_masks=(mask[:cut], mask[cut:]),
                   example_lengths=(lengths[:-n_val], lengths[-n_val:]), kernels=kernels)


def test_trajectory_against_torch():
    """10 steps of Trainer.train_step on padded rows (2 micro-batches of 2 rows a step, dropout) against torch's
    AdamW, schedule and clipping on the whole 4-row batch."""
    from test_trajectory import torch_run
    t = sft_trainer(varied_examples(40, seed=7), 5, block_size=16, dropout=0.1, bias=True, batch_size=2, gradient_accumulation_steps=2,
                    learning_rate=1e-2, min_lr=1e-3, warmup_iters=2, lr_decay_iters=10, weight_decay=0.1,
                    beta1=0.9, beta2=0.99, grad_clip=1.0)
    t.record = True
    init = {k: v.copy() for k, v in t.model.state_dict().items()}
    records, batches, masks = [], [], []
    for _ in range(10):
        records.append(t.train_step())
        batches.append(t.last_batch)
        masks.append(dict(t.last_masks.drawn))
    assert len({x.shape[1] for x, _ in batches}) > 1           # the width follows each batch's longest row
    losses, _, _, params, _, _ = torch_run(t.config, t.model_config, init, batches, masks, torch.float64)
    worst = max(abs(r["loss"] - q) / abs(q) for r, q in zip(records, losses))
    ours = dict(t.model.named_parameters())
    worst_w = max(float(np.abs(ours[n].data - p).max() / np.abs(p).max()) for n, p in params.items())
    print(f"--no-packing trajectory, 10 steps, 2 micro-batches: worst loss error {worst:.2e}, "
          f"worst weight error {worst_w:.2e}")
    assert worst <= 1e-9 and worst_w <= 1e-8


def test_lora_on_both_paths():
    """LoRA adapters trained on padded rows: the fast path's run equals the textbook's, the base weights stay."""
    runs = {}
    for kernels in ("textbook", "fast"):
        t = sft_trainer(reverse_examples(30, seed=2), 4, max_iters=4, eval_interval=4, lora_rank=2,
                        lora_targets="c_attn,c_fc", lora_dropout=0.1, learning_rate=1e-2, kernels=kernels)
        runs[kernels] = ([t.train_step()["loss"] for _ in range(4)], t.evaluate(),
                         {n: p.data.copy() for n, p in t.model.named_parameters()})
    (la, ea, wa), (lb, eb, wb) = runs["textbook"], runs["fast"]
    assert max(abs(a - b) / abs(b) for a, b in zip(la, lb)) <= FLOAT64_TOL
    assert max(float(np.abs(wa[n] - wb[n]).max()) for n in wa) <= 1e-10 and abs(ea["val"] - eb["val"]) <= 1e-10


def prepared(tmp_path, n=30, seed=0):
    f = tmp_path / "ex.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": p, "response": r}) for p, r in reverse_examples(n, seed)) + "\n")
    out = tmp_path / "d"
    assert prepare.main(["--sft", str(f), "--out", str(out)]) == 0
    return out


def errors(capsys) -> list[str]:
    """The lines train wrote on stderr besides its settings line."""
    return [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("settings:")]


def test_prepare_records_lengths_and_train_checks_them(tmp_path, capsys):
    from reference.programs.cli import main
    d = prepared(tmp_path)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["sft"]["lengths"] == sft.LENGTH_FILES
    for split in ("train", "val"):
        n = np.fromfile(d / sft.LENGTH_FILES[split], "<i8")
        assert n.size == meta["sft"][f"{split}_examples"] and n.sum() == meta[f"{split}_tokens"]
    assert meta["sft"]["longest"] == max(len(p) + len(r) for p, r in reverse_examples(30))
    common = ["train", "--data_dir", d, "--out_dir", tmp_path / "o", "--n_layer", 1, "--n_head", 2, "--n_embd", 8,
              "--batch_size", 2, "--max_iters", 1, "--eval_iters", 1, "--no-progress", "--no-packing"]
    assert main([*map(str, common), "--block_size", "8"]) == 2    # the longest has 10 tokens
    err = errors(capsys)
    assert len(err) == 1 and "split's example" in err[0] and "more than block_size + 1 = 9" in err[0], err
    raw = (d / "train_lengths.bin").read_bytes()
    (d / "train_lengths.bin").write_bytes(raw[:-8])
    assert main([*map(str, common), "--block_size", "12"]) == 2
    err = errors(capsys)
    assert len(err) == 1 and "train_lengths.bin does not hold" in err[0] and "re-run python data/prepare.py" in err[0]
    (d / "train_lengths.bin").unlink()
    assert main([*map(str, common), "--block_size", "12"]) == 2
    err = errors(capsys)
    assert len(err) == 1 and "train_lengths.bin is missing" in err[0], err
    assert main([*map(str, common[:-1]), "--block_size", "8"]) == 0   # packed: the lengths are not needed


def test_no_packing_resumes_bit_identical(tmp_path, capsys):
    d = prepared(tmp_path)
    common = ["--data_dir", d, "--eval_interval", 3, "--always_save_checkpoint", "--n_layer", 1, "--n_head", 2,
              "--n_embd", 16, "--block_size", 12, "--batch_size", 4, "--eval_iters", 2, "--dropout", 0.1,
              "--no-progress", "--no-packing"]
    assert_resume_bit_identical(tmp_path, common)
    capsys.readouterr()


def test_under_mpi_equals_one_process(tmp_path):
    """2 ranks x 2 micro-batches of padded rows equal one process with the whole batch (to
    tests/test_data_parallel.py's 1e-13): the pieces are weighted by their counted targets, padding has none."""
    pytest.importorskip("mpi4py")
    dp = pytest.importorskip("test_data_parallel")
    d = prepared(tmp_path, n=40)
    flags = ["--block_size", "12", "--max_iters", "6", "--eval_interval", "6", "--no-packing"]
    for name, (n, *more) in {"one": (0, "--batch_size", "8"),
                             "two": (2, "--batch_size", "2", "--gradient_accumulation_steps", "4")}.items():
        rc, err = dp.train(n, d, tmp_path / name, *more, *flags)
        assert rc == 0, err
    diffs = dp.differences(tmp_path / "two", tmp_path / "one")
    print(f"--no-packing, 2 ranks x 2 micro-batches vs one process: {diffs}")
    assert max(diffs.values()) <= dp.RTOL, diffs


def test_tokens_per_second_counts_the_positions_fed_not_batch_times_block():
    """Padded rows are as wide as the batch's longest example: a step's tokens are rows x that width, and
    the run's summary divides their sum by the training time (not batch_size x block_size per step)."""
    t = sft_trainer(varied_examples(40, seed=7), 5, block_size=16, batch_size=2, gradient_accumulation_steps=2,
                    max_iters=4, eval_interval=100)
    t.record = True
    widths = []
    for _ in range(3):
        t.train_step()
        widths.append(t.last_batch[0].shape[1])
        assert t.step_tokens == 4 * widths[-1]
    assert min(widths) < 16                                     # narrower than block_size: B x T overcounts
