"""Atomic file writes that leave nothing behind, with the permissions users expect.

`atomic_write(path, data)` writes `data` (bytes, or a list of buffers) to a temporary file in the same
directory, fsyncs it, renames it over `path` and fsyncs the directory: a crash or a kill at any moment
leaves either the old file or the new one, never a mix.

The temporary file is named `.<name>.<pid>.<16 hex>.tmp`. A kill -9 mid-write cannot clean up after
itself, so every write first removes the stale temporaries of *this* target (`remove_stale_temps`):
files in the same directory whose name matches that pattern exactly and whose writer process is gone.
A file of another name, or a temporary of a writer that is still running, is never touched; stale
temporaries therefore never accumulate (tests/test_integrity.py).

Ctrl-C (SIGINT) and SIGTERM during a write are held back until the file is renamed into place
(`_interrupts_held`): an interrupt between creating the temporary and removing it (even between `open`
returning and its result being stored) would leave it behind, so the write finishes (it takes a moment)
and the signal is delivered right after it, to the handler that was in place.

Files are created with `open(..., "xb")`, so they get the usual mode, 0o666 less the umask (0o644 under
umask 022): the same for checkpoints as for prepared data. (`tempfile.mkstemp` would give 0o600.)
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "os_error_line", "remove_stale_temps", "temp_name", "temp_pattern"]


def temp_name(path: Path) -> Path:
    """A fresh temporary name for writing `path`: `.<name>.<pid>.<16 hex>.tmp` in its directory."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")


def temp_pattern(name: str) -> re.Pattern:
    """The temporaries of target file `name`: this module's naming, and `tempfile.mkstemp`'s 8-character
    names (`.<name>.<8 chars>.tmp`, what a writer using mkstemp with that prefix and suffix leaves), which
    carry no pid: such a file is removed whoever wrote it."""
    return re.compile(rf"\.{re.escape(name)}\.(?:(?P<pid>\d+)\.[0-9a-f]{{16}}|[a-z0-9_]{{8}})\.tmp")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False                      # ours, from an earlier write that did not finish
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True                       # exists (another user's) or cannot tell: keep the file
    return True


def remove_stale_temps(path) -> list[Path]:
    """Remove the stale temporaries of `path` (see the module docstring); return what was removed.
    Errors (a directory that cannot be listed, a file that cannot be removed) are ignored."""
    path = Path(path)
    pattern = temp_pattern(path.name)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or (m["pid"] is not None and _alive(int(m["pid"]))):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


@contextmanager
def _interrupts_held():
    """SIGINT and SIGTERM received inside the block are recorded, and raised again (through the handlers that
    were in place: KeyboardInterrupt, `train`'s SIGTERM handler, or the default action) when the block ends.
    Python runs signal handlers in the main thread only, so this works there, whichever thread the signal
    reached; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(received):          # each signal once, in the order it came
            signal.raise_signal(sig)


def atomic_write(path, data) -> None:
    """Write `data` (bytes-like, or an iterable of bytes-like chunks) to `path` atomically."""
    path = Path(path)
    remove_stale_temps(path)
    tmp = temp_name(path)
    chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    with _interrupts_held():
        f = open(tmp, "xb")               # "x": a fresh file, umask-respecting mode
        try:
            with f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    try:                                  # make the rename itself durable; not possible everywhere
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


_OS_ERRORS = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
              errno.EPERM: "operation not permitted"}


def os_error_line(e: OSError, fix: str, where=None) -> str:
    """One line for a failed write, without Python's `[Errno N]`: the path (the error's own, else
    `where`), what is wrong and `fix` (what to do, e.g. "choose a writable -o"); a full disk or quota
    says to free space instead.
    "cannot write /mnt/ro/a.png: the file system is read-only; choose a writable -o"."""
    where = e.filename if e.filename is not None else (where if where is not None else "the target")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space and try again"
    return f"cannot write {where}: {_OS_ERRORS.get(e.errno) or e.strerror or e}; {fix}"
