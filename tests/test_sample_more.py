"""Sampling, the edges: one row of logits as well as a batch, prompts of the wrong dtype, and the CLI's
refusal of --num-samples 0 and of a checkpoint without a tokenizer.

(tests/test_sample.py covers the cache, the decoding rules, determinism and the other CLI errors.)
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from reference import GPT, GPTConfig
from reference.programs.checkpoint import save_checkpoint
from reference.programs.cli import main
from reference.programs.tokenizers import CharTokenizer
from reference.programs.sampling.generation import generate
from reference.programs.sampling.logits_process import next_token_probs, sample_next

Z = np.array([0.5, 2.0, -1.0, 2.0, 0.0])


def small_model(vocab_size: int = 5) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=4, n_layer=1, n_head=1, n_embd=4), seed=0)


def test_one_row_of_logits_is_a_batch_of_one():
    p = next_token_probs(Z, temperature=0.7, top_k=3)
    assert p.shape == (1, 5) and np.array_equal(p, next_token_probs(Z[None], temperature=0.7, top_k=3))
    assert p.sum() == pytest.approx(1.0) and p[0, 2] == 0.0 and p[0, 4] == 0.0     # top 3: ids 1, 3, 0

    greedy = sample_next(Z, greedy=True)
    assert greedy.dtype == np.int64 and greedy.tolist() == [1]                   # first of the tied maxima
    drawn = sample_next(Z, top_k=2, rng=np.random.default_rng(0))
    assert drawn.shape == (1,) and drawn[0] in (1, 3)
    assert np.array_equal(drawn, sample_next(Z[None], top_k=2, rng=np.random.default_rng(0)))


@pytest.mark.parametrize("prompt", [np.array([1.0, 2.0]), np.array([[True, False]])])
def test_prompt_ids_must_be_integers(prompt):
    with pytest.raises(TypeError, match=rf"^token ids must be integers, got dtype {prompt.dtype}$"):
        generate(small_model(), prompt, 2, greedy=True)


@pytest.mark.parametrize("prompt", [np.zeros((1, 1, 2), dtype=np.int64), np.array(3)])
def test_prompt_of_another_rank_is_refused_as_such(prompt):
    """A 3-D (or 0-D) prompt is not 'empty': the message says which shapes are taken and which one came."""
    shape = re.escape(str(prompt.shape))
    message = rf"^prompt must be 1-D \(T,\) or 2-D \(B, T\) token ids, got shape {shape}$"
    with pytest.raises(ValueError, match=message):
        generate(small_model(), prompt, 2, greedy=True)


@pytest.mark.parametrize("prompt", [np.zeros(0, dtype=np.int64), np.zeros((2, 0), dtype=np.int64),
                                    np.zeros((0, 3), dtype=np.int64)])
def test_an_empty_prompt_is_refused_with_its_shape(prompt):
    shape = re.escape(str(prompt.shape))
    message = rf"^the prompt is empty: generation needs at least one token \(got shape {shape}\)$"
    with pytest.raises(ValueError, match=message):
        generate(small_model(), prompt, 2, greedy=True)


def test_unsigned_prompt_ids_are_fine():
    out = generate(small_model(), np.array([1, 2], dtype=np.uint16), 3, greedy=True)
    assert out.dtype == np.int64 and out.shape == (5,) and out[:2].tolist() == [1, 2]


# ------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """The same small model saved with its tokenizer and without one."""
    d = tmp_path_factory.mktemp("ckpts")
    tok = CharTokenizer("abcde")
    model = small_model(tok.vocab_size)
    save_checkpoint(d / "with.safetensors", model, step=0, tokenizer=tok)
    save_checkpoint(d / "without.safetensors", model, step=0)
    return d / "with.safetensors", d / "without.safetensors"


def sample_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(["sample", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("n", ["0", "-3"])
def test_cli_refuses_no_samples(ckpts, capsys, n):
    rc, out, err = sample_cli(capsys, "--ckpt", ckpts[0], "--prompt", "ab", "--num-samples", n)
    assert (rc, out, err) == (2, "", f"error: --num-samples must be >= 1, got {n}\n")


def test_cli_refuses_a_checkpoint_without_a_tokenizer(ckpts, capsys):
    rc, out, err = sample_cli(capsys, "--ckpt", ckpts[1], "--prompt", "ab")
    assert (rc, out) == (2, "")
    assert err == f"error: {ckpts[1]} holds no tokenizer, so text cannot be encoded\n"
    rc, out, _ = sample_cli(capsys, "--ckpt", ckpts[0], "--prompt", "ab", "--max-new-tokens", 3, "--greedy",
                            "--top-k", 0)
    assert rc == 0 and out.startswith("ab") and len(out) == len("ab") + 3 + 1 and set(out[:-1]) <= set("abcde")


def test_ckpt_and_init_from_together_are_refused(tmp_path, capsys):
    """Before: `sample --ckpt FILE --init-from DIR` sampled DIR and ignored FILE without a word."""
    with pytest.raises(SystemExit) as e:
        main(["sample", "--ckpt", str(tmp_path / "c.safetensors"), "--init-from", str(tmp_path)])
    assert e.value.code == 2
    assert "argument --init-from/--init_from: not allowed with argument --ckpt" in capsys.readouterr().err
