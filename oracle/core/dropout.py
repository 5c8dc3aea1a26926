"""Dropout on the torch side that uses the NumPy forward's own random draws: `RecordedDropout(p, keep=...)`
is a drop-in for `nn.Dropout` that takes the next draw `NumpyRandomReplay` recorded, turns it into the
mask by the code's convention and scales by 1/(1-p); `replay_dropout(module)` swaps every nn.Dropout of
a torch module for one. Draws are taken in the order the NumPy forward made them, whatever module
nesting the reference has, and the report says how many were recorded, used and left over.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from . import masks as _masks
from .report import CheckError

KEEP = {                                  # the NumPy code's convention: which elements a draw keeps
    "rand > p": lambda r, p: r > p,
    "rand >= p": lambda r, p: r >= p,
    "rand < 1-p": lambda r, p: r < 1 - p,
    "rand <= 1-p": lambda r, p: r <= 1 - p,
    "mask": lambda r, p: r != 0,          # the draw is the keep mask itself (np.random.binomial(1, 1-p, shape))
}
MISAPPLIED = {                            # masks that are wrong the usual ways, tried when the output fails
    "rand < p": lambda r, p: r < p,       # the kept and the dropped swapped
    "rand > 1-p": lambda r, p: r > 1 - p,
}


def misapplied_dropout(reference, rerun) -> str:
    """When the output fails: which RecordedDropout of `reference`, with which wrong mask, makes the
    reference give our output. rerun(module) -> whether the output then matches ours. "" when none."""
    if not isinstance(reference, nn.Module):
        return ""
    for name, sub in reference.named_modules():
        if not isinstance(sub, RecordedDropout) or sub.p == 0:
            continue
        own = sub.keep if isinstance(sub.keep, str) else "its keep rule"
        for rule, keep in MISAPPLIED.items():
            trial = copy.deepcopy(reference)
            dict(trial.named_modules())[name].keep = keep
            if rerun(trial):
                return (f"the output matches the reference's when its dropout {name or 'module'!r} keeps where "
                        f"{rule} (not {own}): the code's dropout mask there is misapplied")
        trial = copy.deepcopy(reference)
        dict(trial.named_modules())[name].scale = False
        if rerun(trial):
            return (f"the output matches the reference's when its dropout {name or 'module'!r} does not scale by "
                    f"1/(1-p): the code's dropout forgets the scale")
    return ""


class RecordedDropout(nn.Module):
    """Inverted dropout with the NumPy forward's recorded draws: y = x * keep(draw, p) / (1 - p).

    p: the drop probability; p == 0 draws nothing and is the identity, as nn.Dropout(0) is (a NumPy
        layer that draws even at p = 0 needs draws_at_zero=True).
    keep: the code's convention, one of "rand > p", "rand >= p", "rand < 1-p", "rand <= 1-p", "mask"
        (the draw is the 0/1 keep mask), or a callable (draw tensor, p) -> bool tensor.
    scale: multiply the kept elements by 1/(1-p) (inverted dropout); False for code that scales elsewhere.
    Each call takes the next draw, which must have x's shape; outside a check it raises CheckError."""

    def __init__(self, p: float = 0.5, keep="rand > p", scale: bool = True, draws_at_zero: bool = False,
                 name: str = "dropout"):
        super().__init__()
        if not callable(keep) and keep not in KEEP:
            raise CheckError(f"RecordedDropout keep={keep!r}: expected one of {sorted(KEEP)} or a callable")
        self.p, self.keep, self.scale, self.draws_at_zero, self.name = float(p), keep, scale, draws_at_zero, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0 and not self.draws_at_zero:
            return x
        draws = _masks.ACTIVE[-1] if _masks.ACTIVE else None
        if draws is None:
            raise CheckError(f"{self.name}: RecordedDropout runs only inside a check with "
                             f"masks=NumpyRandomReplay(...): there are no recorded draws to take")
        draw = torch.as_tensor(draws.take(f"{self.name} (RecordedDropout, p={self.p})", tuple(x.shape)))
        rule = self.keep if callable(self.keep) else KEEP[self.keep]
        kept = rule(draw, self.p).to(x.dtype)
        return x * kept / (1 - self.p) if self.scale and self.p < 1 else x * kept

    def extra_repr(self) -> str:
        return f"p={self.p}, keep={self.keep!r}"


def replay_dropout(module: nn.Module, keep="rand > p", **kwargs) -> nn.Module:
    """Swap every nn.Dropout inside `module` (in place, and returned) for a RecordedDropout with the same p,
    named by its path, so that a torch model written with nn.Dropout replays the NumPy draws."""
    for name, child in list(module.named_modules()):
        for key, sub in list(child.named_children()):
            if isinstance(sub, nn.Dropout):
                setattr(child, key, RecordedDropout(sub.p, keep, name=f"{name}.{key}" if name else key, **kwargs))
    return module
