"""Sampling: the key/value cache gives the logits of recomputing the window at every step (learned
positions, RoPE, ALiBi, grouped-query attention, past the context), nanoGPT's prompt cropping, the
semantics of greedy / temperature / top-k / top-p, seeded determinism, clear errors, and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from reference import GPT, GPTConfig
from reference.programs.cli import main
from reference.programs.tokenizers import CharTokenizer
from reference.programs.sampling.generation import generate
from reference.programs.sampling.logits_process import next_token_probs, sample_next
from reference.programs.training.settings import TrainConfig
from reference.programs.training.trainer import Trainer

BLOCK = 8


def perturbed_model(config: GPTConfig, seed: int = 0) -> GPT:
    """A model with every parameter moved off its init (norm weights 1 and biases 0 would hide bugs)."""
    model = GPT(config, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for p in model.parameters():
        p.data += (0.3 * rng.standard_normal(p.data.shape)).astype(p.data.dtype)
    return model


CONFIGS = [dict(pos=pos, n_kv_head=kv) for pos in ("learned", "rope", "alibi") for kv in (4, 2, 1)]
CONFIGS.append(dict(pos="sinusoidal", n_kv_head=2))


@pytest.mark.parametrize("variant", CONFIGS, ids=lambda v: f"{v['pos']}-kv{v['n_kv_head']}")
def test_cached_logits_equal_recomputing_the_window_at_every_step(variant):
    config = GPTConfig(vocab_size=13, block_size=BLOCK, n_layer=2, n_head=4, n_embd=16, dtype="float64", **variant)
    model = perturbed_model(config)
    prompt = np.array([[1, 5, 2], [7, 7, 0]])                # a batch of two different prompts
    new = 2 * BLOCK                                           # well past the context
    calls, forward = [], model.forward
    model.forward = lambda idx, **kw: calls.append((idx.shape[1], kw["kv_cache"].length)) or forward(idx, **kw)
    out, cached = generate(model, prompt, new, temperature=1.0, rng=np.random.default_rng(0), return_logits=True)
    del model.forward
    # prefill 3, then one token at a time at positions 3..7, then (context full) re-prefill 8 every step
    assert calls == [(3, 0)] + [(1, t) for t in range(3, BLOCK)] + [(BLOCK, 0)] * (new - 1 - (BLOCK - 3))
    assert out.shape == (2, 3 + new) and np.array_equal(out[:, :3], prompt)
    full, _ = model.forward(out[:, :BLOCK])                   # the whole sequence up to the context, at once
    for i, logits in enumerate(cached):
        n = 3 + i                                             # logits for token n, from tokens < n
        recomputed = model.forward(out[:, max(0, n - BLOCK):n])[0][:, -1]
        scale = np.abs(recomputed).max()
        assert np.abs(logits - recomputed).max() <= 1e-12 * scale, f"step {i} (sequence length {n})"
        if n <= BLOCK:                                        # also the all-positions forward's logits
            assert np.abs(logits - full[:, n - 1]).max() <= 1e-12 * scale
    again = generate(model, prompt, new, temperature=1.0, rng=np.random.default_rng(0), use_cache=False)
    assert np.array_equal(again, out)


def test_long_prompt_is_cropped_with_a_note(capsys):
    config = GPTConfig(vocab_size=13, block_size=BLOCK, n_layer=1, n_head=2, n_embd=8, dtype="float64", pos="rope")
    model = perturbed_model(config)
    prompt = np.arange(20) % 13
    out, logits = generate(model, prompt, 3, greedy=True, return_logits=True)
    assert out.shape == (23,) and np.array_equal(out[:20], prompt)      # the whole prompt is kept
    assert "note: the prompt has 20 tokens, more than the context of 8" in capsys.readouterr().err
    expected = model.forward(prompt[None, -BLOCK:])[0][0, -1]           # conditioned on the last 8 only
    assert np.allclose(logits[0][0], expected, rtol=0, atol=1e-12)
    generate(model, prompt, 1, greedy=True, verbose=False)
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------ semantics


def test_greedy_is_the_argmax_and_ignores_temperature_and_rng():
    config = GPTConfig(vocab_size=13, block_size=BLOCK, n_layer=1, n_head=2, n_embd=8, dtype="float64")
    model = perturbed_model(config)
    a, logits = generate(model, [3, 4], 10, greedy=True, temperature=0.0, return_logits=True)
    b = generate(model, [3, 4], 10, greedy=True, temperature=5.0, top_k=1, rng=np.random.default_rng(9))
    assert np.array_equal(a, b)
    assert [int(np.argmax(z[0])) for z in logits] == a[2:].tolist()
    c = generate(model, [3, 4], 10, top_k=1, rng=np.random.default_rng(1))   # top-k 1 sampling = greedy
    assert np.array_equal(a, c)


def test_temperature_scales_the_logits():
    z = np.array([[1.0, 2.0, 0.5, -1.0]])
    for t in (0.5, 1.0, 3.0):
        e = np.exp(z / t - (z / t).max())
        assert np.allclose(next_token_probs(z, temperature=t), e / e.sum(), rtol=1e-15, atol=0)
    sharp = next_token_probs(z, temperature=0.05)
    assert sharp[0, 1] > 0.999


def test_top_k_keeps_the_k_largest_and_ties_at_the_kth():
    z = np.array([[0.1, 3.0, 2.0, 2.0, -1.0, 0.5]])
    p = next_token_probs(z, top_k=2)
    assert (p[0] > 0).tolist() == [False, True, True, True, False, False]   # tie at the 2nd value kept
    e = np.exp(z[0, 1:4] - 3.0)
    assert np.allclose(p[0, 1:4], e / e.sum(), rtol=1e-15)
    assert np.array_equal(next_token_probs(z, top_k=6), next_token_probs(z, top_k=600))   # k >= V: no-op
    assert (next_token_probs(z, top_k=1)[0] > 0).tolist() == [False, True, False, False, False, False]


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    z = np.log(probs)[None]
    kept = lambda top_p: (next_token_probs(z, top_p=top_p)[0] > 0).tolist()
    assert kept(0.3) == [False, True, False, False]          # the top token always
    assert kept(0.5) == [False, True, False, False]
    assert kept(0.6) == [False, True, False, True]           # 0.5 < 0.6: add the next (0.3)
    assert kept(0.9) == [False, True, True, True]
    assert kept(0.99) == [True, True, True, True]
    assert kept(1.0) == [True, True, True, True]
    p = next_token_probs(z, top_p=0.6)[0]
    assert np.allclose(p, [0, 0.5 / 0.8, 0, 0.3 / 0.8], rtol=1e-12, atol=0)
    both = next_token_probs(z, top_k=3, top_p=0.99)[0]       # top-k first, then the nucleus of what is left
    assert (both > 0).tolist() == [False, True, True, True]


def test_sampling_draws_from_the_distribution():
    z = np.log(np.array([0.1, 0.6, 0.0001, 0.2999]))
    n = 40000
    ids = sample_next(np.repeat(z[None], n, 0), rng=np.random.default_rng(0))
    freq = np.bincount(ids, minlength=4) / n
    p = np.exp(z) / np.exp(z).sum()
    assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-4), (freq, p)
    ids = sample_next(np.repeat(z[None], n, 0), top_p=0.65, rng=np.random.default_rng(1))
    assert set(np.unique(ids)) == {1, 3}                      # zero-probability tokens never drawn


def test_seeded_generation_is_deterministic():
    config = GPTConfig(vocab_size=13, block_size=BLOCK, n_layer=1, n_head=2, n_embd=8, dtype="float32")
    model = perturbed_model(config)
    kw = dict(temperature=1.3, top_k=8, top_p=0.95)
    a = generate(model, [1, 2, 3], 30, rng=np.random.default_rng(42), **kw)
    b = generate(model, [1, 2, 3], 30, rng=np.random.default_rng(42), **kw)
    c = generate(model, [1, 2, 3], 30, rng=np.random.default_rng(43), **kw)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("kw, message", [
    (dict(temperature=0.0), "temperature must be a positive number"),
    (dict(temperature=-1.0), "temperature must be a positive number"),
    (dict(temperature=float("nan")), "temperature must be a positive number"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_k=0), "top_k must be an integer >= 1"),
    (dict(top_k=-3), "top_k must be an integer >= 1"),
    (dict(top_k=2.5), "top_k must be an integer >= 1"),
])
def test_bad_sampling_arguments_are_refused(kw, message):
    model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4))
    with pytest.raises(ValueError, match=message):
        generate(model, [1], 3, rng=np.random.default_rng(0), **kw)


def test_bad_prompts_are_refused():
    model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4))
    with pytest.raises(ValueError, match="the prompt is empty"):
        generate(model, [], 3, greedy=True)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0"):
        generate(model, [1], -1, greedy=True)
    with pytest.raises(ValueError, match="out of range"):
        generate(model, [7], 1, greedy=True)
    with pytest.raises(ValueError, match="needs a numpy Generator"):
        generate(model, [1], 1)
    assert generate(model, [1, 2], 0, greedy=True).tolist() == [1, 2]


# ------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    text = "to be or not to be, that is the question. " * 30
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    out = tmp_path_factory.mktemp("sample")
    config = TrainConfig(out_dir=str(out), n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=8,
                         max_iters=30, learning_rate=1e-2, warmup_iters=3, lr_decay_iters=30, eval_interval=30,
                         eval_iters=2)
    Trainer(config, train_data=ids[:1100], val_data=ids[1100:], tokenizer=tok).run()
    return out / "ckpt.safetensors"


def sample_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(["sample", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_samples_deterministically(ckpt, capsys):
    rc, a, _ = sample_cli(capsys, "--ckpt", ckpt, "--prompt", "to be", "--max-new-tokens", 40, "--seed", 3)
    assert rc == 0 and a.startswith("to be") and len(a) == len("to be") + 40 + 1
    rc, b, _ = sample_cli(capsys, "--ckpt", ckpt, "--prompt", "to be", "--max-new-tokens", 40, "--seed", 3, "--no-cache")
    assert rc == 0 and a == b
    rc, c, _ = sample_cli(capsys, "--ckpt", ckpt, "--prompt", "to be", "--max-new-tokens", 40, "--seed", 4)
    assert rc == 0 and c != a
    rc, g, _ = sample_cli(capsys, "--ckpt", ckpt, "--prompt", "to be", "--max-new-tokens", 10, "--greedy",
                          "--num-samples", 2)
    first, second = g.split("---------------\n")
    assert rc == 0 and first == second                      # greedy: the same both times


def test_cli_crops_a_long_prompt_with_a_note(ckpt, capsys, tmp_path):
    long = tmp_path / "prompt.txt"
    long.write_text("that is the question. " * 3)
    rc, out, err = sample_cli(capsys, "--ckpt", ckpt, "--prompt-file", long, "--max-new-tokens", 5, "--top-p", 0.9)
    assert rc == 0 and out.startswith("that is the question. " * 3)
    assert "note: the prompt has 66 tokens, more than the context of 16" in err


@pytest.mark.parametrize("args, message", [
    (["--prompt", "Zebra"], r"cannot be encoded with the checkpoint's vocabulary: character\(s\) 'Z'"),
    (["--prompt", ""], "the prompt is empty"),
    (["--temperature", "0"], "temperature must be a positive number"),
    (["--top-p", "0"], r"top_p must be in \(0, 1\]"),
    (["--top-k", "-2"], "top_k must be an integer >= 1"),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be >= 0"),
])
def test_cli_errors_are_clear(ckpt, capsys, args, message):
    rc, out, err = sample_cli(capsys, "--ckpt", ckpt, *args)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and __import__("re").search(message, err), err


def test_cli_refuses_a_missing_or_corrupt_checkpoint(tmp_path, capsys):
    rc, _, err = sample_cli(capsys, "--ckpt", tmp_path / "nope.safetensors")
    assert rc == 2 and "no checkpoint at" in err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    rc, _, err = sample_cli(capsys, "--ckpt", bad)
    assert rc == 2 and "error: " in err
