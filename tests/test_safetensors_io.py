"""Tests for reference/programs/safetensors_io.py: round trips, interop with the official
safetensors package, refusal of corrupt files, and atomic saving."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from reference.programs import atomic
from reference.programs.safetensors_io import DTYPES, CheckpointError, load_file, save_file

from faults import fail_writes

ALL_CODES = list(DTYPES)
SHAPES = [(), (0,), (3, 0, 2), (5,), (2, 3, 4)]


def sample(code: str, shape, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = DTYPES[code]
    if code == "BOOL":
        out = rng.integers(0, 2, size=shape).astype(bool)
    elif dt.kind == "f":
        out = (rng.standard_normal(shape) * 100).astype(dt)
    else:
        info = np.iinfo(dt)
        out = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    return np.asarray(out)  # a real 0-d ndarray, not a numpy scalar


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def assert_owned(arr: np.ndarray) -> None:
    """A fresh array of its own (not a view of the file or of another tensor), writable, native order."""
    assert (arr.flags.owndata or arr.base is None or arr.base.flags.owndata) and arr.flags.writeable
    assert arr.flags.c_contiguous and arr.dtype.isnative


def mixed() -> dict[str, np.ndarray]:
    return {f"t.{code}.{i}": sample(code, shape, seed=i)
            for code in ALL_CODES for i, shape in enumerate(SHAPES)}


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("code", ALL_CODES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_round_trip_every_dtype_and_shape(tmp_path, code, shape):
    arr = sample(code, shape)
    save_file({"x": arr}, tmp_path / "a.safetensors")
    out, meta = load_file(tmp_path / "a.safetensors")
    assert list(out) == ["x"] and meta == {}
    assert_same(out["x"], arr)
    assert_owned(out["x"])


def test_round_trip_many_tensors_keeps_names_and_values(tmp_path):
    tensors = mixed()
    path = str(tmp_path / "m.safetensors")  # str paths work as well as Path
    save_file(tensors, path, metadata={"step": "12", "note": "héllo ✓", "": ""})
    out, meta = load_file(path)
    assert set(out) == set(tensors)             # (in file order, which is the library's: widest first)
    for name, arr in tensors.items():
        assert_same(out[name], arr)
        assert_owned(out[name])
    assert meta == {"step": "12", "note": "héllo ✓", "": ""}


def test_non_contiguous_big_endian_and_array_like_inputs(tmp_path):
    base = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    tensors = {
        "strided": base[:, ::2, 1::2],
        "transposed": base.T,
        "fortran": np.asfortranarray(base),
        "negative_stride": base[::-1],
        "big_endian_f": base.astype(">f8"),
        "big_endian_i": np.arange(7, dtype=">i4"),
        "from_list": [[1, 2], [3, 4]],
        "scalar": np.float64(2.5),
    }
    save_file(tensors, tmp_path / "nc.safetensors")
    out, _ = load_file(tmp_path / "nc.safetensors")
    for name, arr in tensors.items():
        ref = np.asarray(arr)
        np.testing.assert_array_equal(out[name], ref)
        assert out[name].dtype == ref.dtype.newbyteorder("=")
        assert_owned(out[name])


def test_loaded_arrays_are_independent_copies(tmp_path):
    save_file({"a": np.zeros(4, np.float32), "b": np.ones(4, np.float32)}, tmp_path / "c.safetensors")
    out, _ = load_file(tmp_path / "c.safetensors")
    out["a"][:] = 7  # writable, and writing must not leak into other tensors or later loads
    assert np.all(out["b"] == 1)
    again, _ = load_file(tmp_path / "c.safetensors")
    assert np.all(again["a"] == 0)


def test_metadata_none_and_empty(tmp_path):
    save_file({"a": np.ones(2)}, tmp_path / "n.safetensors", metadata=None)
    assert "__metadata__" not in read_header(tmp_path / "n.safetensors")
    assert load_file(tmp_path / "n.safetensors")[1] == {}
    save_file({}, tmp_path / "e.safetensors", metadata={})
    assert load_file(tmp_path / "e.safetensors") == ({}, {})


def test_layout_padded_and_aligned(tmp_path):
    tensors = {"u8": np.arange(3, dtype=np.uint8), "f64": np.ones(3), "f16": np.ones(5, np.float16),
               "i32": np.arange(3, dtype=np.int32)}
    path = tmp_path / "l.safetensors"
    save_file(tensors, path)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0
    header = json.loads(raw[8:8 + n])
    assert raw[8:8 + n].rstrip(b" ") == raw[8:8 + n].rstrip()  # padding is spaces only
    assert set(header) == set(tensors)
    spans = sorted(tuple(v["data_offsets"]) for v in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - n
    for info in header.values():
        assert info["data_offsets"][0] % DTYPES[info["dtype"]].itemsize == 0


# ----------------------------------------------------------------------------- interop

def test_official_numpy_reader_reads_our_file(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    tensors = mixed()
    save_file(tensors, tmp_path / "ours.safetensors", metadata={"k": "v"})
    theirs = st_numpy.load_file(str(tmp_path / "ours.safetensors"))
    assert set(theirs) == set(tensors)
    for name, arr in tensors.items():
        assert_same(theirs[name], arr)
    safetensors = pytest.importorskip("safetensors")
    with safetensors.safe_open(str(tmp_path / "ours.safetensors"), framework="np") as f:
        assert f.metadata() == {"k": "v"}


def test_official_torch_reader_reads_our_file(tmp_path):
    st_torch = pytest.importorskip("safetensors.torch")
    tensors = mixed()
    save_file(tensors, tmp_path / "ours.safetensors")
    theirs = st_torch.load_file(str(tmp_path / "ours.safetensors"))
    assert set(theirs) == set(tensors)
    for name, arr in tensors.items():
        assert tuple(theirs[name].shape) == arr.shape
        assert_same(theirs[name].numpy(), arr)


def test_we_read_official_numpy_writer_file(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    tensors = mixed()
    st_numpy.save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"format": "np", "a": "b"})
    out, meta = load_file(tmp_path / "theirs.safetensors")
    assert meta == {"format": "np", "a": "b"}
    assert set(out) == set(tensors)
    for name, arr in tensors.items():
        assert_same(out[name], arr)
        assert_owned(out[name])


# ----------------------------------------------------------------------------- corruption

def read_header(path: Path) -> dict:
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n])


def write_raw(path: Path, header, data: bytes = b"", *, head: bytes | None = None) -> Path:
    if head is None:
        head = json.dumps(header).encode("utf-8")
    path.write_bytes(len(head).to_bytes(8, "little") + head + data)
    return path


def refused(path: Path, *words: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_file(path)
    msg = str(info.value)
    assert str(path) in msg
    for word in words:
        assert word in msg, (word, msg)
    return msg


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "good.safetensors"
    save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(4, dtype=np.int64)},
              path, metadata={"k": "v"})
    return path


def test_checkpoint_error_is_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_truncated_or_extended_anywhere_is_refused(good):
    raw = good.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    for cut in (0, 1, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, len(raw) - 1):
        good.write_bytes(raw[:cut])
        refused(good)
    good.write_bytes(raw + b"\x00junk")
    refused(good)


def test_flipped_header_bytes(good):
    raw = bytearray(good.read_bytes())
    for pos, byte in ((7, 0xFF), (9, 0xFF), (8, ord("x"))):   # absurd length, not UTF-8, not JSON
        bad = bytearray(raw)
        bad[pos] = byte
        good.write_bytes(bytes(bad))
        refused(good)


U8 = {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}
CORRUPT = {   # name -> (header, data) or raw header bytes: each one a malformed file the library refuses
    "empty json": b"", "open brace": b"{", "bad value": b'{"a": }', "word": b"nope", "nan": b'{"a": NaN',
    "list header": ([], b""), "str header": ("str", b""), "int header": (3, b""),
    **{f"dtype {c!r}": ({"x": {**U8, "dtype": c}}, b"\0" * 4) for c in ["F8_X", "f32", "", 5, None]},
    **{f"shape {s!r}": ({"x": {**U8, "shape": s}}, b"\0") for s in [[-1], [1.5], "3", None, [2, "2"]]},
    **{f"offsets {o!r}": ({"x": {**U8, "data_offsets": o}}, b"\0")
       for o in [[1, 0], [0], [0, 1, 2], [-1, 0], [0.0, 1.0], "0,1", None]},
    "entry list": ({"x": []}, b"\0"), "entry str": ({"x": "F32"}, b"\0"),
    "entry no offsets": ({"x": {"dtype": "U8", "shape": [1]}}, b"\0"),
    "shape/offset mismatch": ({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}, b"\0" * 20),
    "overlap": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
    "gap": ({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
             "b": {"dtype": "U8", "shape": [2], "data_offsets": [3, 5]}}, b"\0" * 5),
    "beyond the file": ({"a": {"dtype": "U8", "shape": [100], "data_offsets": [0, 100]}}, b"\0" * 10),
    **{f"metadata {m!r}": ({"__metadata__": m}, b"") for m in [[], "x", {"a": 1}, {"a": ["b"]}]},
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_malformed_files_are_refused_naming_the_file(tmp_path, case):
    spec = CORRUPT[case]
    path = tmp_path / "bad.safetensors"
    if isinstance(spec, bytes):
        write_raw(path, None, head=spec)
    else:
        write_raw(path, spec[0], spec[1])
    refused(path, "not a valid safetensors file")


def test_a_dtype_numpy_cannot_hold_is_refused_by_name(tmp_path):
    header = {"x": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}
    msg = refused(write_raw(tmp_path / "u.safetensors", header, b"\0" * 4), "'x'", "BF16")
    assert all(c in msg for c in ALL_CODES)


def test_a_directory_is_refused_not_a_traceback(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        load_file(tmp_path)


def test_zero_size_tensors_share_offsets_fine(tmp_path):
    header = {"e1": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
              "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
              "e2": {"dtype": "F64", "shape": [3, 0], "data_offsets": [2, 2]}}
    out, _ = load_file(write_raw(tmp_path / "z.safetensors", header, b"\x01\x02"))
    assert out["e1"].shape == (0,) and out["e2"].shape == (3, 0)
    assert out["a"].tolist() == [1, 2]


def test_missing_file_is_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_file(tmp_path / "absent.safetensors")


# ----------------------------------------------------------------------------- save validation

@pytest.mark.parametrize("tensors, exc, word", [
    ([np.ones(2)], TypeError, "dict"),
    ({"": np.ones(2)}, ValueError, "invalid tensor name"),
    ({"__metadata__": np.ones(2)}, ValueError, "invalid tensor name"),
    ({3: np.ones(2)}, ValueError, "invalid tensor name"),
    ({"c": np.ones(2, np.complex64)}, TypeError, "unsupported dtype"),
    ({"o": np.array([object()])}, TypeError, "unsupported dtype"),
    ({"s": np.array(["abc"])}, TypeError, "unsupported dtype"),
    ({"u32": np.ones(2, np.uint32)}, TypeError, "unsupported dtype"),
])
def test_save_rejects_bad_tensors(tmp_path, tensors, exc, word):
    with pytest.raises(exc, match=word):
        save_file(tensors, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("meta", [{"a": 1}, {1: "a"}, ["a"], "a=b", {"a": None}])
def test_save_rejects_bad_metadata(tmp_path, meta):
    with pytest.raises(TypeError, match="metadata"):
        save_file({"a": np.ones(2)}, tmp_path / "x.safetensors", metadata=meta)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- atomicity

@pytest.mark.parametrize("target", ["replace", "fsync", "write"])
def test_failed_save_leaves_previous_file_and_no_temp(tmp_path, monkeypatch, target):
    path = tmp_path / "ckpt.safetensors"
    save_file({"old": np.arange(5, dtype=np.float32)}, path, metadata={"v": "1"})
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk on fire")

    if target == "write":  # fail in the middle of writing the bytes
        fail_writes(monkeypatch, OSError("disk on fire"))
    else:
        monkeypatch.setattr(atomic.os, target, boom)
    with pytest.raises(OSError, match="disk on fire"):
        save_file({"new": np.ones((100, 100))}, path, metadata={"v": "2"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]
    assert load_file(path)[1] == {"v": "1"}


def test_keyboard_interrupt_mid_save_also_cleans_up(tmp_path, monkeypatch):
    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_file({"a": np.ones(3)}, tmp_path / "k.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_cleanup_failure_does_not_mask_original_error(tmp_path, monkeypatch):
    def boom(*args):
        raise RuntimeError("replace failed")

    def no_unlink(*args):
        raise PermissionError("cannot unlink")

    monkeypatch.setattr(atomic.os, "replace", boom)
    monkeypatch.setattr(atomic.os, "unlink", no_unlink)
    with pytest.raises(RuntimeError, match="replace failed"):
        save_file({"a": np.ones(3)}, tmp_path / "c.safetensors")
    monkeypatch.undo()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.endswith(".tmp")
    save_file({"a": np.ones(3)}, tmp_path / "c.safetensors")    # the next save removes it (our own pid's)
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_directory_fsync_is_best_effort(tmp_path, monkeypatch):
    real_open = os.open

    def no_dir_open(path, *args, **kwargs):
        if os.path.isdir(path):
            raise PermissionError("no O_RDONLY on directories here")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "open", no_dir_open)
    save_file({"a": np.ones(3)}, tmp_path / "d.safetensors")
    monkeypatch.undo()
    assert_same(load_file(tmp_path / "d.safetensors")[0]["a"], np.ones(3))

    closed = []
    real_close = os.close

    def fail_fsync_on_dir(fd):
        raise OSError("EINVAL")

    monkeypatch.setattr(atomic.os, "close", lambda fd: (closed.append(fd), real_close(fd)))
    real_fsync = os.fsync
    calls = []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # the second fsync is the directory's
            fail_fsync_on_dir(fd)
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    save_file({"a": np.zeros(3)}, tmp_path / "d.safetensors")
    assert len(calls) == 2 and closed == [calls[1]]  # directory fd closed even though fsync failed
    monkeypatch.undo()
    assert_same(load_file(tmp_path / "d.safetensors")[0]["a"], np.zeros(3))


def test_overwrite_replaces_contents(tmp_path):
    path = tmp_path / "o.safetensors"
    save_file({"a": np.ones(1000)}, path)
    save_file({"b": np.zeros(2, np.int8)}, path)
    out, _ = load_file(path)
    assert list(out) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["o.safetensors"]


# ----------------------------------------------------------------------------- property

names = st.text(min_size=1, max_size=8).filter(lambda s: s != "__metadata__")
tensor = st.sampled_from([np.float32, np.float64, np.int64]).flatmap(
    lambda dt: arrays(dt, array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(tensors=st.dictionaries(names, tensor, max_size=5),
       meta=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3))
def test_property_round_trip(tensors, meta):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.safetensors"
        save_file(tensors, path, metadata=meta)
        out, meta_out = load_file(path)
    assert meta_out == meta
    assert set(out) == set(tensors)
    for name, arr in tensors.items():
        assert_same(out[name], arr)
        assert_owned(out[name])
