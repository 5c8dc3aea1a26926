"""Adam and AdamW step by step against torch.optim, clipping against clip_grad_norm_, and the
learning-rate schedule against LambdaLR."""

import numpy as np
import pytest
import torch

from oracle import rel_error
from oracle.core import tolerance as policy
from reference.module import Parameter
from reference.optim import Adam, AdamW, clip_grad_norm_, cosine_lr

SHAPES = [(5, 3), (7,), (2, 3, 4)]
STEPS = 12


def torch_run(kind: str, dtype: torch.dtype, init, grads, **hp):
    """torch.optim on the same initial values and gradient sequence: per step, (params, exp_avg, exp_avg_sq)."""
    ps = [torch.nn.Parameter(torch.from_numpy(a.copy()).to(dtype)) for a in init]
    opt = (torch.optim.AdamW if kind == "AdamW" else torch.optim.Adam)(ps, **hp)
    history = []
    for step_grads in grads:
        for p, g in zip(ps, step_grads):
            p.grad = torch.from_numpy(g.copy()).to(dtype)
        opt.step()
        history.append([(p.detach().numpy().copy(), opt.state[p]["exp_avg"].numpy().copy(),
                         opt.state[p]["exp_avg_sq"].numpy().copy()) for p in ps])
    return history


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["Adam", "AdamW"])
def test_adam_matches_torch(kind, weight_decay, dtype):
    """12 successive steps: parameters and both moments agree with torch.optim after every step."""
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) * 10.0 ** rng.integers(-3, 2) for s in SHAPES] for _ in range(STEPS)]
    hp = dict(lr=3e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)
    params = [Parameter(a.copy()) for a in init]
    opt = (AdamW if kind == "AdamW" else Adam)(params, **hp)
    theirs = torch_run(kind, getattr(torch, dtype), init, grads, **hp)
    truth = torch_run(kind, torch.float64, init, grads, **hp) if dtype == "float32" else theirs
    for step in range(STEPS):
        for p, g in zip(params, grads[step]):
            p.grad[...] = g
        opt.step()
        for p, (tp, tm, tv), (xp, xm, xv), name in zip(params, theirs[step], truth[step], ["a", "b", "c"]):
            st = opt.state[id(p)]
            assert st["step"] == step + 1
            for label, ours, their, true in [("param", p.data, tp, xp), ("exp_avg", st["exp_avg"], tm, xm),
                                             ("exp_avg_sq", st["exp_avg_sq"], tv, xv)]:
                assert ours.dtype == np.dtype(dtype)
                if dtype == "float64":
                    err, tol = rel_error(ours, their)[0], policy.FLOAT64_TOL
                else:
                    err = rel_error(ours, true)[0]
                    tol = max(policy.FLOAT32_FACTOR * rel_error(their, true)[0], policy.FLOAT32_FLOOR)
                assert err <= tol, f"step {step + 1} {name} {label}: err {err:.2e} > tol {tol:.1e}"


def test_adamw_param_groups_and_defaults():
    """Groups override the defaults (decay on matrices only, as nanoGPT); AdamW's default decay is torch's 1e-2."""
    rng = np.random.default_rng(1)
    w, b = Parameter(rng.standard_normal((3, 3))), Parameter(rng.standard_normal(3))
    tw, tb = (torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in (w, b))
    ours = AdamW([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}], lr=0.01)
    theirs = torch.optim.AdamW([{"params": [tw], "weight_decay": 0.1}, {"params": [tb], "weight_decay": 0.0}], lr=0.01)
    assert AdamW([w]).param_groups[0]["weight_decay"] == torch.optim.AdamW([tw]).defaults["weight_decay"]
    for _ in range(5):
        for p, tp in ((w, tw), (b, tb)):
            g = rng.standard_normal(p.shape)
            p.grad[...], tp.grad = g, torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
    assert rel_error(w.data, tw.detach().numpy())[0] <= policy.FLOAT64_TOL
    assert rel_error(b.data, tb.detach().numpy())[0] <= policy.FLOAT64_TOL


def test_optimizer_state_dict_round_trip_and_errors():
    rng = np.random.default_rng(2)
    ps = [Parameter(rng.standard_normal((2, 2))), Parameter(rng.standard_normal(2))]
    opt = AdamW(ps, lr=0.1)
    for p in ps:
        p.grad[...] = 1.0
    opt.step()
    sd = opt.state_dict()
    assert sd["state"][0]["step"] == 1 and set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    fresh = AdamW(ps, lr=0.5)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["lr"] == 0.1 and fresh.state[id(ps[0])]["step"] == 1
    np.testing.assert_array_equal(fresh.state[id(ps[1])]["exp_avg"], opt.state[id(ps[1])]["exp_avg"])
    opt.zero_grad()
    assert all(not p.grad.any() for p in ps)
    with pytest.raises(ValueError, match="groups"):
        fresh.load_state_dict({**sd, "param_groups": sd["param_groups"] * 2})
    with pytest.raises(ValueError, match="params, expected"):
        AdamW(ps[:1]).load_state_dict(sd)
    bad = {"state": {0: {**sd["state"][0], "exp_avg": np.zeros(3)}}, "param_groups": sd["param_groups"]}
    with pytest.raises(ValueError, match=r"exp_avg for param 0 has shape \(3,\)"):
        fresh.load_state_dict(bad)
    with pytest.raises(ValueError, match="invalid hyperparameters"):
        Adam(ps, lr=-1.0)
    with pytest.raises(ValueError, match="empty parameter list"):
        Adam([])
    with pytest.raises(TypeError, match="can only optimize Parameters"):
        Adam([np.zeros(2)])


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e6])
def test_clip_grad_norm_matches_torch(max_norm):
    rng = np.random.default_rng(3)
    params = [Parameter(np.zeros(s)) for s in SHAPES]
    tparams = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in SHAPES]
    for p, tp in zip(params, tparams):
        p.grad[...] = rng.standard_normal(p.shape)
        tp.grad = torch.from_numpy(p.grad.copy())
    norm = clip_grad_norm_(params, max_norm)
    tnorm = torch.nn.utils.clip_grad_norm_(tparams, max_norm)
    assert abs(norm - float(tnorm)) <= policy.FLOAT64_TOL * float(tnorm)
    for p, tp in zip(params, tparams):
        assert rel_error(p.grad, tp.grad.numpy())[0] <= policy.FLOAT64_TOL


def test_cosine_lr_matches_lambdalr():
    """nanoGPT's warmup-then-cosine equals torch's own schedulers chained: LinearLR warmup from
    1/(warmup+1), then CosineAnnealingLR down to min_lr; and drives LambdaLR unchanged."""
    hp = dict(lr=1e-3, min_lr=1e-4, warmup=10, decay_steps=60)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=hp["lr"])
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / (hp["warmup"] + 1), end_factor=1.0,
                                             total_iters=hp["warmup"])
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp["decay_steps"] - hp["warmup"], eta_min=hp["min_lr"])
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[hp["warmup"]])
    for step in range(hp["decay_steps"] + 1):
        assert abs(opt.param_groups[0]["lr"] - cosine_lr(step, **hp)) <= 1e-12 * hp["lr"], step
        opt.step()
        sched.step()
    opt2 = torch.optim.SGD([p], lr=hp["lr"])
    lam = torch.optim.lr_scheduler.LambdaLR(opt2, lambda step: cosine_lr(step, **hp) / hp["lr"])
    for step in range(80):
        assert abs(opt2.param_groups[0]["lr"] - cosine_lr(step, **hp)) <= 1e-15
        opt2.step()
        lam.step()
    assert cosine_lr(0, **hp) == pytest.approx(1e-3 / 11) and cosine_lr(10, **hp) == pytest.approx(1e-3)
    assert cosine_lr(35, **hp) == pytest.approx(5.5e-4) and cosine_lr(60, **hp) == 1e-4 == cosine_lr(1000, **hp)


# ------------------------------------------------------------------- param groups, as torch.optim checks them


def test_the_same_parameter_in_two_groups_is_refused_as_torch_does():
    """The public report: AdamW([{"params": [p]}, {"params": [p]}]) updated p twice per step. torch refuses."""
    p = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group") as theirs:
        torch.optim.AdamW([{"params": [p]}, {"params": [p]}], lr=1e-3)
    q = Parameter(np.ones(1))
    for kind in (Adam, AdamW):
        with pytest.raises(ValueError) as ours:
            kind([{"params": [q]}, {"params": [Parameter(np.ones(2))]}, {"params": [q]}], lr=1e-3)
        assert str(ours.value) == str(theirs.value)


def test_duplicates_within_one_group_warn_and_step_as_torch_does():
    """torch accepts a Parameter listed twice in one group with a UserWarning, and updates it twice per step
    (p = 0.99798, step 2 from p = 1, grad = 1, lr 1e-3): we do the same, with the same warning."""
    p = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    with pytest.warns(UserWarning, match="duplicate parameters") as theirs:
        topt = torch.optim.AdamW([p, p], lr=1e-3)
    p.grad = torch.ones(1, dtype=torch.float64)
    topt.step()
    q = Parameter(np.ones(1))
    with pytest.warns(UserWarning) as ours:
        opt = AdamW([q, q], lr=1e-3)
    assert str(ours[0].message) == str(theirs[0].message)
    q.grad[...] = 1.0
    opt.step()
    assert q.data[0] == pytest.approx(p.item(), rel=1e-15) and opt.state[id(q)]["step"] == topt.state[p]["step"] == 2
    single = Parameter(np.ones(1))
    single.grad[...] = 1.0
    AdamW([single], lr=1e-3).step()
    assert single.data[0] == pytest.approx(0.99899, abs=1e-5)          # the right single update
