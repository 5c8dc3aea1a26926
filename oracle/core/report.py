"""What a check found: one `TensorCheck` per compared tensor, gathered in a `Report`, and the error
measure they share (`rel_error`, docs/tolerance.md). `CheckError` is the one exception every check
raises when it is called wrongly. NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class CheckError(ValueError):
    """The check was called wrongly: the message names the tensor and says what was expected."""


def rel_error(ours: np.ndarray, theirs: np.ndarray, floor: float = 0.0) -> tuple[float, float, tuple]:
    """(err, max_abs, index of the worst element): err = max|a - b| / max(max|b|, floor).

    `floor` is the absolute floor of docs/tolerance.md: the scale of the computation, below which a
    tensor's own scale is not trusted (a gradient that is exactly zero in truth). Shapes that differ
    give an infinite error; NaN on one side only is a failure; NaN on both sides, or the same
    infinity, agree."""
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(theirs, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf"), float("inf"), ()
    if a.size == 0:
        return 0.0, 0.0, ()
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - b)
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    diff = np.where(both_nan | same_inf, 0.0, diff)
    diff = np.where(np.isnan(diff), np.inf, diff)              # nan on one side only is a failure
    where = np.unravel_index(int(np.argmax(diff)), diff.shape)
    max_abs = float(diff[where])
    finite = np.abs(b[np.isfinite(b)])
    scale = max(float(finite.max()) if finite.size else 0.0, float(floor))
    return (max_abs / scale if scale > 0 else max_abs), max_abs, tuple(int(i) for i in where)


@dataclass
class TensorCheck:
    """One compared tensor: its error, where the worst element is, the tolerance it met or missed,
    and both full arrays (`ours_array`, `expected_array`; None for checks without arrays)."""

    name: str
    kind: str                   # "forward", "input", "param", "accumulate", "repeat", "noncontiguous", "fd", ...
    err: float
    max_abs: float
    where: tuple
    ours: float                 # our value at `where`
    theirs: float               # the expected value at `where`
    tol: float
    ours_array: np.ndarray | None = field(default=None, repr=False)
    expected_array: np.ndarray | None = field(default=None, repr=False)
    floor: float = 0.0          # the absolute floor the error was measured with
    defect: str = ""            # what makes the row fail whatever its error: a wrong shape, dtype, no gradient
    note: str = ""              # the harness's reading of a failure (a tied weight's missing share, ...)

    @property
    def passed(self) -> bool:
        return not self.defect and bool(self.err <= self.tol)

    def line(self) -> str:
        mark = "ok  " if self.passed else "FAIL"
        if self.defect and not np.isfinite(self.err):
            text = f"  {mark} {self.name:<44} {self.defect}"
        else:
            text = (f"  {mark} {self.name:<44} err {self.err:9.2e} (tol {self.tol:8.1e})  max|diff| {self.max_abs:9.2e}"
                    f"  at {self.where}: ours {self.ours:+.10g} theirs {self.theirs:+.10g}")
            text += f"  [{self.defect}]" if self.defect else ""
        return text + (f"\n         {self.note}" if self.note else "")

    def worst_element(self) -> str:
        """One line: where the worst element is, ours against the expected value there."""
        if self.defect and not np.isfinite(self.err):
            return f"{self.name}: {self.defect}"
        return (f"{self.name}: worst element at {self.where}: ours {self.ours:+.10g}, expected {self.theirs:+.10g} "
                f"(err {self.err:.2e}, tol {self.tol:.1e})" + (f"; {self.defect}" if self.defect else ""))


@dataclass
class Report:
    """Everything one comparison found; `passed` only when every tensor passed and nothing was left out.

    `checks` are in the order `order` names: "forward" (check: the output first, then the gradients in
    the order their tensors are first used by the reference's forward), "code" (the order the code
    under test first touches them, recorded), or "" (no ordering claim); then any extra checks.
    `draws` says how many random draws were recorded, used by the reference and left over."""

    case: str
    dtype: str
    checks: list[TensorCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    dout: np.ndarray | None = field(default=None, repr=False)
    order: str = "forward"
    draws: str = ""

    def assert_ok(self) -> None:
        """For pytest: nothing when the report passed; otherwise an AssertionError that prints the table,
        the first failing tensor and its worst element."""
        if self.passed:
            return
        first = self.first_failure
        lines = [str(self)]
        if first is not None:
            lines.append(f"first failing tensor: {first.worst_element()}")
        elif self.problems:
            lines.append(f"first problem: {self.problems[0]}")
        raise AssertionError("\n".join(lines))

    @property
    def passed(self) -> bool:
        return not self.problems and bool(self.checks) and all(c.passed for c in self.checks)

    def worst(self, kind: str) -> TensorCheck | None:
        of_kind = [c for c in self.checks if c.kind == kind]
        return max(of_kind, key=lambda c: c.err / c.tol) if of_kind else None

    @property
    def first_failure(self) -> TensorCheck | None:
        """The first failing tensor in forward order (None when every tensor passed)."""
        return next((c for c in self.checks if not c.passed), None)

    @property
    def last_failure(self) -> TensorCheck | None:
        """The failing gradient latest in forward order. A wrong backward corrupts every gradient computed
        after it, i.e. of every tensor used before it in the forward: the bug is usually in the backward
        of the step that comes right after this tensor in the forward."""
        grads = [c for c in self.checks if c.kind in ("input", "param") and not c.passed]
        return grads[-1] if grads else None

    def __getitem__(self, name: str) -> TensorCheck:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r} in this report; it has {[c.name for c in self.checks]}")

    def failures(self) -> list[str]:
        return self.problems + [c.line() for c in self.checks if not c.passed]

    def __str__(self) -> str:
        head = f"{self.case} [{self.dtype}]: {'PASS' if self.passed else 'FAIL'}"
        first, last = self.first_failure, self.last_failure
        what = {"forward": "forward order", "code": "the code's order"}.get(self.order)
        tail = [f"  first failure in {what}: {first.name}"] if what and first is not None and not self.problems else []
        if tail and last is not None and last is not first:
            tail.append(f"  last failing gradient in {what}: {last.name} (a backward bug usually sits just after it)")
        draws = [f"  {self.draws}"] if self.draws else []
        return "\n".join([head, *(f"  PROBLEM {p}" for p in self.problems), *(c.line() for c in self.checks),
                          *draws, *tail])


def value_at(a: np.ndarray, where: tuple) -> float:
    """a[where] as a float; nan when `where` does not index one element of `a`."""
    a = np.asarray(a, np.float64)
    return float(a[where]) if a.ndim == len(where) and a.size else float("nan")


def tensor_check(name: str, kind: str, ours, expected, tol: float, floor: float = 0.0) -> TensorCheck:
    """Measure `ours` against `expected` (rel_error with `floor`) as one line of a report."""
    err, max_abs, where = rel_error(ours, expected, floor)
    return TensorCheck(name, kind, err, max_abs, where, value_at(ours, where), value_at(expected, where), tol,
                       None if ours is None else np.asarray(ours), None if expected is None else np.asarray(expected),
                       floor)
