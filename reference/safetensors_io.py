"""Pickle-free reading and writing of the safetensors file format, with numpy only.

Layout of a ``.safetensors`` file::

    [8 bytes]  N, the header length, unsigned 64-bit little-endian
    [N bytes]  UTF-8 JSON object, padded with spaces to a multiple of 8 bytes:
               {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                ..., "__metadata__": {"key": "value"}}
    [rest]     raw little-endian, C-ordered tensor bytes; ``data_offsets`` are
               [begin, end) relative to the first byte after the header, and the
               tensors tile this buffer exactly: no gaps, no overlaps, nothing after.

Why not pickle (``np.save`` of object arrays, ``torch.save``): unpickling runs
arbitrary code chosen by whoever wrote the file, so loading a downloaded checkpoint
would be as dangerous as running a downloaded script.  Here the file is only ever
*data*: a JSON header parsed by ``json`` and byte ranges copied into fresh arrays.
Everything that could make those ranges lie (bad lengths, offsets, dtypes, truncation,
trailing bytes) is checked and refused with :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

import numpy as np

__all__ = ["CheckpointError", "DTYPES", "save_file", "load_file"]

# safetensors dtype code -> little-endian numpy dtype.
DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"), "U8": np.dtype("u1"), "U16": np.dtype("<u2"),
    "BOOL": np.dtype("?"),
}
_CODES = {dt: code for code, dt in DTYPES.items()}
_META = "__metadata__"


class CheckpointError(ValueError):
    """A safetensors file is malformed, truncated or otherwise not trustworthy."""


def save_file(tensors: dict[str, np.ndarray], path, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (and optional str->str ``metadata``) to ``path`` atomically."""
    if not isinstance(tensors, dict):
        raise TypeError(f"tensors must be a dict of name -> ndarray, got {type(tensors).__name__}")
    header: dict = {}
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata must be a dict with str keys and str values")
        header[_META] = dict(metadata)
    blobs = {}
    for name, arr in tensors.items():
        if not isinstance(name, str) or not name or name == _META:
            raise ValueError(f"invalid tensor name {name!r}: need a non-empty str other than {_META!r}")
        arr = np.asarray(arr)
        code = _CODES.get(arr.dtype.newbyteorder("<"))
        if code is None:
            raise TypeError(f"tensor {name!r}: unsupported dtype {arr.dtype}; supported: {', '.join(DTYPES)}")
        blobs[name] = (code, arr.shape, arr.astype(DTYPES[code], copy=False).tobytes(order="C"))
    # Lay out widest items first (stable) so every tensor starts aligned to its itemsize.
    pos, offsets = 0, {}
    for name in sorted(blobs, key=lambda n: -DTYPES[blobs[n][0]].itemsize):
        offsets[name] = [pos, pos + len(blobs[name][2])]
        pos += len(blobs[name][2])
    for name, (code, shape, _) in blobs.items():
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": offsets[name]}
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(head).to_bytes(8, "little"))
            f.write(head)
            for name in offsets:  # offsets is in file order
                f.write(blobs[name][2])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable; not possible everywhere (e.g. Windows)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _is_nat(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate keys {sorted({k for k in keys if keys.count(k) > 1})}")
    return dict(pairs)


def load_file(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read ``path``; return ``(tensors, metadata)`` as owned, writable, native-order arrays."""
    path = os.fspath(path)

    def fail(problem: str):
        raise CheckpointError(f"{path}: {problem}")

    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        fail(f"file is {len(raw)} bytes, shorter than the 8-byte header length")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        fail(f"header length {n} is larger than the file ({len(raw) - 8} bytes after the length)")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        fail(f"header is not valid UTF-8 JSON: {e}")
    if not isinstance(header, dict):
        fail(f"header must be a JSON object, got {type(header).__name__}")
    metadata = header.pop(_META, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        fail(f"{_META} must be an object mapping str to str")
    buf = memoryview(raw)[8 + n:]

    entries = []
    for name, info in header.items():
        if not name:
            fail("empty tensor name")
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            fail(f"tensor {name!r}: entry must have exactly the keys dtype, shape, data_offsets")
        code, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str) or code not in DTYPES:
            fail(f"tensor {name!r}: unknown dtype {code!r}; supported: {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not all(_is_nat(d) for d in shape):
            fail(f"tensor {name!r}: shape must be a list of non-negative ints, got {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_nat(o) for o in offs)
                and offs[0] <= offs[1]):
            fail(f"tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offs!r}")
        need = math.prod(shape) * DTYPES[code].itemsize
        if offs[1] - offs[0] != need:
            fail(f"tensor {name!r}: shape {shape} of dtype {code} needs {need} bytes "
                 f"but data_offsets {offs} span {offs[1] - offs[0]} (shape/offset mismatch)")
        entries.append((offs[0], offs[1], name))

    pos = 0
    for begin, end, name in sorted(entries):
        if begin < pos:
            fail(f"tensor {name!r}: data_offsets {[begin, end]} overlap the previous tensor (ends at {pos})")
        if begin > pos:
            fail(f"tensor {name!r}: gap of {begin - pos} bytes before its data_offsets {[begin, end]}")
        pos = end
    if pos > len(buf):
        fail(f"truncated: expected {pos} bytes of tensor data, found {len(buf)}")
    if pos < len(buf):
        fail(f"trailing garbage: {len(buf) - pos} unexpected bytes after the tensor data")

    tensors = {}
    for name, info in header.items():
        code, (begin, end) = info["dtype"], info["data_offsets"]
        chunk = buf[begin:end]
        if code == "BOOL" and np.any(np.frombuffer(chunk, dtype=np.uint8) > 1):
            fail(f"tensor {name!r}: BOOL data holds bytes other than 0 and 1")
        dt = DTYPES[code]
        tensors[name] = np.frombuffer(chunk, dtype=dt).reshape(info["shape"]).astype(dt.newbyteorder("="))
    return tensors, metadata
