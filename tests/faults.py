"""A disk that fails in the middle of a write, for the tests of atomic writes (reference/programs/atomic.py)."""

from __future__ import annotations

import builtins

from reference.programs import atomic


class _FailingFile:
    """A file whose first write stores `keep` bytes of the data, then raises `error`."""

    def __init__(self, f, error: BaseException, keep):
        self.f, self.error, self.keep = f, error, keep

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, b):
        self.f.write(bytes(b)[: self.keep(len(b))])
        raise self.error

    def __getattr__(self, name):
        return getattr(self.f, name)


def fail_writes(monkeypatch, error: BaseException, keep=lambda n: n // 2) -> None:
    """Make every file reference/programs/atomic.py opens fail on its first write with `error`, after writing
    `keep(len(data))` bytes of it (half, by default): a disk that fills up or dies mid-write."""
    monkeypatch.setattr(atomic, "open", lambda p, mode: _FailingFile(builtins.open(p, mode), error, keep),
                        raising=False)
