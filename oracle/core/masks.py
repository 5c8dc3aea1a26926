"""Dropout masks and other random draws, made repeatable: the first forward records, every later forward
(finite differences, repeated runs) replays, and the torch side receives the same draws. `check` takes a
mask source, a list of masks in draw order, or `NumpyRandomReplay(seed)` (`mask_tape`). NumPy only.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import numpy as np

from .report import CheckError


class MaskTape:
    """Makes the NumPy side's random draws repeatable and hands the same draws to torch.

    The first forward records; every later forward (finite differences, repeated runs) replays the
    recording. Subclasses say how the NumPy side receives masks (`forward_kwargs`, `context`) and
    what the torch side gets (`for_torch`): `reference(*tensors, masks=tape.for_torch())`."""

    def __init__(self):
        self.replaying = False

    def forward_kwargs(self) -> dict:
        return {}

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        yield

    def start(self) -> None:
        """Called before every forward: the first records, the rest replay."""

    def finish(self) -> None:
        """Called after every forward."""
        self.replaying = True

    def for_torch(self):
        raise NotImplementedError

    def empty(self) -> bool:
        raise NotImplementedError


class SourceMasks(MaskTape):
    """A mask source `source(name, shape, p, dtype) -> mask`, passed to the forward as `masks=`.
    Masks are recorded by name; torch gets the dict {name: mask}."""

    def __init__(self, source: Callable):
        super().__init__()
        self.source, self.drawn = source, {}

    def __call__(self, name, shape, p, dtype):
        if self.replaying:
            if name not in self.drawn:
                raise CheckError(f"dropout {name!r} drew a mask on a repeated forward but not on the first")
            return self.drawn[name]
        if name in self.drawn:
            raise CheckError(f"dropout {name!r} drew twice in one forward: masks are keyed by name, give each "
                             f"dropout its own name")
        self.drawn[name] = np.asarray(self.source(name, shape, p, dtype))
        return self.drawn[name]

    def forward_kwargs(self) -> dict:
        return {"masks": self}

    def for_torch(self):
        return dict(self.drawn)

    def empty(self) -> bool:
        return not self.drawn


class ListMasks(MaskTape):
    """Masks given as a list in draw order: the forward's `masks=` source hands them out one per draw
    (whatever name it asks by); torch gets the list."""

    def __init__(self, masks: Sequence[np.ndarray]):
        super().__init__()
        self.masks, self.next = [np.asarray(m) for m in masks], 0

    def start(self) -> None:
        self.next = 0

    def __call__(self, name=None, shape=None, p=None, dtype=None):
        if self.next >= len(self.masks):
            raise CheckError(f"the forward drew mask {self.next} ({name!r}) but only {len(self.masks)} were given")
        mask = self.masks[self.next]
        if shape is not None and tuple(mask.shape) != tuple(shape):
            raise CheckError(f"mask {self.next} ({name!r}): given shape {mask.shape}, the forward asked for {tuple(shape)}")
        self.next += 1
        return mask if dtype is None else mask.astype(dtype)

    def forward_kwargs(self) -> dict:
        return {"masks": self}

    def for_torch(self):
        return list(self.masks)

    def empty(self) -> bool:
        return not self.masks


_NP_RANDOM = ("rand", "random", "random_sample", "uniform", "binomial", "randn", "standard_normal", "normal",
              "randint", "choice", "permutation")


class NumpyRandomReplay(MaskTape):
    """Records the draws the NumPy code makes through `np.random.<fn>` (rand, random, uniform, binomial,
    randn, normal, randint, choice, ...) during the first forward, seeded with `seed`, and replays
    them, in draw order, on every later forward. torch gets the list of draws, in order.

    The code must call the functions through the module (`np.random.rand(...)`), not through names it
    imported before the check, and must not use a `Generator` of its own. The global NumPy random
    state is restored afterwards."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed, self.draws, self.next = seed, [], 0

    def start(self) -> None:
        self.next = 0

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        saved = {name: getattr(np.random, name) for name in _NP_RANDOM}
        state = np.random.get_state()
        if not self.replaying:
            np.random.seed(self.seed)

        def wrap(name, real):
            def drawn(*args, **kwargs):
                if not self.replaying:
                    out = real(*args, **kwargs)
                    self.draws.append((name, np.array(out, copy=True)))
                    return out
                if self.next >= len(self.draws):
                    raise CheckError(f"np.random.{name} was called on a repeated forward after all "
                                     f"{len(self.draws)} recorded draws were used: the forward must draw the same "
                                     f"way every time")
                recorded, value = self.draws[self.next]
                if recorded != name:
                    raise CheckError(f"draw {self.next}: the first forward called np.random.{recorded}, this one "
                                     f"np.random.{name}")
                self.next += 1
                return value.copy() if value.ndim else value[()]
            return drawn

        try:
            for name, real in saved.items():
                setattr(np.random, name, wrap(name, real))
            yield
        finally:
            for name, real in saved.items():
                setattr(np.random, name, real)
            np.random.set_state(state)

    def for_torch(self):
        return [value for _, value in self.draws]

    def empty(self) -> bool:
        return not self.draws


def mask_tape(masks) -> MaskTape | None:
    """A MaskTape from what `check` accepts: None, a MaskTape, a callable mask source or a list."""
    if masks is None or isinstance(masks, MaskTape):
        return masks
    if callable(masks):
        return SourceMasks(masks)
    if isinstance(masks, (list, tuple)):
        return ListMasks(masks)
    raise CheckError(f"masks: give a callable (name, shape, p, dtype) -> mask, a list in draw order or "
                     f"NumpyRandomReplay(seed), got {type(masks).__name__}")
