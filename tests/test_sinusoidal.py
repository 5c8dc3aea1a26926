"""Sinusoidal position encodings ("Attention Is All You Need", sec. 3.5): the table against the paper's
formula evaluated one entry at a time with math.sin / math.cos in float64 (no torch built-in exists), the
twin's table against the same, positions continuing from a KV cache, and no parameters."""

import math

import numpy as np
import pytest

from oracle.bridge import twins
from reference import GPT, GPTConfig, KVCache
from reference.positions import sinusoidal_positions


def paper_table(start: int, T: int, C: int) -> list[list[float]]:
    """PE(pos, 2i) = sin(pos / 10000^(2i/C)), PE(pos, 2i+1) = cos(pos / 10000^(2i/C)), entry by entry."""
    table = []
    for pos in range(start, start + T):
        row = []
        for j in range(C):
            two_i = j - j % 2                                   # 2i for both columns of pair i
            angle = pos / math.pow(10000.0, two_i / C)
            row.append(math.sin(angle) if j % 2 == 0 else math.cos(angle))
        table.append(row)
    return table


@pytest.mark.parametrize("start, T, C", [(0, 16, 16), (0, 64, 128), (5, 7, 6), (0, 9, 7), (1000, 3, 10), (0, 1, 1)])
def test_table_equals_the_papers_formula(start, T, C):
    want = np.array(paper_table(start, T, C))
    got = sinusoidal_positions(start, T, C, np.float64)
    assert got.shape == (T, C) and got.dtype == np.float64
    # angle = pos / 10000^(2i/C): the vectorised power and division may round differently from math.pow by
    # an ulp of the angle (~ pos * 2^-52), and sin/cos pass that on; 1e-12 is far above it, far below a bug.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    got32 = sinusoidal_positions(start, T, C, np.float32)
    assert got32.dtype == np.float32 and np.array_equal(got32, got.astype(np.float32))   # rounded once


def test_twin_table_equals_the_papers_formula():
    """The oracle's table (torch, written independently of reference/) is the paper's formula too."""
    for T, C in ((12, 16), (9, 7)):
        np.testing.assert_allclose(twins.sinusoidal(T, C).numpy(), np.array(paper_table(0, T, C)), rtol=0, atol=1e-12)


def test_a_swapped_or_shifted_table_is_caught():
    """The formula check has power: sin/cos swapped, or the exponent using i instead of 2i, fails it."""
    want = np.array(paper_table(0, 8, 8))
    pos, j = np.arange(8.0)[:, None], np.arange(8)
    swapped = np.where(j % 2 == 0, np.cos(pos / 10000.0 ** ((j - j % 2) / 8)), np.sin(pos / 10000.0 ** ((j - j % 2) / 8)))
    half = np.where(j % 2 == 0, np.sin(pos / 10000.0 ** ((j // 2) / 8)), np.cos(pos / 10000.0 ** ((j // 2) / 8)))
    for wrong in (swapped, half):
        assert np.abs(wrong - want).max() > 1e-3


def test_model_adds_the_table_and_has_no_position_parameters():
    """A sinusoidal model computes what a learned-position model computes when its wpe holds the paper's
    table: the table is added to the token embeddings, and it is not a parameter."""
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, pos="sinusoidal")
    model, learned = GPT(config), GPT(config.replace(pos="learned"))
    assert not any("wpe" in name for name in model.state_dict())
    assert len(model.parameters()) == len(learned.parameters()) - 1
    learned.load_state_dict({**model.state_dict(), "transformer.wpe.weight": np.array(paper_table(0, 8, 8))})
    idx = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    np.testing.assert_allclose(model.forward(idx)[0], learned.forward(idx)[0], rtol=1e-12, atol=1e-14)


def test_gradient_passes_through_to_the_token_embeddings():
    """No parameters: wte's gradient is the lookup's scatter of dx, the same as with no positions at all
    (checked by finite differences against the loss, which sees the table)."""
    config = GPTConfig(vocab_size=7, block_size=6, n_layer=1, n_head=2, n_embd=8, pos="sinusoidal")
    model = GPT(config, seed=3)
    idx, targets = np.array([[1, 2, 3, 2]]), np.array([[2, 3, 4, 0]])
    model.zero_grad()
    model.loss_and_backward(idx, targets)
    w = model.transformer.wte.weight
    eps = 1e-6
    for r, c in ((2, 0), (3, 5), (6, 1)):
        old = w.data[r, c]
        w.data[r, c] = old + eps
        up = float(model.loss(idx, targets)[0])
        w.data[r, c] = old - eps
        down = float(model.loss(idx, targets)[0])
        w.data[r, c] = old
        assert abs((up - down) / (2 * eps) - w.grad[r, c]) <= 1e-8


def test_cached_positions_continue_from_the_cache_length():
    config = GPTConfig(vocab_size=11, block_size=10, n_layer=2, n_head=2, n_embd=8, pos="sinusoidal")
    model = GPT(config, seed=1)
    idx = np.random.default_rng(0).integers(0, 11, (2, 10))
    full, _ = model.forward(idx)
    cache = KVCache(config, batch=2)
    parts = [model.forward(idx[:, :4], kv_cache=cache)[0]] + [model.forward(idx[:, t:t + 1], kv_cache=cache)[0]
                                                              for t in range(4, 10)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-12, atol=1e-13)


def test_hugging_face_export_refuses_sinusoidal_positions():
    """Neither GPT-2 nor Llama in transformers has fixed sinusoidal positions: export says so."""
    from reference.programs.hf import HFError
    from reference.programs.hf_export import hf_config
    with pytest.raises(HFError, match="cannot export pos='sinusoidal'.*no supported architecture has sinusoidal"):
        hf_config(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, pos="sinusoidal"))
