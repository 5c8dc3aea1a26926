"""Adam and AdamW with torch.optim's exact semantics, global-norm clipping, and the LR schedule.

For each parameter, with gradient g at step t (counting from 1):
    Adam:   g <- g + wd * p                         (L2 penalty folded into the gradient)
    AdamW:  p <- p * (1 - lr * wd)                  (decoupled decay, before the update)
    m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
    p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
eps sits outside the square root and is added after the bias correction of v, as in torch.
State uses torch's names: `step`, `exp_avg`, `exp_avg_sq`. Derived in docs/adam.md.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .module import Parameter


class Adam:
    """torch.optim.Adam: param_groups are lists of Parameters or dicts {"params": [...], **overrides}."""

    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid hyperparameters: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        self.state: dict[int, dict] = {}                       # id(Parameter) -> {step, exp_avg, exp_avg_sq}
        check_param_groups(self.param_groups)

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad.fill(0)

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
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m *= b1
                m += (1.0 - b1) * g                            # m = b1 m + (1 - b1) g
                v *= b2
                v += (1.0 - b2) * (g * g)                      # v = b2 v + (1 - b2) g^2
                step_size = lr / (1.0 - b1**t)
                denom = np.sqrt(v) / math.sqrt(1.0 - b2**t) + eps
                p.data -= step_size * (m / denom)

    def state_dict(self) -> dict:
        """torch's layout: state indexed by position over all groups, plus the group hyperparameters."""
        order = [p for g in self.param_groups for p in g["params"]]
        state = {i: self.state[id(p)] for i, p in enumerate(order) if id(p) in self.state}
        groups, i = [], 0
        for g in self.param_groups:
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": list(range(i, i + len(g["params"])))})
            i += len(g["params"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        order = [p for g in self.param_groups for p in g["params"]]
        if len(sd["param_groups"]) != len(self.param_groups):
            raise ValueError(f"optimizer state has {len(sd['param_groups'])} groups, expected {len(self.param_groups)}")
        for g, saved in zip(self.param_groups, sd["param_groups"]):
            if len(saved["params"]) != len(g["params"]):
                raise ValueError(f"optimizer group has {len(saved['params'])} params, expected {len(g['params'])}")
            g.update({k: (tuple(v) if k == "betas" else v) for k, v in saved.items() if k != "params"})
        self.state = {}
        for i, st in sd["state"].items():
            p = order[int(i)]
            for key in ("exp_avg", "exp_avg_sq"):
                if st[key].shape != p.data.shape or st[key].dtype != p.data.dtype:
                    raise ValueError(f"optimizer state {key} for param {i} has shape {st[key].shape} "
                                     f"{st[key].dtype}, expected {p.data.shape} {p.data.dtype}")
            self.state[id(p)] = {"step": int(st["step"]), "exp_avg": st["exp_avg"].copy(),
                                 "exp_avg_sq": st["exp_avg_sq"].copy()}


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
                          UserWarning, stacklevel=3)
        if not seen.isdisjoint(ids):
            raise ValueError("some parameters appear in more than one parameter group")
        seen.update(ids)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (default 1e-2, as torch)."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


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
