"""The whole model: names and shapes equal the twin's, tied weights, clear errors on bad input, the grid of
variants (norm, MLP, positions, key/value heads, biases, tying) against the twin, and RoPE's and ALiBi's
defining properties."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from oracle import compare
from oracle.bridge import twins
from oracle.bridge.cases import GPTWithLoss
from oracle.bridge.registry import perturb
from reference import GPT, GPTConfig
from reference.model import parameter_count, parameter_shapes
from reference.positions import Rotary, alibi_slopes

SMALL = dict(vocab_size=13, block_size=8, n_layer=2, n_head=4, n_embd=16)


@st.composite
def configs(draw) -> GPTConfig:
    kv = draw(st.sampled_from([1, 2, 4]))
    return GPTConfig(**SMALL, n_kv_head=kv, norm=draw(st.sampled_from(["layernorm", "rmsnorm"])),
                     mlp=draw(st.sampled_from(["gelu", "swiglu"])), pos=draw(st.sampled_from(["learned", "rope", "alibi", "sinusoidal"])),
                     bias=draw(st.booleans()), tie_weights=draw(st.booleans()),
                     gelu_approximate=draw(st.sampled_from(["none", "tanh"])),
                     dropout=draw(st.sampled_from([0.0, 0.2])), dtype=draw(st.sampled_from(["float64", "float32"])))


@given(config=configs(), seed=st.integers(0, 2**16), T=st.integers(1, 8))
def test_model_variants_against_twin(config, seed, T):
    """Logits' loss and every parameter gradient of any variant agree with the twin."""
    rng = np.random.default_rng(seed)
    ref = GPTWithLoss(config)
    perturb(ref, rng)
    twin = twins.GPTLoss(config.replace(dtype="float64"))
    inputs = (rng.integers(0, config.vocab_size, (2, T)), rng.integers(0, config.vocab_size, (2, T)))
    report = compare(ref, twin, inputs, case=str(config), seed=seed, dropout=config.dropout > 0)
    assert report.passed, str(report)


@pytest.mark.parametrize("config", [GPTConfig(**SMALL), GPTConfig(**SMALL, tie_weights=False, bias=False),
                                    GPTConfig(**SMALL, norm="rmsnorm", mlp="swiglu", pos="rope", n_kv_head=2),
                                    GPTConfig(**SMALL, pos="alibi", n_kv_head=1), GPTConfig(**SMALL, pos="sinusoidal")])
def test_state_dict_matches_twin(config):
    ours = {k: v.shape for k, v in GPT(config).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in twins.twin_of(config).state_dict().items()}
    assert ours == theirs
    assert ("lm_head.weight" in ours) and ("transformer.wte.weight" in ours)


VARIANTS = [dict(norm=norm, mlp=mlp, pos=pos, bias=bias, tie_weights=tie)
            for norm in ("layernorm", "rmsnorm") for mlp in ("gelu", "swiglu")
            for pos in ("learned", "rope", "alibi", "sinusoidal") for bias in (True, False) for tie in (True, False)]


@pytest.mark.parametrize("i, variant", list(enumerate(VARIANTS)))
def test_parameter_shapes_are_the_built_models(i, variant):
    """parameter_shapes(config), computed from the config alone, is exactly GPT(config)'s named_parameters():
    the same names, in the same order, with the same shapes (a tied head once), every parameter in the
    config's dtype; parameter_count is its length. Every variant: norm, MLP, positions, bias, tying, with
    one, some or all key/value heads (GQA) and the default or another MLP width."""
    config = GPTConfig(**SMALL, **variant, n_kv_head=(None, 1, 2)[i % 3], mlp_hidden=(None, 24)[i % 2],
                       dtype=("float32", "float64")[i % 2])
    model = GPT(config)
    assert list(parameter_shapes(config).items()) == [(n, p.data.shape) for n, p in model.named_parameters()]
    assert all(p.data.dtype == np.dtype(config.dtype) for p in model.parameters())
    assert parameter_count(config) == len(parameter_shapes(config)) == len(list(model.named_parameters()))


def test_nanogpt_names():
    names = set(GPT(GPTConfig(**SMALL)).state_dict())
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight",
            "transformer.h.1.mlp.c_proj.bias", "transformer.ln_f.weight", "lm_head.weight"} <= names


def test_tied_weights_gradients_add():
    """With a tied head, wte's gradient is the embedding's plus the head's: the sum of the untied pair's."""
    idx = np.random.default_rng(1).integers(0, 13, (2, 8))
    tied, untied = GPT(GPTConfig(**SMALL)), GPT(GPTConfig(**SMALL, tie_weights=False))
    untied.load_state_dict({**tied.state_dict()})              # identical weights, head a separate copy
    assert tied.lm_head.weight is tied.transformer.wte.weight
    for m in (tied, untied):
        m.loss_and_backward(idx, idx)
    expected = untied.transformer.wte.weight.grad + untied.lm_head.weight.grad
    np.testing.assert_allclose(tied.transformer.wte.weight.grad, expected, rtol=1e-12, atol=1e-15)
    assert len(tied.parameters()) == len(untied.parameters()) - 1


def test_weights_are_those_of_gpt2_init():
    m = GPT(GPTConfig(**SMALL))
    assert abs(m.transformer.wte.weight.data.std() - 0.02) < 0.005
    proj = m.transformer.h[0].attn.c_proj.weight.data
    assert abs(proj.std() - 0.02 / math.sqrt(2 * 2)) < 0.004
    assert np.all(m.transformer.h[0].ln_1.weight.data == 1) and np.all(m.transformer.h[0].attn.c_attn.bias.data == 0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_is_kept(dtype):
    m = GPT(GPTConfig(**SMALL, dtype=dtype, dropout=0.1, mlp="swiglu", norm="rmsnorm", pos="rope"))
    from reference.layers import DropoutMasks
    idx = np.random.default_rng(0).integers(0, 13, (2, 8))
    loss, logits, _ = m.loss(idx, idx, DropoutMasks(np.random.default_rng(0)))
    m.loss_and_backward(idx, idx, DropoutMasks(np.random.default_rng(0)))
    assert logits.dtype == dtype and np.asarray(loss).dtype == dtype
    assert all(p.data.dtype == dtype and p.grad.dtype == dtype for p in m.parameters())


@pytest.mark.parametrize("bad, error, words", [
    (np.zeros((2, 3)), TypeError, "token ids must be integers, got dtype float64"),
    (np.zeros(3, dtype=int), ValueError, "must have shape (batch, time), got shape (3,)"),
    (np.zeros((1, 9), dtype=int), ValueError, "length 9 is longer than the context (block_size 8)"),
    (np.full((1, 2), 13), ValueError, "token id 13 is out of range for vocab_size 13 (expected 0 <= id < 13)"),
    (np.full((1, 2), -1), ValueError, "token id -1 is out of range"),
])
def test_bad_input_errors(bad, error, words):
    with pytest.raises(error) as e:
        GPT(GPTConfig(**SMALL)).forward(bad)
    assert words in str(e.value)


@pytest.mark.parametrize("changes, words", [
    (dict(n_embd=18), "n_embd (18) must be divisible by n_head (4)"),
    (dict(n_kv_head=3), "n_head (4) must be a multiple of n_kv_head (3)"),
    (dict(norm="batchnorm"), "norm must be one of ('layernorm', 'rmsnorm'), got 'batchnorm'"),
    (dict(vocab_size=0), "vocab_size must be a positive integer, got 0"),
    (dict(dropout=1.0), "dropout must be in [0, 1), got 1.0"),
    (dict(norm_eps=0.0), "norm_eps must be positive"),
    (dict(pos="rope", n_embd=12, n_head=4), "RoPE needs an even head dimension, got n_embd/n_head = 3"),
    (dict(dtype="float16"), "dtype must be one of"),
    # every field's type and range (a config may come from a checkpoint header: any JSON)
    (dict(n_layer=True), "n_layer must be a positive integer, got True"),
    (dict(block_size=8.0), "block_size must be a positive integer, got 8.0"),
    (dict(n_kv_head=0), "n_kv_head must be None or a positive integer, got 0"),
    (dict(n_kv_head=2.0), "n_kv_head must be None or a positive integer, got 2.0"),
    (dict(n_kv_head="2"), "n_kv_head must be None or a positive integer, got '2'"),
    (dict(mlp_hidden="8"), "mlp_hidden must be None or a positive integer, got '8'"),
    (dict(mlp_hidden=-1), "mlp_hidden must be None or a positive integer, got -1"),
    (dict(mlp_hidden=True), "mlp_hidden must be None or a positive integer, got True"),
    (dict(rope_base="x"), "rope_base must be a positive finite number, got 'x'"),
    (dict(rope_base=0), "rope_base must be a positive finite number, got 0"),
    (dict(rope_base=float("inf")), "rope_base must be a positive finite number, got inf"),
    (dict(rope_base=10**400), "rope_base must be a positive finite number, got 1000"),     # beyond a float
    (dict(rope_base=True), "rope_base must be a positive finite number, got True"),
    (dict(dropout="0.1"), "dropout must be a number in [0, 1), got '0.1' (str)"),
    (dict(dropout=False), "dropout must be a number in [0, 1), got False (bool)"),
    (dict(dropout=float("nan")), "dropout must be in [0, 1), got nan"),
    (dict(norm_eps="1e-5"), "norm_eps must be positive (a finite number > 0), got '1e-5'"),
    (dict(norm_eps=True), "norm_eps must be positive (a finite number > 0), got True"),
    (dict(norm_eps=float("nan")), "norm_eps must be positive (a finite number > 0), got nan"),
    (dict(bias="yes"), "bias must be a boolean (true or false), got 'yes'"),
    (dict(bias=1), "bias must be a boolean (true or false), got 1"),
    (dict(tie_weights=None), "tie_weights must be a boolean (true or false), got None"),
    (dict(norm=["layernorm"]), "norm must be one of ('layernorm', 'rmsnorm'), got ['layernorm']"),
])
def test_bad_config_errors(changes, words):
    with pytest.raises(ValueError) as e:
        GPTConfig(**{**SMALL, **changes})
    assert words in str(e.value)


def test_config_round_trip_and_hidden_sizes():
    c = GPTConfig(**SMALL, mlp="swiglu")
    assert GPTConfig.from_dict(c.to_dict()) == c
    assert c.hidden == 48 and GPTConfig(**SMALL).hidden == 64 and c.replace(mlp_hidden=10).hidden == 10
    with pytest.raises(ValueError, match="unknown GPTConfig fields"):
        GPTConfig.from_dict({**c.to_dict(), "n_laeyr": 3})


def test_load_state_dict_errors():
    m = GPT(GPTConfig(**SMALL))
    sd = m.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['lm_head.weight'\]"):
        m.load_state_dict({k: v for k, v in sd.items() if k != "lm_head.weight"})
    with pytest.raises(ValueError, match="shape mismatch for transformer.wpe.weight: expected"):
        m.load_state_dict({**sd, "transformer.wpe.weight": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="dtype mismatch for transformer.wpe.weight"):
        m.load_state_dict({**sd, "transformer.wpe.weight": sd["transformer.wpe.weight"].astype(np.float32)})


@given(i=st.integers(0, 40), j=st.integers(0, 40), shift=st.integers(0, 20), seed=st.integers(0, 100))
def test_rope_relative_positions(i, j, shift, seed):
    """<R(i) q, R(j) k> depends on i - j only: shifting both positions leaves the score unchanged."""
    rot = Rotary(8, 64, 10000.0, np.float64)
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((1, 8)), rng.standard_normal((1, 8))
    score = (rot.apply(q, i) * rot.apply(k, j)).sum()
    shifted = (rot.apply(q, i + shift) * rot.apply(k, j + shift)).sum()
    assert abs(score - shifted) <= 1e-12 * max(1.0, abs(score))
    assert np.allclose(np.linalg.norm(rot.apply(q, i)), np.linalg.norm(q))      # a rotation keeps norms


def test_rope_attention_is_shift_invariant():
    """A whole attention layer: the same tokens at positions s..s+T-1 instead of 0..T-1 give the same
    output, since RoPE scores see only i - j (a learned-position model would not)."""
    m = GPT(GPTConfig(**{**SMALL, "block_size": 32}, pos="rope"))
    attn, x = m.transformer.h[0].attn, np.random.default_rng(0).standard_normal((2, 6, 16))
    base, _ = attn.forward(x)
    rot = attn.rotary
    for s in (1, 7, 20):
        shifted = Rotary(4, 32 - s, 10000.0, np.float64)
        shifted.cos, shifted.sin = rot.tables(s, 32 - s)          # position t now turns by angle (t + s)
        attn.rotary = shifted
        out, _ = attn.forward(x)
        np.testing.assert_allclose(out, base, rtol=1e-12, atol=1e-14)
    attn.rotary = rot


def test_rope_tables_grow_only_as_far_as_used():
    """RoPE's tables are made up to the furthest position used (doubling), never sized by block_size
    alone: a model (or a checkpoint header) with an enormous context allocates nothing for them."""
    m = GPT(GPTConfig(**{**SMALL, "block_size": 10**12}, pos="rope"))
    rot = m.transformer.h[0].attn.rotary
    assert rot.cos.shape[0] == 0
    m.forward(np.zeros((1, 5), dtype=np.int64))
    assert rot.cos.shape == (5, 4)
    small = Rotary(4, 12, 10000.0, np.float64)
    full = Rotary(4, 12, 10000.0, np.float64).tables(0, 12)
    for start, t, rows in ((0, 3, 3), (3, 2, 6), (6, 6, 12)):  # doubling, capped at max_len
        cos, sin = small.tables(start, t)
        assert small.cos.shape[0] == rows and np.array_equal(cos, full[0][start:start + t])
        assert np.array_equal(sin, full[1][start:start + t])
    with pytest.raises(ValueError, match="position 12 is beyond the RoPE tables' 12 positions"):
        small.tables(10, 3)


def test_alibi_slopes_follow_the_paper():
    assert alibi_slopes(8) == [2.0 ** -(i + 1) for i in range(8)]
    assert alibi_slopes(1) == [2.0 ** -8]
    six = alibi_slopes(6)                                       # 4 of 2^(-8i/4), then every other of 8
    assert six[:4] == [2.0 ** (-2 * (i + 1)) for i in range(4)] and six[4:] == [2.0 ** -1, 2.0 ** -3]
