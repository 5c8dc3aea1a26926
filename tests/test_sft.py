"""Supervised fine-tuning (reference/programs/sft.py, data/prepare.py --sft): the loss mask built by hand,
loss and every gradient against the twin with F.cross_entropy(ignore_index=-100) in float64, a short
training trajectory against torch's AdamW on the same SFT batches, and every bad input."""

from __future__ import annotations

import json
import math
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
from reference.programs.tokenizers import ByteTokenizer, CharTokenizer  # noqa: E402
from reference.programs.training.settings import TrainConfig  # noqa: E402
from reference.programs.training.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data"))
import prepare  # noqa: E402


def reverse_examples(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """A learnable task: the response is the prompt's letters reversed."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        word = "".join(rng.choice(list("abcde"), size=int(rng.integers(2, 5))))
        out.append((f"{word}=", f"{word[::-1]}."))
    return out


def test_mask_and_targets_by_hand():
    tok = CharTokenizer.from_text("abcdefg")
    ids, mask = sft.encode([("ab", "cd"), ("e", "fg")], tok)
    assert tok.decode(ids) == "abcdefg" and mask.tolist() == [0, 0, 1, 1, 0, 1, 1]
    y = sft.targets(ids, mask)
    # position t predicts token t + 1, counted only if token t + 1 is a response token (c, d, f, g)
    assert y.tolist() == [-100, ids[2], ids[3], -100, ids[5], ids[6]]
    x, yb = sft.get_batch(ids, mask, 16, 3, np.random.default_rng(0))
    for xr, yr in zip(x, yb):
        i = next(i for i in range(len(ids) - 3) if np.array_equal(ids[i:i + 3], xr))
        assert yr.tolist() == y[i:i + 3].tolist() and (yr != -100).any()
    # windows whose targets are all prompt tokens are never drawn: "ab" then "c" counts, so every start works;
    # with a long prompt some starts have none
    ids2, mask2 = sft.encode([("abcdefg", "a")], tok)
    assert sft.window_starts(mask2, 3).tolist() == [4]          # only the window ending on the response


def test_chat_template():
    p, r = sft.render({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                    {"role": "assistant", "content": "Hello"}]}, "x")
    assert p == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n" and r == "Hello\n"


def small_config(**kw):
    cfg = dict(vocab_size=12, block_size=16, n_layer=2, n_head=2, n_embd=16, dtype="float64")
    cfg.update(kw)
    return GPTConfig(**cfg)


@pytest.mark.parametrize("kernels", ["textbook", "fast"])
def test_loss_and_gradients_against_twin(kernels):
    examples = reverse_examples(20)
    tok = CharTokenizer.from_text("".join(p + r for p, r in examples))
    ids, mask = sft.encode(examples, tok)
    x, y = sft.get_batch(ids, mask, 4, 12, np.random.default_rng(1))
    assert (y == -100).any() and (y != -100).any()
    model = use_kernels(GPT(small_config(vocab_size=tok.vocab_size), seed=0), kernels)
    model.zero_grad()
    loss = model.loss_and_backward(x, y)
    twin = twins.twin_of(model.config)
    twins.load_reference_state(twin, model.state_dict())
    logits = twin(torch.as_tensor(x))
    loss_t = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.as_tensor(y).reshape(-1), ignore_index=-100)
    loss_t.backward()
    errs = {"loss": abs(loss - loss_t.item()) / abs(loss_t.item())}
    named = dict(twin.named_parameters())
    for n, p in model.named_parameters():
        g = named[n].grad.numpy()
        errs[n] = float(np.abs(p.grad - g).max() / np.abs(g).max())
    worst = max(errs, key=errs.get)
    print(f"SFT loss and gradients vs F.cross_entropy(ignore_index=-100), {kernels}: worst {errs[worst]:.2e} ({worst})")
    assert errs[worst] <= FLOAT64_TOL, worst
    full = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.as_tensor(np.where(y == -100, x, y)).reshape(-1))
    assert abs(full.item() - loss) > 1e-3                     # the mask changes the loss: it is not a no-op


def test_trajectory_against_torch():
    """Trainer.train_step on SFT data (its batches, AdamW, schedule, clipping, dropout) against torch's own."""
    from test_trajectory import torch_run
    examples = reverse_examples(60)
    tok = CharTokenizer.from_text("".join(p + r for p, r in examples))
    (tr, trm), (va, vam) = sft.encode(examples[:50], tok), sft.encode(examples[50:], tok)
    cfg = TrainConfig(out_dir="", seed=3, n_layer=2, n_head=2, n_embd=16, block_size=8, dropout=0.1, bias=True,
                      dtype="float64", batch_size=4, max_iters=8, learning_rate=1e-2, min_lr=1e-3, warmup_iters=2,
                      lr_decay_iters=8, weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0)
    trainer = Trainer(cfg, train_data=tr, val_data=va, tokenizer=tok, loss_masks=(trm, vam), kernels="fast")
    trainer.record = True
    init = {k: v.copy() for k, v in trainer.model.state_dict().items()}
    records, batches, masks = [], [], []
    for _ in range(8):
        records.append(trainer.train_step())
        batches.append(trainer.last_batch)
        masks.append(dict(trainer.last_masks.drawn))
    assert all((y == -100).any() and (y != -100).any() for _, y in batches)
    losses, _, norms, params, _, _ = torch_run(cfg, trainer.model_config, init, batches, masks, torch.float64)
    worst = max(abs(r["loss"] - t) / abs(t) for r, t in zip(records, losses))
    ours = dict(trainer.model.named_parameters())
    worst_w = max(float(np.abs(ours[n].data - p).max() / np.abs(p).max()) for n, p in params.items())
    print(f"SFT trajectory, 8 steps: worst loss error {worst:.2e}, worst weight error {worst_w:.2e}")
    assert worst <= 1e-9 and worst_w <= 1e-8
    ev = trainer.evaluate()
    assert all(math.isfinite(v) for v in ev.values())


@pytest.mark.parametrize("line, match", [
    ('{"prompt": "a"}', r"line 2: no 'response' key \(it has \['prompt'\]\); expected"),
    ('{"response": "a"}', r"line 2: no 'prompt' key"),
    ('{"prompt": "a", "response": 3}', r"line 2: 'response' must be a string, got int"),
    ('{"prompt": "a", ', r"line 2: not valid JSON"),
    ('[1, 2]', r"line 2: expected a JSON object"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', r"line 2: the last message is the 'user''s; expected the "
                                                          r"assistant's"),
    ('{"messages": []}', r"line 2: \"messages\" must be a non-empty list"),
])
def test_bad_lines(tmp_path, line, match):
    f = tmp_path / "x.jsonl"
    f.write_text('{"prompt": "ok", "response": "fine"}\n' + line + "\n")
    with pytest.raises(sft.SFTError, match=match):
        sft.read_examples(f)


def test_empty_response_refused_never_nan():
    with pytest.raises(sft.SFTError, match=r"example 2: the response '' is empty after tokenisation: every target "
                                           r"would be ignored \(expected at least one response token\)"):
        sft.encode([("a", "b"), ("c", "")], ByteTokenizer())
    ids, mask = sft.encode([("abcdefgh", "i")], ByteTokenizer())
    with pytest.raises(ValueError, match="no window of block_size 4 holds a response token"):
        sft.get_batch(ids, np.zeros_like(mask), 2, 4, np.random.default_rng(0))
    cfg = TrainConfig(out_dir="", n_layer=1, n_head=1, n_embd=8, block_size=4, batch_size=2, max_iters=1)
    with pytest.raises(ValueError, match="no window of block_size 4 in the train split holds a response token"):
        Trainer(cfg, train_data=ids, val_data=ids, tokenizer=ByteTokenizer(), loss_masks=(0 * mask, mask))


def test_a_split_too_short_for_a_window_names_no_packing_for_sft_data():
    ids, mask = sft.encode([("ab", "cd")], ByteTokenizer())
    cfg = TrainConfig(out_dir="", n_layer=1, n_head=1, n_embd=8, block_size=8, batch_size=2, max_iters=1)
    with pytest.raises(ValueError, match=r"too few for one window of block_size 8 \(\+1 target\); use a smaller "
                                         r"block_size, or --no-packing \(one example per row\)$"):
        Trainer(cfg, train_data=np.tile(ids, 8), val_data=ids, tokenizer=ByteTokenizer(),
                loss_masks=(np.tile(mask, 8), mask))


def test_prepare_sft_then_train(tmp_path, capsys):
    f = tmp_path / "ex.jsonl"
    rows = [{"prompt": p, "response": r} for p, r in reverse_examples(18)]
    rows.append({"messages": [{"role": "user", "content": "ab="}, {"role": "assistant", "content": "ba."}]})
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "data"
    assert prepare.main(["--sft", str(f), "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sft"]["train_examples"] == 17 and meta["sft"]["val_examples"] == 2
    said = capsys.readouterr().out
    assert "train: 17 examples, " in said and "; val: 2 examples, " in said
    assert prepare.count(1, "pair") == "1 pair" and prepare.count(1200, "example") == "1,200 examples"
    mask = np.fromfile(out / "train_mask.bin", np.uint8)
    assert mask.size == meta["train_tokens"] and 0 < mask.sum() < mask.size
    cfg = TrainConfig(out_dir="", data_dir=str(out), n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=4,
                      max_iters=2, eval_iters=1, dtype="float64")
    trainer = Trainer(cfg, kernels="textbook")
    assert trainer.loss_masks is not None
    assert all(math.isfinite(trainer.train_step()["loss"]) for _ in range(2))

    f.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')
    assert prepare.main(["--sft", str(f), "--out", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 2: no 'response' key" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "bad").exists()


def test_train_on_sft_data_resumes_bit_identical(tmp_path, capsys):
    """python -m reference train on prepare.py --sft data: straight to 6 steps equals 3 and a resume to 6."""
    f = tmp_path / "ex.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": p, "response": r}) for p, r in reverse_examples(30)) + "\n")
    assert prepare.main(["--sft", str(f), "--out", str(tmp_path / "d")]) == 0
    common = ["--data_dir", tmp_path / "d", "--eval_interval", 3, "--always_save_checkpoint", "--n_layer", 1,
              "--n_head", 2, "--n_embd", 16, "--block_size", 8, "--batch_size", 4, "--eval_iters", 2,
              "--dropout", 0.1, "--no-progress"]
    assert_resume_bit_identical(tmp_path, common)
    capsys.readouterr()


def assert_resume_bit_identical(tmp_path, common: list) -> None:
    """`train` 6 steps in one go (tmp_path/a) and 3 + a resumed 3 (tmp_path/b) with the flags `common`: the
    two final checkpoints hold the same bits."""
    from reference.programs.cli import main
    from reference.programs.safetensors_io import load_file
    run = lambda *a: main(["train", *map(str, a)])               # noqa: E731
    assert run("--out_dir", tmp_path / "a", "--max_iters", 6, *common) == 0
    assert run("--out_dir", tmp_path / "b", "--max_iters", 3, *common) == 0
    assert run("--out_dir", tmp_path / "b", "--resume", "--max_iters", 6, "--no-progress") == 0
    a, _ = load_file(tmp_path / "a" / "ckpt.safetensors")
    b, _ = load_file(tmp_path / "b" / "ckpt.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
