"""Incremental decoding with the KV cache gives the logits of recomputing the whole sequence, for every
kind of positions and of key/value heads."""

import numpy as np
import pytest

from reference import GPT, GPTConfig, KVCache
from reference.fast import attention
from reference.fast import use_kernels


@pytest.mark.parametrize("kernels,tile", [("textbook", None), ("fast", attention.QUERY_TILE), ("fast", 2)])
@pytest.mark.parametrize("pos", ["learned", "rope", "alibi", "sinusoidal"])
@pytest.mark.parametrize("kv", [4, 2, 1])
def test_cached_decoding_equals_recompute(pos, kv, kernels, tile, monkeypatch):
    """A prompt of 5, a chunk of 3, then one token at a time, on both paths. With the fast path's query
    tiles of 2 rows (fast.attention.QUERY_TILE) the prompt and the chunk span several tiles, the chunk
    after cached keys."""
    if tile is not None:
        monkeypatch.setattr(attention, "QUERY_TILE", tile)
    config = GPTConfig(vocab_size=17, block_size=12, n_layer=2, n_head=4, n_kv_head=kv, n_embd=16, pos=pos)
    model = use_kernels(GPT(config, seed=1), kernels)
    idx = np.random.default_rng(2).integers(0, 17, (2, 12))
    full, _ = model.forward(idx)
    cache = KVCache(config, batch=2)
    steps = [model.forward(idx[:, :5], kv_cache=cache)[0], model.forward(idx[:, 5:8], kv_cache=cache)[0]]
    steps += [model.forward(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(8, 12)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-12, atol=1e-13)
    assert cache.length == 12


@pytest.mark.parametrize("kernels", ["fast", "textbook"])
def test_cache_overflow_and_backward_are_refused(kernels):
    config = GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=8)
    model = use_kernels(GPT(config), kernels)
    cache = KVCache(config, batch=1)
    logits, c = model.forward(np.zeros((1, 3), dtype=int), kv_cache=cache)
    with pytest.raises(ValueError, match="length 5 is longer than the context"):
        model.forward(np.zeros((1, 2), dtype=int), kv_cache=cache)
    with pytest.raises(ValueError, match="KV cache overflow: 5 positions, capacity 4"):
        cache.layers[0].append(np.zeros((1, 2, 1, 2, 4)), np.zeros((1, 2, 1, 2, 4)))
    attn = model.transformer.h[0].attn
    layer_cache = KVCache(config, batch=1).layers[0]
    attn.forward(np.zeros((1, 2, 8)), kv_cache=layer_cache)
    out, attn_cache = attn.forward(np.ones((1, 1, 8)), kv_cache=layer_cache)   # attends to 3 keys
    with pytest.raises(RuntimeError, match="backward through a KV-cached forward"):
        attn.backward(np.ones_like(out), attn_cache)


def test_cache_holds_what_generation_needs():
    """KVCache(config, batch, max_len) has room for max_len positions (at most block_size), and generate
    sizes its caches to the prompt plus the new tokens: a model with an enormous context (RoPE, where
    nothing else is sized by it, e.g. from a checkpoint header) samples in small memory."""
    from reference.programs.sampling.generation import generate
    config = GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=8)
    assert KVCache(config, 1, max_len=3).layers[0].k.shape[-2] == 3
    assert KVCache(config, 1, max_len=100).layers[0].k.shape[-2] == 8
    model, cache = GPT(config), KVCache(config, 1, max_len=3)
    model.forward(np.zeros((1, 3), dtype=int), kv_cache=cache)
    with pytest.raises(ValueError, match="KV cache overflow: 4 positions, capacity 3"):
        model.forward(np.zeros((1, 1), dtype=int), kv_cache=cache)
    huge = GPT(GPTConfig(vocab_size=5, block_size=10**12, n_layer=1, n_head=2, n_embd=8, pos="rope"))
    out = generate(huge, np.zeros(2, dtype=int), 3, greedy=True)
    np.testing.assert_array_equal(out, generate(huge, np.zeros(2, dtype=int), 3, greedy=True, use_cache=False))
    assert out.shape == (5,) and huge.transformer.h[0].attn.rotary.cos.shape[0] <= 8
