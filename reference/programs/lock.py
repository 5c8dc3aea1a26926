"""One run per directory: an exclusive OS lock that dies with the process holding it.

    with lock_directory(out_dir):          # out_dir/.lock, flock(LOCK_EX | LOCK_NB)
        ...                                # write checkpoints, logs, data

`train` (its out_dir), `data/prepare.py` (its output directory) and `export` (its target, locked by a
file beside it since the target itself is swapped in by a rename) take such a lock before writing
anything. A second process asking for a held lock gets `DirectoryLocked` at once, naming the directory
and the holder's pid; the commands print it as one line and exit with status 2.

Why `fcntl.flock` on a file: the kernel releases the lock when the holder's last descriptor closes, so a
process that ends in any way (a crash, `kill -9`) frees it; the file it leaves is no obstacle, because
what counts is the lock, not the file. The holder writes its pid into the file for the message.

Nothing is left behind: `release()` removes the lock file while still holding the lock, and removes
the directory too if this lock created it and it is empty. Removing a lock file races with a process
that opened it just before: that process would lock a file no longer in the directory. So after taking
the lock, `lock_file` checks that the path still names the file it locked, and starts again if not
(the same protocol as git's and Cargo's lock files built on flock).

POSIX only (fcntl); on a system without it the lock is not taken and the commands run as before.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:                                  # Windows: no flock
    fcntl = None

__all__ = ["LOCK_NAME", "DirectoryLock", "DirectoryLocked", "lock_directory", "lock_file"]

LOCK_NAME = ".lock"


class DirectoryLocked(OSError):
    """Another live process holds the lock: "DIR is in use by another run (pid N); ..."."""

    def __init__(self, where: Path, pid: int | None):
        holder = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(errno.EBUSY, f"{where} is in use by another run ({holder}); one run per directory: "
                                      f"wait for it to end or choose another directory")
        self.where, self.pid = where, pid

    def __str__(self) -> str:
        return self.strerror


def _holder(path: Path) -> int | None:
    """The pid the holder wrote into `path`; it writes it right after locking, so wait a moment for it."""
    for _ in range(20):
        try:
            text = path.read_text().strip()
        except OSError:
            text = ""
        if text.isdigit():
            return int(text)
        time.sleep(0.05)
    return None


class DirectoryLock:
    """A held lock: `release()` (or leaving the `with` block) frees it and removes what it created."""

    def __init__(self, path: Path, where: Path, fd: int | None, created: Path | None):
        self.path, self.where, self.fd, self.created = path, where, fd, created

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)            # still holding the lock: see the module docstring
        except OSError:
            pass
        os.close(self.fd)                                # frees the lock
        self.fd = None
        if self.created is not None:
            try:
                self.created.rmdir()                     # only if empty: nothing was written there
            except OSError:
                pass

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_file(path, where=None, *, created: Path | None = None) -> DirectoryLock:
    """Take the exclusive lock of the file `path` (created if needed) for `where` (named in the message,
    default the file's directory). DirectoryLocked if another open file description holds it."""
    path = Path(path)
    where = Path(where) if where is not None else path.parent
    if fcntl is None:
        return DirectoryLock(path, where, None, created)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DirectoryLocked(where, _holder(path)) from None
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)                                     # the file was removed by its last holder: again
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return DirectoryLock(path, where, fd, created)


def lock_directory(path, *, create: bool = True) -> DirectoryLock:
    """Lock the directory `path` through `path/.lock`. With `create`, a missing directory is made (and
    removed again on release if nothing else was written in it). NotADirectoryError for a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a directory")
    created = None
    if create and not path.exists():
        path.mkdir(parents=True, exist_ok=True)
        created = path
    try:
        return lock_file(path / LOCK_NAME, path, created=created)
    except BaseException:
        if created is not None:
            try:
                created.rmdir()
            except OSError:
                pass
        raise
