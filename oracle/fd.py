"""The second oracle: central finite differences in float64, independent of PyTorch.

For a layer f and a fixed random upstream gradient dout, the scalar L = sum(f(x) * dout) has
dL/dθ = the backward's gradient for every input or parameter θ. Each sampled coordinate is
perturbed by ±h and (L(θ+h) - L(θ-h)) / 2h is compared with the analytic value. This catches a
layer and its twin that are wrong the same way (RoPE, ALiBi and the replayed dropout masks are
written by hand on both sides). Step and tolerance: oracle/tolerance.py.
"""

from __future__ import annotations

import numpy as np

from reference.layers import DropoutMasks, name_dropouts

from . import tolerance as tol_policy
from .harness import Report, ReplayMasks, TensorCheck, run_reference


def finite_difference_check(ref, inputs: tuple, *, case: str = "layer", seed: int = 0, dropout: bool = False,
                            coords: int = 12, step: float = tol_policy.FD_STEP) -> Report:
    """Compare the analytic gradients of `ref` (float64) with central differences at `coords`
    random coordinates of the first input (if floating) and of every parameter."""
    report = Report(case, "float64 (finite differences)")
    params = dict(ref.named_parameters())
    if any(p.data.dtype != np.float64 for p in params.values()) or any(
            np.asarray(x).dtype.kind == "f" and np.asarray(x).dtype != np.float64 for x in inputs):
        report.problems.append("finite differences need float64 parameters and inputs")
        return report
    name_dropouts(ref)
    masks = None
    if dropout:
        recorder = DropoutMasks(np.random.default_rng(seed + 1), record=True)
        run_reference(ref, inputs, seed, recorder)
        masks = ReplayMasks(recorder.drawn)                    # the same masks for every evaluation
    _, dout, dx, grads = run_reference(ref, inputs, seed, masks)
    grads = {n: g.copy() for n, g in grads.items()}

    def loss() -> float:
        out, _ = ref.forward(*inputs, masks=masks) if masks is not None else ref.forward(*inputs)
        return float(np.sum(np.asarray(out, np.float64) * dout))

    targets = [(n, params[n].data, grads[n], "param") for n in params]
    if dx is not None:
        targets.insert(0, ("input grad", inputs[0], dx, "input"))
    rng = np.random.default_rng(seed + 2)
    for name, array, analytic, kind in targets:
        flat = array.reshape(-1)                               # a view: perturbations reach the layer
        picks = rng.choice(flat.size, size=min(coords, flat.size), replace=False)
        numeric = np.empty(picks.size)
        for j, i in enumerate(picks):
            orig = flat[i]
            flat[i] = orig + step
            up = loss()
            flat[i] = orig - step
            down = loss()
            flat[i] = orig
            numeric[j] = (up - down) / (2 * step)
        sampled = analytic.reshape(-1)[picks]
        diff = np.abs(sampled - numeric)
        worst = int(np.argmax(diff))
        scale = max(float(np.abs(analytic).max()), float(np.abs(numeric).max()))
        err = float(diff[worst]) / scale if scale > 0 else float(diff[worst])
        where = tuple(int(k) for k in np.unravel_index(int(picks[worst]), array.shape))
        report.checks.append(TensorCheck(f"{name} (fd)" if kind == "input" else f"{name}.grad (fd)", kind, err,
                                         float(diff[worst]), where, float(sampled[worst]), float(numeric[worst]),
                                         tol_policy.FD_TOL))
    return report
