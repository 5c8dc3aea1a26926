"""What the commands share: the `--kernels` option and the one family of number validators.

Every command argument and every TrainConfig field is checked with the validators here, so a bad value
gets the same one line everywhere: "NAME must be EXPECTED, got VALUE", naming the argument or flag and
the value it expects. The predicates are config.py's (which GPTConfig checks its own fields with),
widened to NumPy's scalars for arguments given from code:

    is_int(v)    an integer, not a bool                          (config.py: _is_int)
    is_real(v)   a finite real number, not a bool                (config.py: _is_finite_number)
    check(name, value, ok, expected)                             the one message
    check_field(name, value, kind, ok, what)                     a JSON-typed field of a config
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import numpy as np

from ..config import _is_finite_number, _is_int
from ..fast import KERNELS

__all__ = ["add_kernels_argument", "check", "check_field", "is_int", "is_real"]


def add_kernels_argument(parser: argparse.ArgumentParser) -> None:
    """`--kernels {fast,textbook}` for train and sample (default fast)."""
    parser.add_argument("--kernels", choices=KERNELS, default="fast",
                        help="which implementation of the layers runs: fast (default) or textbook, the code the "
                             "docs derive (the same numbers to round-off; docs/performance.md)")


def is_int(value: Any) -> bool:
    """An integer that is not a bool: Python's int or a NumPy integer."""
    return _is_int(value) or isinstance(value, np.integer)


def is_real(value: Any) -> bool:
    """A finite real number that is not a bool: Python's int or float, or a NumPy integer or float.
    NaN, the infinities and ints beyond the float range are refused."""
    if isinstance(value, (np.integer, np.floating)):
        return bool(np.isfinite(value))
    return _is_finite_number(value)


def check(name: str, value: Any, ok: bool, expected: str, hint: str = "") -> None:
    """Raise ValueError("NAME must be EXPECTED, got VALUE" + hint) unless `ok`.

    `name` is what the user typed: the argument (`top_k`) or the flag (`--num-samples`); `expected` says
    what it must be, with its range (`an integer >= 1 (or None for no limit)`); `hint` follows the value
    (e.g. what to do instead)."""
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}{hint}")


def check_field(name: str, value: Any, kind: type, ok: Callable[[Any], bool], what: str) -> None:
    """A config field read from flags or JSON: `value` must be of `kind` (int, float, bool or str; a bool
    is never an int or a float, a NumPy scalar only where it subclasses the Python type) and satisfy `ok`.
    The message names the kind: "batch_size must be >= 1 (int), got 2.0". A config converts JSON's ints
    for its float fields before calling this, so an int given here for a float is refused."""
    right_kind = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    check(name, value, right_kind and bool(ok(value)), f"{what} ({kind.__name__})")
