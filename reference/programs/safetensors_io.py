"""Pickle-free safetensors files, read and written by the safetensors library (Hugging Face's reference
implementation of the format, audited), with this project's atomic write on top.

Layout of a ``.safetensors`` file (the format's spec)::

    [8 bytes]  N, the header length, unsigned 64-bit little-endian
    [N bytes]  UTF-8 JSON object: {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
               ..., "__metadata__": {"key": "value"}}
    [rest]     raw little-endian, C-ordered tensor bytes, tiling the buffer exactly

Why not pickle (``np.save`` of object arrays, ``torch.save``): unpickling runs arbitrary code chosen by
whoever wrote the file. Here the file is only ever data.

What the library does, and what is ours:

* **Reading** is the library's alone (``safetensors.safe_open``): it parses and validates the header
  (lengths, offsets, overlaps, gaps, truncation, trailing bytes, dtypes) and copies each tensor out. Its
  ``SafetensorError`` (and the OS errors of opening) become :class:`CheckpointError` naming the file.
  `SafetensorsFile` exposes the header (names, dtypes, shapes, metadata) before any tensor is read, so a
  caller can refuse a file whose header claims something huge before allocating it.
* **Serialising** is the library's (``safetensors.numpy.save``: header, alignment, byte order).
* **Writing the bytes to disk** is ours (``reference.programs.atomic.atomic_write``). The library's
  ``save_file`` writes through a temporary file named ``.tmpXXXXXX``, which a killed save would leave
  behind under a name that no cleanup can safely claim as its own, does not fsync, and creates the file
  with mode 0o600. Ours uses its own temporary naming, removes its own stale temporaries, fsyncs, and
  respects the umask. The price: the serialised file is held in memory once while it is written.

Integrity (checksums, finite weights) is the checkpoint's business: reference/programs/checkpoint_format.py
says what is recorded, reference/programs/checkpoint_check.py checks it.
"""

from __future__ import annotations

import os

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as _serialize

from .atomic import atomic_write

__all__ = ["CheckpointError", "DTYPES", "SafetensorsFile", "save_file", "load_file"]

# The safetensors dtype codes this project reads and writes -> little-endian numpy dtype.
DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"), "U8": np.dtype("u1"), "U16": np.dtype("<u2"),
    "BOOL": np.dtype("?"),
}
_CODES = {dt: code for code, dt in DTYPES.items()}
_META = "__metadata__"


class CheckpointError(ValueError):
    """A safetensors file or checkpoint is malformed, truncated, corrupt or otherwise not trustworthy."""


def save_file(tensors: dict[str, np.ndarray], path, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (and optional str->str ``metadata``) to ``path`` atomically (see module doc).
    TypeError / ValueError for what the format cannot hold; OSError (e.g. ENOSPC) from the disk, with
    the previous file at ``path`` left as it was and no temporary file left behind."""
    if not isinstance(tensors, dict):
        raise TypeError(f"tensors must be a dict of name -> ndarray, got {type(tensors).__name__}")
    if metadata is not None and (not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise TypeError("metadata must be a dict with str keys and str values")
    arrays = {}
    for name, arr in tensors.items():
        if not isinstance(name, str) or not name or name == _META:
            raise ValueError(f"invalid tensor name {name!r}: need a non-empty str other than {_META!r}")
        arr = np.asarray(arr)
        code = _CODES.get(arr.dtype.newbyteorder("<"))
        if code is None:
            raise TypeError(f"tensor {name!r}: unsupported dtype {arr.dtype}; supported: {', '.join(DTYPES)}")
        arrays[name] = np.require(arr, dtype=DTYPES[code], requirements="C")   # (keeps 0-d)
    # metadata=None for an empty dict: safetensors 0.8 writes invalid JSON for no tensors and metadata {}
    atomic_write(path, _serialize(arrays, metadata=metadata or None))


class SafetensorsFile:
    """An open safetensors file (a context manager): `metadata`, `entries` {name: (code, shape)} in file
    order, both known before any tensor is read; `tensor(name)` reads one as a fresh native array."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            self._f = safe_open(self.path, framework="numpy")
            self.metadata = dict(self._f.metadata() or {})
            names = list(self._f.offset_keys())                # file order
            self.entries = {}
            for name in names:
                sl = self._f.get_slice(name)
                self.entries[name] = (sl.get_dtype(), tuple(sl.get_shape()))
        except SafetensorError as e:
            raise CheckpointError(f"{self.path}: not a valid safetensors file: {e}") from None
        except IsADirectoryError:
            raise CheckpointError(f"{self.path} is a directory, not a safetensors file") from None
        except FileNotFoundError:
            raise FileNotFoundError(f"no such file: {self.path}") from None
        except OSError as e:
            if os.path.isdir(self.path):
                raise CheckpointError(f"{self.path} is a directory, not a safetensors file") from None
            raise CheckpointError(f"{self.path}: cannot be read: {e.strerror or e}") from None
        for name, (code, _) in self.entries.items():
            if code not in DTYPES:
                self.close()
                raise CheckpointError(f"{self.path}: tensor {name!r} has dtype {code}; "
                                      f"this project reads {', '.join(DTYPES)}")

    def tensor(self, name: str) -> np.ndarray:
        try:
            arr = self._f.get_tensor(name)
        except SafetensorError as e:
            raise CheckpointError(f"{self.path}: tensor {name!r} cannot be read: {e}") from None
        return np.array(arr, dtype=DTYPES[self.entries[name][0]].newbyteorder("="), copy=True)

    def close(self) -> None:
        """Release the file (the library's memory map) now, not at garbage collection."""
        f, self._f = getattr(self, "_f", None), None
        if f is not None:
            f.__exit__(None, None, None)

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_file(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read ``path``; return ``(tensors, metadata)`` as owned, writable, native-order arrays, in file
    order. CheckpointError for anything the library refuses; FileNotFoundError for a missing file."""
    with SafetensorsFile(path) as f:
        return {name: f.tensor(name) for name in f.entries}, f.metadata
