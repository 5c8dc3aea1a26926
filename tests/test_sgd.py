"""SGD step by step against torch.optim.SGD: parameters and momentum buffers after every one of 12 steps,
over a grid of momentum, dampening, Nesterov, weight decay and maximize, in float64 (round-off) and
float32 (the tolerance policy); torch's argument checks; the state dict."""

import numpy as np
import pytest
import torch

from oracle import rel_error
from oracle.core import tolerance as policy
from reference.module import Parameter
from reference.optim import SGD

SHAPES = [(5, 3), (7,), (2, 3, 4)]
STEPS = 12
GRID = [
    dict(),                                                        # plain SGD: no state at all
    dict(momentum=0.9),
    dict(momentum=0.9, dampening=0.5),
    dict(momentum=0.5, nesterov=True),
    dict(momentum=0.9, weight_decay=0.1, maximize=True),
    dict(momentum=0.8, dampening=0.1, weight_decay=0.05),
    dict(momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True),
    dict(weight_decay=0.1, maximize=True),
]
MEASURED: dict = {}                                                # worst error per (options, dtype), for reports


def torch_run(dtype: torch.dtype, init, grads, groups=None, **hp):
    """torch.optim.SGD on the same initial values and gradients: per step, [(param, momentum_buffer | None)]."""
    ps = [torch.nn.Parameter(torch.from_numpy(a.copy()).to(dtype)) for a in init]
    opt = torch.optim.SGD(ps if groups is None else [{**g, "params": [ps[i] for i in g["params"]]} for g in groups], **hp)
    history = []
    for step_grads in grads:
        for p, g in zip(ps, step_grads):
            p.grad = torch.from_numpy(g.copy()).to(dtype)
        opt.step()
        history.append([(p.detach().numpy().copy(),
                         None if "momentum_buffer" not in opt.state[p] else opt.state[p]["momentum_buffer"].numpy().copy())
                        for p in ps])
    return history


def problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) * 10.0 ** rng.integers(-2, 2) for s in SHAPES] for _ in range(STEPS)]
    return init, grads


def check_against(params, opt, grads, theirs, truth, dtype, where):
    worst = 0.0
    for step in range(STEPS):
        for p, g in zip(params, grads[step]):
            p.grad[...] = g
        opt.step()
        for k, (p, (tp, tb), (xp, xb)) in enumerate(zip(params, theirs[step], truth[step])):
            st = opt.state.get(id(p))
            assert (st is None) == (tb is None), f"{where} step {step + 1}: momentum_buffer present in one only"
            pairs = [("param", p.data, tp, xp)] + ([] if tb is None else [("momentum_buffer", st["momentum_buffer"], tb, xb)])
            for label, ours, their, true in pairs:
                assert ours.dtype == np.dtype(dtype)
                if dtype == "float64":
                    err, tol = rel_error(ours, their)[0], policy.FLOAT64_TOL
                else:
                    err = rel_error(ours, true)[0]
                    tol = max(policy.FLOAT32_FACTOR * rel_error(their, true)[0], policy.FLOAT32_FLOOR)
                worst = max(worst, err)
                assert err <= tol, f"{where} step {step + 1} param {k} {label}: err {err:.2e} > tol {tol:.1e}"
    return worst


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("options", GRID, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_sgd_matches_torch(options, dtype):
    """12 successive steps: every parameter and momentum buffer agrees with torch.optim.SGD after every step."""
    init, grads = problem(dtype)
    hp = dict(lr=0.05, **options)
    params = [Parameter(a.copy()) for a in init]
    opt = SGD(params, **hp)
    theirs = torch_run(getattr(torch, dtype), init, grads, **hp)
    truth = torch_run(torch.float64, init, grads, **hp) if dtype == "float32" else theirs
    MEASURED[(str(options), dtype)] = check_against(params, opt, grads, theirs, truth, dtype, str(options))


def test_sgd_param_groups_override_the_defaults():
    """Per-group momentum, Nesterov and weight decay, as nanoGPT's decay/no-decay groups would use them."""
    init, grads = problem("float64", seed=1)
    groups = [{"params": [0, 2], "weight_decay": 0.1, "nesterov": True}, {"params": [1], "momentum": 0.3}]
    hp = dict(lr=0.02, momentum=0.9)
    params = [Parameter(a.copy()) for a in init]
    opt = SGD([{**g, "params": [params[i] for i in g["params"]]} for g in groups], **hp)
    theirs = torch_run(torch.float64, init, grads, groups=groups, **hp)
    check_against(params, opt, grads, theirs, theirs, "float64", "groups")


def test_first_step_buffer_is_the_gradient_without_dampening():
    """torch's rule: on the first step the buffer is a copy of the (decayed) gradient, undamped."""
    p = Parameter(np.array([1.0, -2.0]))
    opt = SGD([p], lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.1)
    p.grad[...] = [0.5, 0.25]
    opt.step()
    buf = opt.state[id(p)]["momentum_buffer"]
    want = np.array([0.5, 0.25]) + 0.1 * np.array([1.0, -2.0])
    np.testing.assert_array_equal(buf, want)
    assert buf is not p.grad and not np.shares_memory(buf, p.grad)
    p.grad[...] = 0.0                                              # a later gradient does not reach the buffer in place
    np.testing.assert_array_equal(buf, want)


@pytest.mark.parametrize("kwargs, words, torch_too", [
    (dict(lr=-0.1), "lr must be a finite number >= 0, got -0.1", True),
    (dict(lr=float("nan")), "lr must be a finite number >= 0, got nan", False),
    (dict(momentum=-0.5), "momentum must be a finite number >= 0, got -0.5", True),
    (dict(weight_decay=-1e-3), "weight_decay must be a finite number >= 0, got -0.001", True),
    (dict(dampening=float("inf")), "dampening must be a finite number, got inf", False),
    (dict(lr=True), "lr must be a finite number >= 0, got True", False),
    (dict(nesterov=True), "Nesterov momentum requires a momentum > 0 and zero dampening, got momentum=0.0", True),
    (dict(nesterov=True, momentum=0.9, dampening=0.1), "zero dampening, got momentum=0.9, dampening=0.1", True),
    (dict(nesterov="yes", momentum=0.9), "nesterov must be a boolean, got 'yes'", False),
    (dict(maximize=1), "maximize must be a boolean, got 1", False),
])
def test_sgd_refuses_what_torch_refuses(kwargs, words, torch_too):
    """torch's checks, with its conditions (torch_too: torch.optim.SGD refuses the same); ours also refuse
    non-finite numbers and non-booleans, which torch lets through."""
    p = Parameter(np.zeros(2))
    with pytest.raises(ValueError) as e:
        SGD([p], **kwargs)
    assert words in str(e.value)
    if torch_too:
        with pytest.raises(ValueError):
            torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_sgd_state_dict_round_trip_and_errors():
    rng = np.random.default_rng(2)
    ps = [Parameter(rng.standard_normal((2, 2))), Parameter(rng.standard_normal(2))]
    opt = SGD(ps, lr=0.1, momentum=0.9, nesterov=True)
    for p in ps:
        p.grad[...] = 1.0
    opt.step()
    sd = opt.state_dict()
    assert set(sd["state"][0]) == {"momentum_buffer"}
    assert sd["param_groups"][0] == {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0,
                                     "nesterov": True, "maximize": False, "params": [0, 1]}
    fresh = SGD(ps, lr=0.5, momentum=0.1)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["lr"] == 0.1 and fresh.param_groups[0]["nesterov"] is True
    np.testing.assert_array_equal(fresh.state[id(ps[1])]["momentum_buffer"], opt.state[id(ps[1])]["momentum_buffer"])
    opt.zero_grad()
    assert all(not p.grad.any() for p in ps)
    with pytest.raises(ValueError, match="groups"):
        fresh.load_state_dict({**sd, "param_groups": sd["param_groups"] * 2})
    with pytest.raises(ValueError, match="params, expected"):
        SGD(ps[:1]).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"momentum_buffer for param 0 has shape \(3,\)"):
        fresh.load_state_dict({"state": {0: {"momentum_buffer": np.zeros(3)}}, "param_groups": sd["param_groups"]})
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([])
    with pytest.raises(TypeError, match="can only optimize Parameters"):
        SGD([np.zeros(2)])
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        SGD([{"params": [ps[0]]}, {"params": [ps[0]]}])              # torch.optim's check and message
    with pytest.warns(UserWarning, match="duplicate parameters"):
        SGD([ps[0], ps[0]])


# ------------------------------------------------------------------------------------ training and checkpoints

TEXT = "the quick brown fox jumps over the lazy dog. " * 12


def sgd_trainer(out_dir, resume=None, **changes):
    from reference.programs.tokenizers import CharTokenizer
    from reference.programs.training.settings import TrainConfig
    from reference.programs.training.trainer import Trainer
    config = TrainConfig(out_dir=str(out_dir), seed=5, n_layer=1, n_head=2, n_embd=8, block_size=8, batch_size=4,
                         max_iters=8, learning_rate=0.05, min_lr=0.005, warmup_iters=1, lr_decay_iters=8,
                         eval_interval=4, eval_iters=1, dropout=0.1, weight_decay=0.1,
                         always_save_checkpoint=True, **{"optimizer": "sgd", "momentum": 0.9, **changes})
    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode(TEXT)
    return Trainer(config, train_data=ids[:400], val_data=ids[400:], tokenizer=tok, resume=resume)


@pytest.mark.parametrize("changes", [dict(), dict(nesterov=True, dtype="float64"), dict(momentum=0.0)])
def test_sgd_resume_is_bit_identical(tmp_path, changes):
    """8 steps straight equal 4 steps, a checkpoint, a fresh process-like resume and 4 more steps, bit for bit:
    weights and momentum buffers. The checkpoint holds the buffers exactly (momentum 0: none at all)."""
    from reference.programs.checkpoint import load_checkpoint

    straight = sgd_trainer(tmp_path / "a", **changes)
    straight.run(until=8)
    first = sgd_trainer(tmp_path / "b", **changes)
    first.run(until=4)
    path = first.save()
    ckpt = load_checkpoint(path)
    assert ckpt.optimizer["type"] == "SGD"
    names = {id(p): n for n, p in first.model.named_parameters()}
    for p in first.model.parameters():
        st = first.optimizer.state.get(id(p))
        saved = ckpt.optimizer["state"].get(names[id(p)])
        assert (st is None) == (saved is None) == (changes.get("momentum") == 0.0)
        if st is not None:
            assert np.array_equal(saved["momentum_buffer"], st["momentum_buffer"])
            assert saved["momentum_buffer"].dtype == st["momentum_buffer"].dtype
    resumed = sgd_trainer(tmp_path / "b", resume=path, **changes)
    assert resumed.optimizer.param_groups[0]["momentum"] == straight.optimizer.param_groups[0]["momentum"]
    resumed.run(until=8)
    for (name, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert np.array_equal(p.data, q.data), name
        a, b = straight.optimizer.state.get(id(p)), resumed.optimizer.state.get(id(q))
        assert (a is None) == (b is None)
        if a is not None:
            assert np.array_equal(a["momentum_buffer"], b["momentum_buffer"]), name


@pytest.fixture(scope="module")
def prepare_module():
    """data/prepare.py, loaded as a module (it is a script, not part of a package)."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("data_prepare", Path(__file__).resolve().parents[1] / "data" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sgd_ckpt(tmp_path_factory):
    trainer = sgd_trainer(tmp_path_factory.mktemp("sgd"))
    trainer.run(until=2)
    return trainer, trainer.save().read_bytes()


def _edit(path, edit):
    import json

    from reference.programs.checkpoint import METADATA_KEY, seal
    from reference.programs.safetensors_io import load_file, save_file
    tensors, meta = load_file(path)
    header = json.loads(meta[METADATA_KEY])
    edit(header, tensors)
    save_file(tensors, path, metadata=seal(tensors, json.dumps(header)))   # checksums recomputed: only the edit


@pytest.mark.parametrize("edit, message", [
    (lambda h, t: h["optimizer"].pop("buffers"), r"must be an object with 'param_groups' \(list\) and 'buffers'"),
    (lambda h, t: h["optimizer"]["param_groups"][0].pop("nesterov"), r"group 0 must be an object with exactly the keys"),
    (lambda h, t: h["optimizer"]["param_groups"][1].update(momentum="high"), r"group 1: 'momentum' must be a finite number"),
    (lambda h, t: h["optimizer"]["param_groups"][0].update(maximize=0), r"group 0: 'maximize' must be true or false, got 0"),
    (lambda h, t: h["optimizer"]["param_groups"][0].update(params=[1]), r"group 0: 'params' must be a list of parameter names"),
    (lambda h, t: h["optimizer"]["param_groups"][0]["params"].pop(), r"the optimizer's param groups name"),
    (lambda h, t: h["optimizer"]["buffers"].append("nope"), r"SGD momentum buffer for 'nope', which is not a parameter"),
    (lambda h, t: t.pop("optimizer.transformer.ln_f.weight.momentum_buffer"), r"missing optimizer tensor"),
    (lambda h, t: t.update({"optimizer.transformer.ln_f.weight.momentum_buffer": np.zeros(3, np.float32)}),
     r"'optimizer.transformer.ln_f.weight.momentum_buffer' has shape \(3,\)"),
])
def test_a_damaged_sgd_section_is_refused(sgd_ckpt, tmp_path, edit, message):
    from reference.programs.checkpoint import CheckpointError, load_checkpoint
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(sgd_ckpt[1])
    _edit(path, edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_resuming_with_another_optimizer_is_refused(sgd_ckpt, tmp_path):
    """An SGD run cannot be resumed as AdamW (nor the other way): one line naming both."""
    from reference.programs.checkpoint import CheckpointError
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(sgd_ckpt[1])
    with pytest.raises(CheckpointError, match="the checkpoint's optimizer is SGD, this one is AdamW"):
        sgd_trainer(tmp_path / "other", resume=path, optimizer="adamw")


def test_train_cli_with_sgd_and_bad_sgd_flags(tmp_path, capsys, prepare_module):
    """`train --optimizer sgd --nesterov` runs and resumes through the CLI; refused flags get one line."""
    from reference.programs.cli import main
    data = tmp_path / "data"
    prepare_module.prepare(TEXT.encode(), data, kind="char")
    common = ["train", "--data_dir", str(data), "--out_dir", str(tmp_path / "out"), "--n_layer", "1", "--n_head", "2",
              "--n_embd", "8", "--block_size", "8", "--batch_size", "2", "--eval_iters", "1", "--eval_interval", "2",
              "--no-progress", "--optimizer", "sgd", "--nesterov", "--learning_rate", "0.05", "--always_save_checkpoint"]
    assert main(common + ["--max_iters", "2"]) == 0
    assert main(common + ["--max_iters", "4", "--resume"]) == 0
    capsys.readouterr()
    assert main(common + ["--momentum", "0", "--overwrite", "--max_iters", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nesterov needs momentum > 0 and dampening 0" in err


def test_saving_an_sgd_over_foreign_parameters_is_refused(tmp_path):
    from reference import GPT, GPTConfig
    from reference.programs.checkpoint import save_checkpoint
    model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4))
    with pytest.raises(ValueError, match="parameter\\(s\\) that are not the model's"):
        save_checkpoint(tmp_path / "c.safetensors", model, SGD([Parameter(np.zeros(2))], momentum=0.9))
    assert not (tmp_path / "c.safetensors").exists()


def test_sgd_training_trajectory_matches_torch():
    """16 real training steps (Trainer.train_step: nanoGPT's two groups, warmup-cosine, clipping, dropout,
    sinusoidal positions) with SGD + Nesterov + weight decay, against the twin trained by torch.optim.SGD,
    LambdaLR and clip_grad_norm_ on the same batches and dropout masks, float64: losses, final weights and
    momentum buffers."""
    import math

    import torch.nn.functional as F

    from oracle.bridge import twins
    from reference.programs.training.settings import TrainConfig
    from reference.programs.training.trainer import Trainer
    steps, vocab = 16, 11
    rng = np.random.default_rng(0)
    data = np.tile(rng.integers(0, vocab, 12), 60)
    cfg = TrainConfig(out_dir="", seed=4, n_layer=2, n_head=2, n_embd=16, block_size=8, dropout=0.1, dtype="float64",
                      batch_size=4, max_iters=steps, learning_rate=0.1, min_lr=0.01, warmup_iters=3, lr_decay_iters=12,
                      weight_decay=0.05, grad_clip=1.0, pos="sinusoidal", optimizer="sgd", momentum=0.9, nesterov=True)
    trainer = Trainer(cfg, train_data=data[:600], val_data=data[600:], vocab_size=vocab)
    trainer.record = True
    init = {k: v.copy() for k, v in trainer.model.state_dict().items()}
    records, batches, masks = [], [], []
    for _ in range(steps):
        records.append(trainer.train_step())
        batches.append(trainer.last_batch)
        masks.append(dict(trainer.last_masks.drawn))

    def lr_at(it):                                              # nanoGPT's get_lr, written out
        if it < cfg.warmup_iters:
            return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
        if it > cfg.lr_decay_iters:
            return cfg.min_lr
        ratio = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                    # tiny tensors: threads only add synchronisation
    twin = twins.GPT(trainer.model_config).double()
    twins.load_reference_state(twin, init)
    named = list(twin.named_parameters())
    groups = [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_at(it) / cfg.learning_rate)
    for rec, (x, y), m in zip(records, batches, masks):
        opt.zero_grad()
        logits = twin(torch.from_numpy(x), masks=m)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        assert abs(rec["loss"] - loss.item()) <= 1e-9 * abs(loss.item()), rec["step"]
    torch.set_num_threads(threads)
    assert records[-1]["loss"] < records[0]["loss"]             # it trained
    ours = dict(trainer.model.named_parameters())
    for name, p in named:
        assert rel_error(ours[name].data, p.detach().numpy())[0] <= 1e-8, name
        buf = trainer.optimizer.state[id(ours[name])]["momentum_buffer"]
        assert rel_error(buf, opt.state[p]["momentum_buffer"].numpy())[0] <= 1e-8, name
