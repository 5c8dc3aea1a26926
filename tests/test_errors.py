"""Bad input gets a clear error that names the problem and the expected value."""

import numpy as np
import pytest

from reference.programs import cli
from reference.attention import CausalSelfAttention
from reference.positions import Rotary
from reference.layers import GELU, Dropout, DropoutMasks
from reference.loss import CrossEntropyLoss
from reference.model import GPT
from reference.config import GPTConfig
from reference.module import Parameter, as_dtype

RNG = np.random.default_rng(0)
# Token ids are checked once, at the model's boundary (GPT.forward, GPT.loss), not by the Embedding layer.
TINY = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4))


@pytest.mark.parametrize("call, error, words", [
    (lambda: TINY.forward(np.array([[0, 5]])), ValueError,
     "token id 5 is out of range for vocab_size 5 (expected 0 <= id < 5)"),
    (lambda: TINY.forward(np.array([[0.5]])), TypeError, "token ids must be integers, got dtype float64"),
    (lambda: TINY.loss(np.array([[0, 1]]), np.array([[-100, 5]])), ValueError,
     "target 5 is out of range for vocab_size 5 (expected 0 <= id < 5)"),
    (lambda: TINY.loss(np.array([[0, 1]]), np.array([[-1, 0]])), ValueError,
     "target -1 is out of range for vocab_size 5 (expected 0 <= id < 5)"),
    (lambda: GELU("fast"), ValueError, "approximate must be 'none' or 'tanh', got 'fast'"),
    (lambda: Dropout(1.0), ValueError, "dropout probability must be in [0, 1), got 1.0"),
    (lambda: Rotary(5, 8, 10000.0, np.float64), ValueError, "RoPE needs an even head dimension, got 5"),
    (lambda: CausalSelfAttention(10, 3, 3, bias=True, dropout=0.0, rng=RNG, dtype=np.float64, proj_std=0.02),
     ValueError, "n_embd (10) must be divisible by n_head (3)"),
    (lambda: CausalSelfAttention(12, 3, 2, bias=True, dropout=0.0, rng=RNG, dtype=np.float64, proj_std=0.02),
     ValueError, "n_head (3) must be a multiple of n_kv_head (2)"),
    (lambda: as_dtype("float16"), ValueError, "dtype must be float32 or float64, got float16"),
    (lambda: CrossEntropyLoss().forward(np.zeros((2, 3)), np.array([0, 3])), IndexError,
     "target 3 is out of range for 3 classes (expected 0 <= target < 3 or ignore_index -100)"),
    (lambda: CrossEntropyLoss().forward(np.zeros((2, 3)), np.array([0.0, 1.0])), TypeError, "targets must be integers"),
    (lambda: CrossEntropyLoss().forward(np.zeros((2, 3)), np.array([0, 1, 2])), ValueError,
     "targets shape (3,) does not match logits shape (2,)"),
])
def test_clear_errors(call, error, words):
    with pytest.raises(error) as e:
        call()
    assert words in str(e.value)


def test_dropout_masks_refuse_a_second_draw_for_one_layer():
    masks = DropoutMasks(np.random.default_rng(0), record=True)
    masks("a", (2,), 0.5, np.float64)
    with pytest.raises(ValueError, match="drew twice in one forward"):
        masks("a", (2,), 0.5, np.float64)


def test_ignore_index_matches_the_mean_over_the_rest():
    logits = np.random.default_rng(0).standard_normal((4, 5))
    loss_fn = CrossEntropyLoss()
    full, _ = loss_fn.forward(logits[:2], np.array([1, 2]))
    partial, cache = loss_fn.forward(logits, np.array([1, 2, -100, -100]))
    assert partial == pytest.approx(full, rel=1e-15)
    dz = loss_fn.backward(1.0, cache)
    assert not dz[2:].any()
    nothing, cache = loss_fn.forward(logits, np.full(4, -100))
    assert np.isnan(nothing) and not loss_fn.backward(1.0, cache).any()     # as torch: nan, no gradient


def test_parameter_repr_and_shape():
    p = Parameter(np.zeros((2, 3), np.float32))
    assert p.shape == (2, 3) and repr(p) == "Parameter(shape=(2, 3), dtype=float32)"


def test_cli_reports_missing_optional_dependency(monkeypatch, capsys):
    def missing(name):
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
    monkeypatch.setattr(cli.importlib, "import_module", missing)
    assert cli.main(["plot"]) == 2
    err = capsys.readouterr().err
    assert "needs matplotlib, which is not installed" in err and "pip install -e '.[train]'" in err

    def broken(name):
        raise ModuleNotFoundError("No module named 'nope'", name="nope")
    monkeypatch.setattr(cli.importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["plot"])


def test_cli_unknown_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["frobnicate"])


def test_cross_entropy_cache_serves_one_backward():
    loss_fn = CrossEntropyLoss()
    _, cache = loss_fn.forward(np.zeros((2, 3)), np.array([0, 1]))
    loss_fn.backward(1.0, cache)
    with pytest.raises(RuntimeError, match="already used by a backward"):
        loss_fn.backward(1.0, cache)
