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
        return Draws(list(self.masks), [f"mask {i}" for i in range(len(self.masks))])

    def empty(self) -> bool:
        return not self.masks


_NP_RANDOM = ("rand", "random", "random_sample", "uniform", "binomial", "randn", "standard_normal", "normal",
              "randint", "choice", "permutation")
_GENERATOR = ("random", "uniform", "binomial", "standard_normal", "normal", "integers", "choice", "permutation",
              "bernoulli", "exponential")


class Draws(list):
    """The recorded draws handed to the torch side, in draw order; counts which were used (read by index,
    iterated or taken with `take`), so that the report can say how many were left over."""

    def __init__(self, values, labels=()):
        super().__init__(values)
        self.labels = list(labels) or [f"draw {i}" for i in range(len(values))]
        self.used: set[int] = set()
        self.cursor = 0

    def __getitem__(self, i):
        if isinstance(i, slice):
            self.used.update(range(len(self))[i])
        else:
            self.used.add(range(len(self))[i])
        return super().__getitem__(i)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def take(self, who: str, shape=None):
        """The next draw not yet taken, in draw order; `who` (a module's path) names the taker in errors."""
        if self.cursor >= len(self):
            raise CheckError(f"{who} asked for draw {self.cursor} of the NumPy forward's random draws, which made only "
                             f"{len(self)} ({', '.join(self.labels) or 'none'}): the reference draws more often "
                             f"than the code under test")
        value = self[self.cursor]
        if shape is not None and tuple(np.shape(value)) != tuple(shape):
            raise CheckError(f"{who} took draw {self.cursor} ({self.labels[self.cursor]}) of shape "
                             f"{tuple(np.shape(value))} but needs shape {tuple(shape)}: draws are taken in the order "
                             f"the NumPy forward made them")
        self.cursor += 1
        return value

    def summary(self) -> str:
        left = len(self) - len(self.used)
        kinds: dict[str, int] = {}
        for label in self.labels:
            kinds[label] = kinds.get(label, 0) + 1
        what = ", ".join(f"{k} x{n}" for k, n in kinds.items())
        return f"random draws: {len(self)} recorded ({what}), {len(self.used)} used by the reference, {left} left over"


ACTIVE: list[Draws] = []                # the draws of the reference run in progress (RecordedDropout reads them)


@contextlib.contextmanager
def active(draws: "Draws | None") -> Iterator[None]:
    """Make `draws` the ones `oracle.core.dropout.RecordedDropout` takes from while the reference runs."""
    ACTIVE.append(draws)
    try:
        yield
    finally:
        ACTIVE.pop()


class _RecordingGenerator:
    """Stands in for a numpy Generator during the forward: each draw recorded (first forward) or replayed."""

    def __init__(self, real, tape: "NumpyRandomReplay", label: str):
        self._real, self._tape, self._label = real, tape, label

    def __getattr__(self, name):
        attr = getattr(self._real, name)
        if name not in _GENERATOR:
            return attr
        return self._tape.wrap(f"{self._label}.{name}", attr)


class NumpyRandomReplay(MaskTape):
    """Records every random draw the NumPy forward makes, in order, and replays them on every later forward;
    torch gets the list of draws (`Draws`), and `oracle.core.dropout.RecordedDropout` takes them in order.

    Recorded: calls of `np.random.<fn>` (rand, random, uniform, binomial, randn, normal, randint, choice,
    ...) through the module, seeded with `seed`; and the draws of every numpy `Generator` created
    during the forward (`np.random.default_rng(...)`) or found on `within` (an object walked like
    `params_of`: `NumpyRandomReplay(within=model)` for a model that keeps `self.rng`; by default the
    object whose bound method the forward is). The global NumPy
    random state and each Generator's state are restored afterwards. The code must call np.random's
    functions through the module, not through names it imported before the check."""

    def __init__(self, seed: int = 0, within=None):
        super().__init__()
        self.seed, self.within, self.draws, self.next = seed, within, [], 0

    def start(self) -> None:
        self.next = 0

    def wrap(self, label: str, real):
        def drawn(*args, **kwargs):
            if not self.replaying:
                out = real(*args, **kwargs)
                self.draws.append((label, np.array(out, copy=True)))
                return out
            if self.next >= len(self.draws):
                raise CheckError(f"{label} was called on a repeated forward after all {len(self.draws)} recorded "
                                 f"draws were used: the forward must draw the same way every time")
            recorded, value = self.draws[self.next]
            if recorded != label:
                raise CheckError(f"draw {self.next}: the first forward called {recorded}, this one {label}")
            self.next += 1
            return value.copy() if value.ndim else value[()]
        return drawn

    def _generators(self):
        """(holder, key, generator) of each Generator on `within`."""
        from .params import _children, _walkable
        found, seen = [], set()

        def visit(obj):
            if id(obj) in seen:
                return
            seen.add(id(obj))
            for key, child in _children(obj):
                if isinstance(child, np.random.Generator):
                    found.append((obj, key, child))
                elif _walkable(child):
                    visit(child)
        if self.within is not None:
            visit(self.within)
        return found

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        saved = {name: getattr(np.random, name) for name in _NP_RANDOM}
        real_default_rng = np.random.default_rng
        state = np.random.get_state()
        gens = self._generators()
        gen_states = [g.bit_generator.state for *_, g in gens]
        if not self.replaying:
            np.random.seed(self.seed)

        def default_rng(*args, **kwargs):
            return _RecordingGenerator(real_default_rng(*args, **kwargs), self, "default_rng()")

        try:
            for name, real in saved.items():
                setattr(np.random, name, self.wrap(f"np.random.{name}", real))
            np.random.default_rng = default_rng
            for holder, key, g in gens:
                _put(holder, key, _RecordingGenerator(g, self, f"{type(holder).__name__}.{key}"))
            yield
        finally:
            for holder, key, g in gens:
                _put(holder, key, g)
            for (*_, g), st in zip(gens, gen_states):
                g.bit_generator.state = st
            for name, real in saved.items():
                setattr(np.random, name, real)
            np.random.default_rng = real_default_rng
            np.random.set_state(state)

    def for_torch(self):
        return Draws([value for _, value in self.draws], [label for label, _ in self.draws])

    def empty(self) -> bool:
        return not self.draws


def _put(holder, key, value) -> None:
    if isinstance(holder, dict):
        holder[key] = value
    elif isinstance(holder, list):
        holder[int(key)] = value
    else:
        setattr(holder, key, value)


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
