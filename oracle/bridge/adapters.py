"""The project's layers as oracle.core sees them: the part of the oracle that knows the reference's layer
protocol (reference/module.py): `forward(*inputs[, masks]) -> (out, cache)`, `backward(dout, cache) -> dx`,
`Parameter.grad` accumulated with `+=`, dropout masks drawn by name from a `reference.layers.DropoutMasks`.
`compare`, `consistency` and the finite-difference checks are thin users of oracle.core's `check`,
`consistency_check` and fd.py; `run_reference` and `run_twin` run the two sides by hand, for tests that
look at the tensors themselves.
"""

from __future__ import annotations

import copy
import inspect

import numpy as np
import torch

from reference.layers import DropoutMasks, name_dropouts

from oracle.core import fd as fd_checks
from oracle.core import tolerance
from oracle.core.check import check
from oracle.core.consistency import consistency_check
from oracle.core.params import Param
from oracle.core.report import CheckError, Report
from oracle.core.subject import seeded_dout

from .twins import load_reference_state
from .twins import name_dropouts as name_twin_dropouts


def layer_arguments(ref, inputs: tuple, *, seed: int = 0, dropout: bool = False) -> dict:
    """The keyword arguments of `check`, `consistency_check` and oracle.core.fd's checks for a reference layer.

    The first input carries the gradient when it is floating (the protocol's backward returns dx for
    the first input only); parameters are the layer's `named_parameters()` with their `.grad` buffers;
    dropout masks come from `DropoutMasks(default_rng(seed + 1))`, recorded by dropout name; the upstream
    gradient from default_rng(seed) (`seeded_dout`: the registered examples were found with it)."""
    name_dropouts(ref)
    caches: list = []

    def forward(*xs, masks=None):
        out, cache = ref.forward(*xs, masks=masks) if masks is not None else ref.forward(*xs)
        caches[:] = [cache]
        return out

    def backward(dout):
        return ref.backward(dout, caches[0])

    first_float = bool(inputs) and np.asarray(inputs[0]).dtype.kind == "f"
    return dict(forward=forward, backward=backward, inputs=tuple(inputs),
                params={n: Param(p.data, p.grad) for n, p in ref.named_parameters()},
                grad_inputs=(0,) if first_float else (), input_names=("input",) + tuple(f"input{i}" for i in range(1, len(inputs))),
                masks=DropoutMasks(np.random.default_rng(seed + 1)) if dropout else None, seed=seed,
                dout=lambda out: seeded_dout(out, seed))


def compare(ref, twin, inputs: tuple, *, case: str = "layer", seed: int = 0, dropout: bool = False,
            ill_conditioned: bool = False) -> Report:
    """Compare a reference layer with its twin: forward, input gradient and every parameter gradient.

    `twin` is a torch module with the same parameter names (any dtype; it is copied and cast).
    Inputs are numpy arrays; the first, if floating, is the one whose gradient is compared.
    float64 runs are judged against torch float64; float32 runs against torch float64 on the
    same inputs, relative to torch float32's own error (oracle/core/tolerance.py); `ill_conditioned`, for
    inputs known to be ill-conditioned only, as in `oracle.check`. Gradients must accumulate (+=).
    A thin user of `oracle.check`.
    """
    name_twin_dropouts(twin)
    ours = {k: v.shape for k, v in ref.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in twin.state_dict().items()}
    if ours != theirs:
        report = Report(case, "/".join(sorted({str(v.dtype) for v in ref.state_dict().values()})) or "float64")
        only_ours, only_theirs = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        shapes = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
        report.problems.append(f"parameters not compared: only in reference {only_ours}, only in twin {only_theirs}, "
                               f"different shapes {[(k, ours[k], theirs[k]) for k in shapes]}")
        return report
    if dropout and "masks" not in inspect.signature(ref.forward).parameters:
        report = Report(case, "float64")
        report.problems.append("dropout was requested but the layer's forward takes no masks: no mask was drawn")
        return report
    try:
        return check(reference=twin, accumulates=True, case=case, ill_conditioned=ill_conditioned,
                     **layer_arguments(ref, inputs, seed=seed, dropout=dropout))
    except CheckError as e:                                    # a layer whose shapes differ: a failing report
        report = Report(case, "float64")
        report.problems.append(str(e))
        return report


def consistency(ref, inputs: tuple, *, case: str = "layer", seed: int = 0, dropout: bool = False) -> Report:
    """`oracle.core.consistency_check` on a reference layer (its gradients accumulate)."""
    return consistency_check(accumulates=True, case=case, **layer_arguments(ref, inputs, seed=seed, dropout=dropout))


def finite_difference_check(ref, inputs: tuple, *, case: str = "layer", seed: int = 0, dropout: bool = False,
                            coords: int = 12, step: float = tolerance.FD_STEP) -> Report:
    """Central differences in float64 at `coords` random coordinates of the first input (if floating) and
    of every parameter (oracle.core.fd.sampled_check on the layer)."""
    return fd_checks.sampled_check(case=case, coords=coords, step=step, **layer_arguments(ref, inputs, seed=seed, dropout=dropout))


def jacobian_check(ref, inputs: tuple, *, case: str = "layer", seed: int = 0, dropout: bool = False) -> Report:
    """oracle.core.fd.jacobian_check on a reference layer: the full Jacobian, every input and parameter."""
    return fd_checks.jacobian_check(case=case, **layer_arguments(ref, inputs, seed=seed, dropout=dropout))


def directional_check(ref, inputs: tuple, *, case: str = "layer", seed: int = 0, dropout: bool = False) -> Report:
    """oracle.core.fd.directional_check on a reference layer: one random direction over everything."""
    return fd_checks.directional_check(case=case, **layer_arguments(ref, inputs, seed=seed, dropout=dropout))


# ---------------------------------------------------------------------------------------------- both sides by hand

class ReplayMasks:
    """A mask source that hands back masks recorded earlier (for finite differences and replays)."""

    def __init__(self, drawn: dict[str, np.ndarray]):
        self.drawn = drawn

    def __call__(self, name, shape, p, dtype):
        return self.drawn[name]


def run_reference(ref, inputs: tuple, dout_seed: int, masks=None):
    """Forward, a random upstream gradient, backward: (output, dout, input grad, {name: grad})."""
    ref.zero_grad()
    out, cache = ref.forward(*inputs, masks=masks) if masks is not None else ref.forward(*inputs)
    dout = seeded_dout(out, dout_seed)
    dx = ref.backward(dout.copy(), cache)
    return np.asarray(out), dout, dx, {name: p.grad for name, p in ref.named_parameters()}


def run_twin(twin, state: dict, inputs: tuple, dout: np.ndarray, dtype: torch.dtype, masks: dict | None = None):
    """The twin on the same inputs and upstream gradient, in `dtype`: (output, input grad, {name: grad})."""
    twin = copy.deepcopy(twin).to(dtype)
    load_reference_state(twin, state, dtype)
    tin = []
    for i, x in enumerate(inputs):
        t = torch.from_numpy(np.array(x))
        if t.is_floating_point():
            t = t.to(dtype).requires_grad_(i == 0)
        tin.append(t)
    out = twin(*tin, masks=masks) if masks is not None else twin(*tin)
    (out * torch.from_numpy(np.array(dout)).to(dtype)).sum().backward()
    dx = tin[0].grad.numpy() if tin and tin[0].grad is not None else None
    grads = {n: (p.grad.numpy() if p.grad is not None else np.zeros(tuple(p.shape))) for n, p in twin.named_parameters()}
    return out.detach().numpy(), dx, grads


__all__ = ["DropoutMasks", "ReplayMasks", "compare", "consistency", "directional_check", "finite_difference_check",
           "jacobian_check", "layer_arguments", "run_reference", "run_twin"]
