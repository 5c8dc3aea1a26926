"""Tests that kill the mutants the rest of the suite let survive (docs/mutation.md lists every one).

Each test names, in its docstring, the function whose mutants it kills (docs/mutation.md lists them).
They are ordinary fast, seeded tests of the reference's numbers and errors: mutmut is not needed to run them.
"""

import warnings

import numpy as np
import pytest
import torch

from oracle import REGISTRY, Dims, compare, rel_error
from oracle.bridge import twins
from oracle.bridge.cases import GPTWithLoss
from oracle.bridge.registry import perturb
from oracle.core import tolerance as policy
from reference import GPT, GPTConfig
from reference import functional as textbook
from reference.fast import pool
from reference.fast.functional import erf, gelu_and_grad, softmax, softmax_backward
from reference.fast import KERNELS, use_kernels
from reference.attention import CausalSelfAttention
from reference.layers import GELU, Dropout, DropoutMasks, LayerNorm, Linear, RMSNorm
from reference.loss import CrossEntropyLoss
from reference.model import KVCache
from reference.module import Module, Parameter, as_dtype
from reference.optim import SGD, Adam, AdamW, clip_grad_norm_

# ------------------------------------------------------------------------- module


def test_as_dtype_refuses_other_names():
    """A dtype name outside float32/float64 is refused, not read as numpy's default (float64).
    Kills reference.module.x_as_dtype__mutmut_6, _7, _8 (DTYPES.get without its fallback)."""
    for name in ("float16", "int8", "bfloat16x"):
        with pytest.raises((ValueError, TypeError)):
            as_dtype(name)
    assert as_dtype("float32") == np.float32 and as_dtype(np.float64) == np.float64


class _Holder(Module):
    def __init__(self, *params):
        for i, p in enumerate(params):
            setattr(self, f"p{i}", p)


def test_named_parameters_skips_a_tied_parameter_and_goes_on():
    """A parameter seen before is skipped and the listing continues with the next one.
    Kills reference.module.xǁModuleǁnamed_parameters__mutmut_7 (continue -> break)."""
    shared, other = Parameter(np.zeros(2)), Parameter(np.ones(3))
    root = _Holder(_Holder(shared), _Holder(shared, other))
    assert [n for n, _ in root.named_parameters()] == ["p0.p0", "p1.p1"]
    assert list(root.state_dict()) == ["p0.p0", "p1.p0", "p1.p1"]


# ------------------------------------------------------------------------- optimizer


OPTIMIZERS = {"Adam": Adam, "AdamW": AdamW, "SGD": SGD}


def _params(rng, shapes=((3, 2), (4,))):
    return [Parameter(rng.standard_normal(s)) for s in shapes]


@pytest.mark.parametrize("kind", ["Adam", "AdamW"])
def test_optimizer_defaults_are_torchs(kind):
    """Every default hyperparameter equals torch.optim's, and AdamW passes each one on.
    Kills reference.optim.xǁAdamǁ__init____mutmut_1, _2, _3 and xǁAdamWǁ__init____mutmut_1, _12."""
    ours = OPTIMIZERS[kind](_params(np.random.default_rng(0)))
    theirs = getattr(torch.optim, kind)([torch.nn.Parameter(torch.zeros(2))]).defaults
    group = ours.param_groups[0]
    for key in ("lr", "betas", "eps", "weight_decay"):
        assert group[key] == theirs[key], key
    assert set(group) == {"params", "lr", "betas", "eps", "weight_decay"}
    custom = OPTIMIZERS[kind](
        _params(np.random.default_rng(0)), lr=0.5, betas=(0.5, 0.6), eps=0.25, weight_decay=0.125)
    assert {k: v for k, v in custom.param_groups[0].items() if k != "params"} == \
        {"lr": 0.5, "betas": (0.5, 0.6), "eps": 0.25, "weight_decay": 0.125}


@pytest.mark.parametrize("hp, valid", [
    (dict(lr=0.0, eps=0.0, weight_decay=0.0, betas=(0.0, 0.0)), True),     # torch accepts the bounds
    (dict(weight_decay=-1.0), False),
    (dict(eps=-1.0), False),
    (dict(lr=-1.0), False),
    (dict(betas=(1.0, 0.9)), False),
    (dict(betas=(0.9, 1.0)), False),
    (dict(betas=(-0.1, 0.9)), False),
    (dict(betas=(0.9, -0.1)), False),
    (dict(betas=(1.5, 0.9)), False),
    (dict(betas=(0.9, 1.5)), False),
])
def test_optimizer_hyperparameter_bounds_are_torchs(hp, valid):
    """The accepted ranges are torch's: 0 <= lr, eps, weight_decay and 0 <= beta < 1, bounds included.
    Kills reference.optim.xǁAdamǁ__init____mutmut_4, _5, _7, _9, _14, _16 to _19, _21, _23, _24."""
    ps = _params(np.random.default_rng(0))
    try:
        torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], **hp)
        torch_valid = True
    except ValueError:
        torch_valid = False
    assert torch_valid == valid
    if valid:
        Adam(ps, **hp)
    else:
        with pytest.raises(ValueError, match="invalid hyperparameters"):
            Adam(ps, **hp)


def test_sgd_defaults_and_zero_lr_are_torchs():
    """SGD's default hyperparameters are torch.optim.SGD's, and lr = 0, the bound, is accepted as torch
    accepts it. Kills reference.optim.xǁSGDǁ__init____mutmut_1 (lr default 1e-3 -> 1.001) and
    xǁSGDǁ_check_group__mutmut_14 (lr >= 0 -> lr > 0)."""
    ours = SGD(_params(np.random.default_rng(0))).param_groups[0]
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))]).defaults
    for key in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"):
        assert ours[key] == theirs[key], key
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.0, momentum=0.0, weight_decay=0.0)
    ps = _params(np.random.default_rng(0))
    before = [p.data.copy() for p in ps]
    opt = SGD(ps, lr=0.0, momentum=0.0, weight_decay=0.0)
    for p in ps:
        p.grad[...] = 1.0
    opt.step()
    assert all((p.data == b).all() for p, b in zip(ps, before))


def test_optimizer_group_params_may_be_any_iterable():
    """A group's params given as a generator are listed once and updated.
    Kills reference.optim.xǁAdamǁ__init____mutmut_44, _45 (the group's "params" key)."""
    ps = _params(np.random.default_rng(1))
    before = [p.data.copy() for p in ps]
    opt = AdamW([{"params": (p for p in ps)}], lr=0.1)
    for p in ps:
        p.grad[...] = 1.0
    opt.step()
    assert all((p.data != b).all() for p, b in zip(ps, before))
    assert set(opt.param_groups[0]) == {"params", "lr", "betas", "eps", "weight_decay"}


@pytest.mark.parametrize("kind", ["Adam", "AdamW", "SGD"])
def test_weight_decay_of_one_matches_torch(kind):
    """weight_decay = 1 is applied like any other value.
    Kills reference.optim.xǁAdamǁ_update__mutmut_21 (wd != 0 -> wd != 1), and, in the run after SGD,
    reference.optim.xǁSGDǁstep__mutmut_19 (the same mutant in SGD.step)."""
    rng = np.random.default_rng(2)
    ps = _params(rng)
    tps = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in ps]
    ours = OPTIMIZERS[kind](ps, lr=0.05, weight_decay=1.0)
    theirs = getattr(torch.optim, kind)(tps, lr=0.05, weight_decay=1.0)
    for _ in range(3):
        for p, tp in zip(ps, tps):
            g = rng.standard_normal(p.shape)
            p.grad[...], tp.grad = g, torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
    for p, tp in zip(ps, tps):
        assert rel_error(p.data, tp.detach().numpy())[0] <= policy.FLOAT64_TOL


def test_optimizer_state_dict_numbers_groups_like_torch_and_resumes_exactly():
    """Three groups are numbered 0.. across groups as torch numbers them; a loaded state (betas given as
    a list, as a JSON round trip gives them) resumes bit for bit.
    Kills reference.optim.xǁAdamǁstate_dict__mutmut_10, _20, _23, _24 and
    xǁAdamǁload_state_dict__mutmut_13, _17, _18, _45, _46."""
    rng = np.random.default_rng(3)
    ps = _params(rng, ((2,), (3,), (2, 2), (1,)))
    tps = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in ps]
    layout = lambda q: [{"params": [q[0]]}, {"params": [q[1], q[2]], "weight_decay": 0.5}, {"params": [q[3]]}]
    opt, topt = AdamW(layout(ps), lr=0.1), torch.optim.AdamW(layout(tps), lr=0.1)
    for _ in range(2):
        for p, tp in zip(ps, tps):
            p.grad[...] = rng.standard_normal(p.shape)
            tp.grad = torch.from_numpy(p.grad.copy())
        opt.step()
        topt.step()
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [g["params"] for g in tsd["param_groups"]] == [[0], [1, 2], [3]]
    assert sorted(sd["state"]) == sorted(tsd["state"])
    for i, st in sd["state"].items():
        assert rel_error(st["exp_avg_sq"], tsd["state"][i]["exp_avg_sq"].numpy())[0] <= policy.FLOAT64_TOL

    copies = [Parameter(p.data.copy()) for p in ps]
    resumed = AdamW(layout(copies), lr=0.7, betas=(0.1, 0.2))
    saved = {"state": sd["state"], "param_groups": [{**g, "betas": list(g["betas"])} for g in sd["param_groups"]]}
    resumed.load_state_dict(saved)
    assert all(isinstance(g["betas"], tuple) and g["betas"] == (0.9, 0.999) for g in resumed.param_groups)
    for _ in range(2):
        for p, c in zip(ps, copies):
            p.grad[...] = c.grad[...] = rng.standard_normal(p.shape)
        opt.step()
        resumed.step()
    for p, c in zip(ps, copies):
        np.testing.assert_array_equal(p.data, c.data)


def test_clip_grad_norm_leaves_gradients_under_the_limit_alone():
    """A norm below max_norm (coefficient between 1 and 2) leaves every gradient as it is, as torch.
    Kills reference.optim.x_clip_grad_norm___mutmut_17 (coef >= 1 -> coef >= 2)."""
    rng = np.random.default_rng(4)
    ps = _params(rng)
    for p in ps:
        p.grad[...] = rng.standard_normal(p.shape)
    before = [p.grad.copy() for p in ps]
    norm = clip_grad_norm_(ps, 0.0)                            # measures; clips everything to 0
    for p, b in zip(ps, before):
        p.grad[...] = b
    assert clip_grad_norm_(ps, 1.5 * norm) == norm
    for p, b in zip(ps, before):
        np.testing.assert_array_equal(p.grad, b)


# ------------------------------------------------------------------------- loss


def test_cross_entropy_default_ignore_index_is_torchs():
    """Without an explicit ignore_index, -100 targets are ignored, as F.cross_entropy does.
    Kills reference.loss.xǁCrossEntropyLossǁ__init____mutmut_1."""
    rng = np.random.default_rng(5)
    logits, targets = rng.standard_normal((3, 4)), np.array([1, -100, 2])
    loss, cache = CrossEntropyLoss().forward(logits, targets)
    dz = CrossEntropyLoss().backward(1.0, cache)
    tl = torch.from_numpy(logits).requires_grad_()
    tloss = torch.nn.functional.cross_entropy(tl, torch.from_numpy(targets))
    tloss.backward()
    assert rel_error(loss, tloss.item())[0] <= policy.FLOAT64_TOL
    assert rel_error(dz, tl.grad.numpy())[0] <= policy.FLOAT64_TOL


@pytest.mark.parametrize("bad", [-1, -5, 4])
def test_cross_entropy_refuses_targets_out_of_range(bad):
    """A negative target other than ignore_index, or one equal to the class count, is refused with the
    reference's own message (numpy's fancy indexing would wrap a negative one silently).
    Kills reference.loss.xǁCrossEntropyLossǁforward__mutmut_28, _31."""
    with pytest.raises(IndexError, match=f"target {bad} is out of range for 4 classes"):
        CrossEntropyLoss().forward(np.zeros((2, 4)), np.array([0, bad]))


def test_cross_entropy_with_nothing_to_average_is_nan_without_a_warning():
    """All targets ignored: the loss is nan, as torch, and no division by zero is attempted.
    Kills reference.loss.xǁCrossEntropyLossǁforward__mutmut_61, _66."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dtype in (np.float32, np.float64):
            loss, _ = CrossEntropyLoss().forward(np.zeros((2, 3), dtype), np.full(2, -100))
            assert np.isnan(loss) and loss.dtype == dtype


def test_cross_entropy_single_target_gradient():
    """One valid target: the mean divides by 1.
    Kills reference.loss.xǁCrossEntropyLossǁbackward__mutmut_20 (max(n, 1) -> max(n, 2))."""
    logits = np.random.default_rng(6).standard_normal((1, 5))
    _, cache = CrossEntropyLoss().forward(logits, np.array([3]))
    dz = CrossEntropyLoss().backward(1.0, cache)
    tl = torch.from_numpy(logits).requires_grad_()
    torch.nn.functional.cross_entropy(tl, torch.tensor([3])).backward()
    assert rel_error(dz, tl.grad.numpy())[0] <= policy.FLOAT64_TOL


# ------------------------------------------------------------------------- model

SMALL = dict(vocab_size=13, block_size=8, n_layer=2, n_head=4, n_embd=16)


def test_gpt_default_seed_is_zero_and_seeds_reproduce():
    """GPT(config) is GPT(config, seed=0), and one seed gives one model.
    Kills reference.model.xǁGPTǁ__init____mutmut_1, _6."""
    config = GPTConfig(**SMALL)
    a, b, c = GPT(config), GPT(config, seed=0), GPT(config, seed=1)
    for name, value in a.state_dict().items():
        np.testing.assert_array_equal(value, b.state_dict()[name])
    assert any((value != c.state_dict()[name]).any() for name, value in a.state_dict().items())


@pytest.mark.parametrize("pos", ["learned", "rope", "alibi"])
def test_float32_model_keeps_float32_tables_and_cache(pos):
    """A float32 model's RoPE tables and KV cache are float32 (rope.md: tables stored in the model's
    dtype), and cached decoding returns float32 logits.
    Kills reference.model.xǁGPTǁ__init____mutmut_13 and xǁKVCacheǁ__init____mutmut_1, _2, _16."""
    config = GPTConfig(**SMALL, pos=pos, dtype="float32")
    model = GPT(config)
    cache = KVCache(config, batch=1)
    logits, _ = model.forward(np.array([[1, 2, 3]]), kv_cache=cache)
    logits2, _ = model.forward(np.array([[4]]), kv_cache=cache)
    assert logits.dtype == logits2.dtype == np.float32
    assert all(layer.k.dtype == layer.v.dtype == np.float32 for layer in cache.layers)
    rotary = model.transformer.h[0].attn.rotary
    if pos == "rope":
        assert rotary.cos.dtype == rotary.sin.dtype == np.float32


def test_check_input_accepts_a_full_context_and_names_the_bad_id():
    """A sequence of exactly block_size tokens is accepted; an empty batch or sequence is refused; an
    out-of-range id is named even after a 0.
    Kills reference.model.xǁGPTǁcheck_input__mutmut_1, _11, _12, _29, _30, _32."""
    model = GPT(GPTConfig(**SMALL))
    model.check_input(np.zeros((1, 8), dtype=np.int64))
    for shape in ((0, 3), (2, 0)):
        with pytest.raises(ValueError, match="are empty"):
            model.check_input(np.zeros(shape, dtype=np.int64))
    for ids, bad in (([[0, 1, 13]], 13), ([[0, 0, -2, 5]], -2)):
        with pytest.raises(ValueError, match=f"token id {bad} is out of range"):
            model.check_input(np.array(ids))


def test_loss_and_backward_apply_the_masks_and_a_unit_seed_gradient():
    """loss() and loss_and_backward() pass the dropout masks on, and backpropagate d loss = 1: the same
    loss and gradients as forward, criterion and backward called one by one.
    Kills reference.model.xǁGPTǁloss__mutmut_6, _8 and xǁGPTǁloss_and_backward__mutmut_4, _7, _12, _16."""
    config = GPTConfig(**SMALL, dropout=0.3)
    rng = np.random.default_rng(7)
    idx, targets = rng.integers(0, 13, (2, 6)), rng.integers(0, 13, (2, 6))
    by_hand, model = GPT(config), GPT(config)
    logits, cache = by_hand.forward(idx, DropoutMasks(np.random.default_rng(1)))
    expected, c_loss = by_hand.criterion.forward(logits, targets)
    by_hand.backward(by_hand.criterion.backward(1.0, c_loss), cache)
    loss, _, _ = model.loss(idx, targets, DropoutMasks(np.random.default_rng(1)))
    assert loss == expected
    assert model.loss_and_backward(idx, targets, DropoutMasks(np.random.default_rng(1))) == expected
    for (name, p), q in zip(model.named_parameters(), by_hand.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)


# ------------------------------------------------------------------------- layers


def test_dropout_masks_are_the_documented_draw():
    """keep = Generator.random(shape, dtype=float32) >= p (a draw equal to p keeps its unit), scaled by
    1 / (1 - p); nothing is recorded unless asked. The twin replays our masks, so only this pins them.
    Kills reference.layers.xǁDropoutMasksǁ__init____mutmut_1 and xǁDropoutMasksǁ__call____mutmut_3, _5,
    _6, _8, _10 to _13."""
    shape = (3, 50)
    u = np.random.default_rng(9).random(shape, dtype=np.float32)
    p = float(u[0, 0])                                         # one unit's draw equals p exactly
    for dtype in (np.float32, np.float64):
        masks = DropoutMasks(np.random.default_rng(9))
        mask = masks("layer", shape, p, dtype)
        assert mask.dtype == dtype and masks.drawn == {}
        np.testing.assert_array_equal(mask, (u >= p).astype(dtype) * dtype(1.0 / (1.0 - p)))
        assert mask[0, 0] != 0


def test_layer_defaults():
    """RMSNorm's and LayerNorm's defaults are torch's LayerNorm's (eps 1e-5) in float64; GELU's is exact.
    Linear is float64, Dropout is off and named "dropout", attention has no ALiBi unless asked.
    Kills reference.layers.xǁRMSNormǁ__init____mutmut_1, _2, _3, xǁLayerNormǁ__init____mutmut_3, _4,
    xǁGELUǁ__init____mutmut_1, _2, xǁLinearǁ__init____mutmut_2, _3, xǁDropoutǁ__init____mutmut_1, _2, _3, _11
    and reference.attention.xǁCausalSelfAttentionǁ__init____mutmut_1."""
    rng = np.random.default_rng(16)
    norm, ln = RMSNorm(4), LayerNorm(4)
    assert norm.eps == ln.eps == torch.nn.LayerNorm(4).eps == 1e-5
    assert norm.weight.data.dtype == ln.weight.data.dtype == Linear(3, 2, rng=rng).weight.data.dtype == np.float64
    assert GELU().approximate == "none"
    assert Dropout().p == 0.0 and Dropout().name == "dropout"
    attn = CausalSelfAttention(8, 2, 2, bias=True, dropout=0.0, rng=rng, dtype=np.float64, proj_std=0.02)
    assert attn.slopes is None


def test_dropout_is_the_identity_without_masks_or_probability():
    """Without masks (evaluation) dropout returns its input; with p = 0 it draws nothing, so the mask
    source's random stream is untouched.
    Kills reference.layers.xǁDropoutǁdraw__mutmut_1, _4 and xǁDropoutMasksǁ__call____mutmut_15."""
    config = GPTConfig(**SMALL, dropout=0.2)
    idx = np.random.default_rng(17).integers(0, 13, (2, 6))
    np.testing.assert_array_equal(GPT(config).forward(idx)[0], GPT(config.replace(dropout=0.0)).forward(idx)[0])
    masks = DropoutMasks(np.random.default_rng(18), record=True)
    x = np.ones((2, 3))
    assert Dropout(0.0).forward(x, masks)[0] is x and masks.drawn == {}
    y, mask = Dropout(0.5, name="d").forward(x, masks)
    assert masks.drawn == {"d": mask} and masks.drawn["d"] is mask         # recorded when asked


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("name", ["attention", "attention_dropout"])
def test_attention_of_one_token_in_a_batch_of_three(name, kernels):
    """T = 1, one head, B = 3: the softmax rows of each batch element are 1 x 1, fewer numbers than
    batch rows (the blocks of softmax and its backward run over the batch axis).
    Kills reference.functional.x_softmax__mutmut_23 and x_softmax_backward__mutmut_23."""
    case = REGISTRY[name]
    ref, twin, inputs = case.build("float64", 0, Dims(B=3, T=1, H=1, Hkv=1, hd=4), kernels=kernels)
    report = compare(ref, twin, inputs, case=name, dropout=case.dropout)
    assert report.passed, str(report)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("T", [3, 7])
def test_rope_attention_where_half_the_sequence_is_not_half_the_head(T, kernels):
    """RoPE's backward rotates along the head axis: with T // 2 != hd // 2 (hd = 4, the default T = 5
    does not tell them apart) it still agrees with the twin.
    Kills reference.attention.xǁRotaryǁ_rotate_half_t__mutmut_4 (x.shape[-1] -> x.shape[-2])."""
    case = REGISTRY["attention_rope"]
    ref, twin, inputs = case.build("float64", 0, Dims(T=T), kernels=kernels)
    report = compare(ref, twin, inputs, case="attention_rope")
    assert report.passed, str(report)


@pytest.mark.parametrize("kernels", KERNELS)
def test_swiglu_model_with_dropout_against_twin(kernels):
    """SwiGLU passes the dropout masks on, forward and backward (the registered swiglu case has no dropout).
    Kills reference.layers.xǁSwiGLUǁforward__mutmut_29, _31 and xǁSwiGLUǁbackward__mutmut_8."""
    config = GPTConfig(**SMALL, mlp="swiglu", dropout=0.2)
    ref = GPTWithLoss(config)
    use_kernels(ref, kernels)
    perturb(ref, np.random.default_rng(11))
    rng = np.random.default_rng(12)
    inputs = (rng.integers(0, 13, (2, 6)), rng.integers(0, 13, (2, 6)))
    report = compare(ref, twins.GPTLoss(config), inputs, case="swiglu_dropout", seed=12, dropout=True)
    assert report.passed, str(report)


def test_num_parameters_counts_a_tied_weight_once_as_torch():
    """Kills reference.module.xǁModuleǁnum_parameters__mutmut_1."""
    for tie in (True, False):
        config = GPTConfig(**SMALL, tie_weights=tie)
        assert GPT(config).num_parameters() == sum(p.numel() for p in twins.twin_of(config).parameters())


def test_float32_gelu_of_huge_inputs_is_exact_and_quiet():
    """|x| beyond 1.8e19 overflows x^2 in float32: exp gives 0 and GELU is x or 0, without a warning.
    Kills reference.functional.x__float32_cdf_and_density__mutmut_25 (errstate(over=None))."""
    x = np.array([-3e19, -1e30, 3e19, 1e30, 0.5], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, dy = gelu_and_grad(x)
    np.testing.assert_array_equal(y[:4], np.array([0.0, 0.0, 3e19, 1e30], np.float32))
    np.testing.assert_array_equal(dy[:4], [0.0, 0.0, 1.0, 1.0])


@pytest.mark.parametrize("name", ["linear", "layernorm", "mlp", "swiglu", "attention", "attention_gqa",
                                  "attention_rope", "attention_dropout", "block", "gpt", "cross_entropy"])
def test_blocks_and_the_thread_pool_give_the_twins_numbers(name, monkeypatch):
    """The fast path's machinery at small sizes: blocks of 16 elements (many per array), two threads,
    matrix products split over the pool (functional.for_blocks, for_products, column_sums). The
    selection otherwise runs with one block and NUMPY_GPT_THREADS=1.
    Kills reference.functional.x_column_sums__mutmut_2, _3, _22,
    reference.layers.xǁLinearǁbackward__mutmut_18, _23 and
    reference.attention.xǁCausalSelfAttentionǁbackward__mutmut_216, _221, _222."""
    monkeypatch.setattr(pool, "BLOCK_ELEMENTS", 16)
    monkeypatch.setattr(pool, "THREADS", 2)
    monkeypatch.setattr(pool, "SPLIT_PRODUCTS", True)
    case = REGISTRY[name]
    ref, twin, inputs = case.build("float64")
    report = compare(ref, twin, inputs, case=name, dropout=case.dropout)
    assert report.passed, str(report)


@pytest.mark.parametrize("changes", [
    dict(bias=False, tie_weights=False, gelu_approximate="tanh"),
    dict(pos="alibi", norm="rmsnorm", n_kv_head=2, norm_eps=1e-2),
    dict(norm_eps=1e-2),
])
@pytest.mark.parametrize("kernels", KERNELS)
def test_model_variants_outside_the_registered_cases_against_twin(changes, kernels):
    """Fixed-size whole models the registered cases do not build: the MLP without biases (its own branch
    in MLP.backward) and with the tanh GELU (the MLP passes `approximate` on); ALiBi inside a GPT; a
    norm eps other than the default, in both norms.
    Kills reference.layers.xǁMLPǁforward__mutmut_5, _7, xǁMLPǁbackward__mutmut_22 to _28,
    reference.functional.x__gelu_and_grad_block__mutmut_36, _38, _66, _67,
    reference.model.xǁBlockǁ__init____mutmut_24, _34, _36, _37 and x_make_norm__mutmut_8, _15."""
    config = GPTConfig(**SMALL, **changes)
    ref = GPTWithLoss(config)
    use_kernels(ref, kernels)
    perturb(ref, np.random.default_rng(13))
    rng = np.random.default_rng(14)
    inputs = (rng.integers(0, 13, (2, 6)), rng.integers(0, 13, (2, 6)))
    report = compare(ref, twins.GPTLoss(config), inputs, case=str(changes), seed=14)
    assert report.passed, str(report)


def test_residual_projections_start_at_gpt2_scaled_std():
    """c_proj of attention and of both MLPs starts at 0.02 / sqrt(2 n_layer), GPT-2's scaled init;
    4096 draws per matrix measure the std to about 1%.
    Kills reference.model.xǁBlockǁ__init____mutmut_8 (3 n_layer), reference.layers.xǁMLPǁ__init____mutmut_26
    and xǁSwiGLUǁ__init____mutmut_35 (std dropped)."""
    for mlp in ("gelu", "swiglu"):
        model = GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=4, n_embd=64, mlp=mlp))
        block = model.transformer.h[0]
        for weight in (block.attn.c_proj.weight.data, block.mlp.c_proj.weight.data):
            assert abs(weight.std() - 0.02 / np.sqrt(4)) < 0.0005
        assert abs(block.mlp.c_fc.weight.data.std() - 0.02) < 0.001
        if mlp == "swiglu":
            assert abs(block.mlp.c_gate.weight.data.std() - 0.02) < 0.001


def test_float32_untied_model_is_float32_throughout():
    """An untied head is made in the model's dtype too.
    Kills reference.model.xǁGPTǁ__init____mutmut_73, _78."""
    model = GPT(GPTConfig(**SMALL, tie_weights=False, dtype="float32"))
    assert all(p.data.dtype == np.float32 for p in model.parameters())
    assert model.forward(np.array([[1, 2]]))[0].dtype == np.float32


def test_softmax_keeps_float32():
    """Kills reference.functional.x_softmax_backward__mutmut_5, _7 (a float64 result buffer)."""
    s = np.random.default_rng(15).standard_normal((3, 4)).astype(np.float32)
    p = softmax(s)
    assert p.dtype == softmax_backward(s, p).dtype == np.float32


def test_float64_erf_and_gelu_of_huge_inputs_are_exact_and_quiet():
    """erf clips its first range's input and GELU's density suppresses the overflow of x^2: inputs of
    1e200 give exactly +-1, x, 0, without a warning.
    Kills reference.functional.x_erf__mutmut_5, _6 (a one-sided clip) and x_normal_pdf__mutmut_1."""
    x = np.array([-1e200, 1e200, -np.inf, np.inf, 0.5])
    for path_erf, path_gelu, path_gelu_grad in ((erf, lambda v: gelu_and_grad(v)[0], lambda v: gelu_and_grad(v)[1]),
                                                (textbook.erf, textbook.gelu, textbook.gelu_grad)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            e, y, dy = path_erf(x), path_gelu(x[:2]), path_gelu_grad(x[:2])
        np.testing.assert_array_equal(e[:4], [-1.0, 1.0, -1.0, 1.0])
        np.testing.assert_array_equal(y, [0.0, 1e200])
        np.testing.assert_array_equal(dy, [0.0, 1.0])


def test_every_weight_is_drawn_and_seed_none_draws_nothing():
    """Every weight matrix starts at N(0, 0.02^2) (the embeddings, the fused attention projection, an
    untied head), not zeros; GPT(seed=None) draws nothing: the matrices are zeros of the right shape and
    dtype, ready to be loaded (reference/programs/hf.py).
    Kills: reference.attention.xǁCausalSelfAttentionǁ__init____mutmut_13,
    reference.layers.xǁSwiGLUǁ__init____mutmut_16 (with the c_gate check above), x_normal_init__mutmut_2 to _5,
    reference.model.xǁGPTǁ__init____mutmut_8, _45, _77."""
    config = GPTConfig(vocab_size=64, block_size=64, n_layer=1, n_head=4, n_embd=64, tie_weights=False)
    model = GPT(config)
    block = model.transformer.h[0]
    for weight in (model.transformer.wte.weight, model.transformer.wpe.weight, model.lm_head.weight,
                   block.attn.c_attn.weight):
        assert abs(weight.data.std() - 0.02) < 0.002
    blank = GPT(config.replace(dtype="float32"), seed=None)
    for (name, p), (_, q) in zip(blank.named_parameters(), model.named_parameters()):
        assert p.data.shape == q.data.shape and p.data.dtype == np.float32, name
        if p.data.ndim == 2:
            assert not p.data.any(), name
