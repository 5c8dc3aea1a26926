"""Adam, AdamW and SGD with torch.optim's exact semantics, global-norm clipping, and the LR schedule.

For each parameter, with gradient g at step t (counting from 1):
    Adam:   g <- g + wd * p                         (L2 penalty folded into the gradient)
    AdamW:  p <- p * (1 - lr * wd)                  (decoupled decay, before the update)
    m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
    p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
eps sits outside the square root and is added after the bias correction of v, as in torch.
State uses torch's names: `step`, `exp_avg`, `exp_avg_sq`. Derived in docs/adam.md.
SGD (momentum, dampening, Nesterov; state `momentum_buffer`) is derived in docs/sgd.md.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .module import Parameter


class Optimizer:
    """What torch.optim.Optimizer holds for every optimizer: param_groups (a list of Parameters, or dicts
    {"params": [...], **overrides} over `defaults`), per-parameter `state`, zero_grad, and state_dict in
    torch's layout. Subclasses name their per-parameter arrays in STATE_ARRAYS and check their
    hyperparameters in `_check_group`."""

    STATE_ARRAYS: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        self.state: dict[int, dict] = {}                       # id(Parameter) -> that parameter's state
        check_param_groups(self.param_groups)
        for group in self.param_groups:
            self._check_group(group)

    def _check_group(self, group: dict) -> None:
        """Refuse a group's hyperparameters outside their range (ValueError naming them)."""

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad.fill(0)

    def state_dict(self) -> dict:
        """torch's layout: state indexed by position over all groups, plus the group hyperparameters."""
        order = [p for g in self.param_groups for p in g["params"]]
        state = {i: dict(self.state[id(p)]) for i, p in enumerate(order) if id(p) in self.state}
        groups, i = [], 0
        for g in self.param_groups:
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": list(range(i, i + len(g["params"])))})
            i += len(g["params"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        """Take the hyperparameters and state of `sd` (torch's layout); the groups must hold as many
        parameters as ours, and every state array must match its parameter's shape and dtype."""
        order = [p for g in self.param_groups for p in g["params"]]
        if len(sd["param_groups"]) != len(self.param_groups):
            raise ValueError(f"optimizer state has {len(sd['param_groups'])} groups, expected {len(self.param_groups)}")
        for g, saved in zip(self.param_groups, sd["param_groups"]):
            if len(saved["params"]) != len(g["params"]):
                raise ValueError(f"optimizer group has {len(saved['params'])} params, expected {len(g['params'])}")
        for g, saved in zip(self.param_groups, sd["param_groups"]):
            hyper = {k: (tuple(v) if k == "betas" else v) for k, v in saved.items() if k != "params"}
            self._check_group({**g, **hyper})
            g.update(hyper)
        self.state = {}
        for i, st in sd["state"].items():
            p = order[int(i)]
            for key in self.STATE_ARRAYS:
                if st[key].shape != p.data.shape or st[key].dtype != p.data.dtype:
                    raise ValueError(f"optimizer state {key} for param {i} has shape {st[key].shape} "
                                     f"{st[key].dtype}, expected {p.data.shape} {p.data.dtype}")
            self.state[id(p)] = {k: (v.copy() if k in self.STATE_ARRAYS else int(v)) for k, v in st.items()}


class Adam(Optimizer):
    """torch.optim.Adam: param_groups are lists of Parameters or dicts {"params": [...], **overrides}."""

    decoupled = False
    STATE_ARRAYS = ("exp_avg", "exp_avg_sq")                   # and the scalar `step`

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid hyperparameters: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    def step(self) -> None:
        """One update of every parameter, group by group (a Parameter listed twice is updated twice)."""
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if id(p) not in self.state:
                    self.state[id(p)] = {"step": 0, "exp_avg": np.zeros_like(p.data),
                                         "exp_avg_sq": np.zeros_like(p.data)}
                st = self.state[id(p)]
                st["step"] += 1
                t = st["step"]
                g = p.grad
                if wd != 0:
                    if self.decoupled:
                        p.data *= 1.0 - lr * wd                # AdamW: decay the weights, apart from g
                    else:
                        g = g + wd * p.data                    # Adam: L2 penalty folded into g
                adam_update(p.data, g, st["exp_avg"], st["exp_avg_sq"], lr, b1, b2, eps, t)


def adam_update(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, lr: float, b1: float, b2: float,
                eps: float, t: int) -> None:
    """Adam's step t >= 1 on arrays of one shape, in place: the moments m and v, then the parameter p, in
    torch's order (docs/adam.md). The weight decay, if any, is applied before (AdamW) or folded into g
    (Adam) by the caller. Shared by Adam/AdamW here and ZeRO-1's slices (reference/programs/distributed.py)."""
    m *= b1
    m += (1.0 - b1) * g                                        # m = b1 m + (1 - b1) g
    v *= b2
    v += (1.0 - b2) * (g * g)                                  # v = b2 v + (1 - b2) g^2
    step_size = lr / (1.0 - b1**t)
    denom = np.sqrt(v) / math.sqrt(1.0 - b2**t) + eps
    p -= step_size * (m / denom)


def check_param_groups(param_groups: list[dict]) -> None:
    """torch.optim.Optimizer.add_param_group's checks, with its messages: every param a Parameter
    (TypeError); the same Parameter in two groups, ValueError("some parameters appear in more than one
    parameter group"); twice within one group, torch's UserWarning (torch still accepts it and updates
    that parameter twice per step, as we do; it says this will become an error)."""
    seen: set[int] = set()
    for group in param_groups:
        ids = []
        for p in group["params"]:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer can only optimize Parameters, but one of the params is {type(p).__name__}")
            ids.append(id(p))
        if len(ids) != len(set(ids)):
            warnings.warn("optimizer contains a parameter group with duplicate parameters; in future, this will "
                          "cause an error; see github.com/pytorch/pytorch/issues/40967 for more information",
                          UserWarning, stacklevel=4)   # the caller of the optimizer's __init__
        if not seen.isdisjoint(ids):
            raise ValueError("some parameters appear in more than one parameter group")
        seen.update(ids)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (default 1e-2, as torch)."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def _check_hyper(name: str, value, ok, expected: str) -> None:
    """ValueError naming the argument, its value and the expected range (a bool is not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} must be {expected}, got {value!r}")


class SGD(Optimizer):
    """torch.optim.SGD: stochastic gradient descent with momentum, dampening, Nesterov momentum, weight
    decay (an L2 term folded into the gradient) and maximize. For each parameter p with gradient g:

        g <- -g                              if maximize
        g <- g + weight_decay * p            if weight_decay != 0
        if momentum != 0:
            b <- g (a copy)                  on the first step: no dampening
            b <- momentum * b + (1 - dampening) * g    afterwards
            g <- g + momentum * b            if nesterov, else g <- b
        p <- p - lr * g

    State uses torch's name, `momentum_buffer`, and exists only when momentum != 0 (as in torch).
    param_groups are lists of Parameters or dicts {"params": [...], **overrides}. Arguments are checked
    as torch checks them (lr, momentum, weight_decay >= 0; Nesterov needs momentum > 0 and dampening 0),
    and must be finite. Derived in docs/sgd.md.
    """

    STATE_ARRAYS = ("momentum_buffer",)

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False):
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize})

    def _check_group(self, group: dict) -> None:
        _check_hyper("lr", group["lr"], lambda v: v >= 0, "a finite number >= 0")
        _check_hyper("momentum", group["momentum"], lambda v: v >= 0, "a finite number >= 0")
        _check_hyper("dampening", group["dampening"], lambda v: True, "a finite number")
        _check_hyper("weight_decay", group["weight_decay"], lambda v: v >= 0, "a finite number >= 0")
        for name in ("nesterov", "maximize"):
            if not isinstance(group[name], bool):
                raise ValueError(f"{name} must be a boolean, got {group[name]!r}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"Nesterov momentum requires a momentum > 0 and zero dampening, "
                             f"got momentum={group['momentum']!r}, dampening={group['dampening']!r}")

    def step(self) -> None:
        for group in self.param_groups:
            lr, mu, tau, wd = group["lr"], group["momentum"], group["dampening"], group["weight_decay"]
            for p in group["params"]:
                g = -p.grad if group["maximize"] else p.grad
                if wd != 0:
                    g = g + wd * p.data
                if mu != 0:
                    st = self.state.get(id(p))
                    if st is None:                             # first step: the buffer is the gradient itself
                        st = self.state[id(p)] = {"momentum_buffer": g.copy()}
                    else:
                        st["momentum_buffer"] = mu * st["momentum_buffer"] + (1.0 - tau) * g
                    b = st["momentum_buffer"]
                    g = g + mu * b if group["nesterov"] else b
                p.data -= lr * g


def clip_grad_norm_(params, max_norm: float) -> float:
    """Scale all gradients so their global L2 norm is at most max_norm; return the norm before clipping.

    As torch.nn.utils.clip_grad_norm_: coefficient max_norm / (norm + 1e-6), applied unless it is >= 1
    (so a non-finite norm spreads to every gradient, as in torch). Derived in docs/clipping.md.
    """
    params = list(params)
    total = math.sqrt(sum(float(np.vdot(p.grad, p.grad)) for p in params))
    coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:
        for p in params:
            p.grad *= coef
    return total


def cosine_lr(step: int, *, lr: float, min_lr: float, warmup: int, decay_steps: int) -> float:
    """Linear warmup from 0 to lr over `warmup` steps, then cosine decay to min_lr at `decay_steps`.

    nanoGPT's get_lr, with `step` the 0-based optimizer step: lr * (step + 1) / (warmup + 1) while warming up.
    Derived in docs/lr_schedule.md.
    """
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= decay_steps:
        return min_lr
    ratio = (step - warmup) / (decay_steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)
