"""Checkpoint integrity and leaks: checksums over every tensor and the header, non-finite
weights refused by name, version 1 files (no checksums) readable with a note, stale temporaries of killed saves
removed (and nothing else), and files written with the umask's mode."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from reference.programs import atomic
from reference.programs.checkpoint import (CHECKSUM_KEY, METADATA_KEY, CheckpointError, load_checkpoint, save_checkpoint,
                                  seal, tensor_digest)
from reference.programs.safetensors_io import load_file, save_file
from test_checkpoint import make_trainer, tiny_config

WTE = "transformer.wte.weight"


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory):
    """A small trained checkpoint's bytes (with dropout off, a tied embedding)."""
    d = tmp_path_factory.mktemp("good")
    trainer = make_trainer(tiny_config(out_dir=str(d), dropout=0.0))
    trainer.run(until=2)
    return trainer.save().read_bytes()


@pytest.fixture
def ckpt(tmp_path, good_bytes):
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(good_bytes)
    return path


def tensor_span(path, name):
    """Absolute byte range of tensor `name`'s data in the file (from the safetensors header)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    begin, end = json.loads(raw[8:8 + n])[name]["data_offsets"]
    return 8 + n + begin, 8 + n + end


def refused(path, *words) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


# ------------------------------------------------------------------------------------- checksums


@pytest.mark.parametrize("name", [WTE, "transformer.h.1.mlp.c_proj.bias", "optimizer.transformer.ln_f.weight.exp_avg"])
def test_one_flipped_bit_in_a_tensor_is_refused_naming_tensor_and_digests(ckpt, name):
    tensors, meta = load_file(ckpt)
    recorded = json.loads(meta[CHECKSUM_KEY])["tensors"][name]
    begin, end = tensor_span(ckpt, name)
    raw = bytearray(ckpt.read_bytes())
    raw[(begin + end) // 2] ^= 0x01                       # the lowest mantissa bit of one value
    ckpt.write_bytes(bytes(raw))
    flipped = load_file(ckpt)[0][name]
    assert np.isfinite(flipped).all() and not np.array_equal(flipped, tensors[name])   # still a plausible value
    msg = refused(ckpt, f"tensor {name!r} fails its checksum", f"recorded SHA-256 {recorded}",
                  f"found {tensor_digest(flipped)}")
    assert "corrupt" in msg


def test_an_edited_header_field_is_refused_naming_the_field(ckpt):
    raw = ckpt.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    head = raw[8:8 + n]
    edited = head.replace(b'\\"step\\": 2', b'\\"step\\": 7')   # same length: the file stays well-formed
    assert edited != head
    ckpt.write_bytes(raw[:8] + edited + raw[8 + n:])
    meta = load_file(ckpt)[1]
    recorded = json.loads(meta[CHECKSUM_KEY])["fields"]["step"]
    refused(ckpt, "the header fails its checksum", "header field 'step'", f"recorded SHA-256 {recorded}", "found ")


def test_an_edited_header_through_the_library_is_refused_too(ckpt):
    """Re-saved with a valid layout but the old checksums: the edit (best_val_loss) is named."""
    tensors, meta = load_file(ckpt)
    header = json.loads(meta[METADATA_KEY])
    header["best_val_loss"] = 0.001
    save_file(tensors, ckpt, metadata={**meta, METADATA_KEY: json.dumps(header)})
    refused(ckpt, "header field 'best_val_loss'")


def test_an_edited_safetensors_entry_is_refused(ckpt):
    """The library's own header: a tensor's shape reinterpreted (same bytes) no longer matches its digest."""
    tensors, meta = load_file(ckpt)
    name = "transformer.h.0.attn.c_proj.bias"
    tensors[name] = tensors[name][::-1].copy()              # same dtype, shape and bytes count, other order
    save_file(tensors, ckpt, metadata=meta)
    refused(ckpt, f"tensor {name!r} fails its checksum")


def test_missing_or_malformed_checksums_are_refused(ckpt):
    tensors, meta = load_file(ckpt)
    save_file(tensors, ckpt, metadata={METADATA_KEY: meta[METADATA_KEY]})
    refused(ckpt, "a version 2 checkpoint must carry checksums")
    save_file(tensors, ckpt, metadata={**meta, CHECKSUM_KEY: "{oops"})
    refused(ckpt, "not valid JSON")
    save_file(tensors, ckpt, metadata={**meta, CHECKSUM_KEY: "[]"})
    refused(ckpt, "must be an object with 'header', 'fields' and 'tensors'")
    sums = json.loads(meta[CHECKSUM_KEY])
    del sums["tensors"][WTE]
    save_file(tensors, ckpt, metadata={**meta, CHECKSUM_KEY: json.dumps(sums)})
    refused(ckpt, f"tensor {WTE!r} has no recorded checksum")


# ------------------------------------------------------------------------------------- non-finite


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weight_is_refused_naming_the_tensor(ckpt, bad):
    """Even with checksums recomputed over the NaN (a buggy writer): the values themselves are checked."""
    tensors, meta = load_file(ckpt)
    tensors[WTE][3, 5] = bad
    save_file(tensors, ckpt, metadata=seal(tensors, meta[METADATA_KEY]))
    refused(ckpt, f"tensor {WTE!r} holds non-finite values", "the first at index (3, 5)")


def test_nan_written_into_the_file_is_refused(ckpt):
    begin, _ = tensor_span(ckpt, WTE)
    raw = bytearray(ckpt.read_bytes())
    raw[begin:begin + 4] = np.array([np.nan], "<f4").tobytes()
    ckpt.write_bytes(bytes(raw))
    refused(ckpt, f"tensor {WTE!r} fails its checksum")


def test_saving_non_finite_weights_is_refused(tmp_path):
    trainer = make_trainer(tiny_config(out_dir="", dropout=0.0))
    dict(trainer.model.named_parameters())[WTE].data[0, 0] = np.nan
    path = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match=f"tensor {WTE!r} holds non-finite values"):
        save_checkpoint(path, trainer.model)
    assert not path.exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- version 1


def test_version_1_checkpoint_loads_with_a_note(ckpt, capsys):
    tensors, meta = load_file(ckpt)
    header = json.loads(meta[METADATA_KEY])
    header["version"] = 1
    save_file(tensors, ckpt, metadata={METADATA_KEY: json.dumps(header)})   # version 1: no checksums
    loaded = load_checkpoint(ckpt)
    assert not loaded.checksummed and "without checksums" in loaded.integrity_note
    assert loaded.integrity_note.startswith(f"note: {ckpt}")
    tensors[WTE][0, 0] = np.nan                                            # finiteness is still checked
    save_file(tensors, ckpt, metadata={METADATA_KEY: json.dumps(header)})
    refused(ckpt, "non-finite")


def test_a_fresh_checkpoint_has_no_note(ckpt):
    assert load_checkpoint(ckpt).integrity_note is None


# ------------------------------------------------------------------------------------- no leaks


def test_stale_temporaries_of_killed_saves_are_removed_and_nothing_else(tmp_path, good_bytes):
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(good_bytes)
    dead = 2**22 + 12345                                           # above pid_max's default: no such process
    while True:
        try:
            os.kill(dead, 0)
            dead += 1
        except ProcessLookupError:
            break
    stale = [f".ckpt.safetensors.{dead}.0123456789abcdef.tmp",    # ours, writer gone (a kill -9)
             f".ckpt.safetensors.{os.getpid()}.00000000000000ff.tmp",   # ours, this process, an earlier failure
             ".ckpt.safetensors.ab_c1234.tmp"]                     # mkstemp's naming
    keep = [f".ckpt.safetensors.{os.getppid()}.0123456789abcdef.tmp",   # a live writer's: never touched
            "ckpt.safetensors.1.0123456789abcdef.tmp",            # no leading dot
            f".ckpt.safetensors.{dead}.0123456789abcdef.tmp.bak",  # another suffix
            f".other.safetensors.{dead}.0123456789abcdef.tmp",     # another target
            ".ckpt.safetensors.1.0123.tmp",                        # not our random part
            "notes.txt"]
    for name in stale + keep:
        (tmp_path / name).write_bytes(b"x" * 1000)
    ckpt = load_checkpoint(path)
    from reference.programs.checkpoint import build_model
    save_checkpoint(path, build_model(ckpt), step=ckpt.step, tokenizer=ckpt.tokenizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + ["ckpt.safetensors"])


KILLED_SAVE = """
import os, signal, sys
import numpy as np
from reference.programs import atomic
from reference.programs.safetensors_io import save_file
atomic.os.replace = lambda a, b: os.kill(os.getpid(), signal.SIGKILL)   # kill -9 after the data, before the rename
save_file({"a": np.ones(10_000)}, sys.argv[1])
"""


def test_saves_killed_with_sigkill_leave_nothing_that_grows(tmp_path):
    """Real kill -9s in the middle of saves: each leaves one temporary; the next save removes them all."""
    import subprocess
    import sys
    path = tmp_path / "w.safetensors"
    save_file({"a": np.zeros(3)}, path)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    for kill in range(2):
        proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(path)], env=env, capture_output=True,
                              timeout=120)
        assert proc.returncode == -9, proc.stderr
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(temps) == 1 and temps[0].stat().st_size > 80_000     # this kill's, the earlier one removed
        assert load_file(path)[0]["a"].tolist() == [0, 0, 0]             # the previous file intact
    save_file({"a": np.ones(3)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_during_a_write_lands_after_it_and_leaves_no_temporary(tmp_path, monkeypatch, signame):
    """SIGINT (or SIGTERM, which `train` turns into the same KeyboardInterrupt) while the temporary exists
    (here: from inside fsync), between creating the file and its cleanup, would leave
    `.name.<pid>.<hex>.tmp` behind if it were raised there. It is held until the file is in place: the new
    file is whole, no temporary is left, and the KeyboardInterrupt follows."""
    import os
    import signal

    from reference.programs import atomic

    sig = getattr(signal, signame)

    def interrupt(signum, frame):                    # train's SIGTERM handler: as Ctrl-C
        raise KeyboardInterrupt
    handler = signal.default_int_handler if sig == signal.SIGINT else interrupt
    before = signal.signal(sig, handler)
    target = tmp_path / "ckpt.safetensors"
    target.write_bytes(b"old")
    real_fsync = os.fsync

    def interrupted_fsync(fd):
        signal.raise_signal(sig)                     # the signal while the temporary is open
        real_fsync(fd)
    monkeypatch.setattr(atomic.os, "fsync", interrupted_fsync)
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic.atomic_write(target, [b"new ", b"data"])
        assert signal.getsignal(sig) is handler                           # the handler is put back
    finally:
        signal.signal(sig, before)
    assert target.read_bytes() == b"new data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]


def test_remove_stale_temps_tolerates_a_missing_directory(tmp_path):
    assert atomic.remove_stale_temps(tmp_path / "nowhere" / "ckpt.safetensors") == []


# ------------------------------------------------------------------------------------- file modes


def test_checkpoints_and_prepared_data_get_the_umask_mode(tmp_path):
    import importlib.util
    import sys
    spec = importlib.util.spec_from_file_location("prepare_mod", os.path.join(os.path.dirname(__file__), "..",
                                                                                "data", "prepare.py"))
    prepare = importlib.util.module_from_spec(spec)
    sys.modules["prepare_mod"] = prepare
    spec.loader.exec_module(prepare)
    old = os.umask(0o022)
    try:
        save_file({"a": np.ones(3)}, tmp_path / "c.safetensors")
        prepare.prepare(b"hello world, hello numpy. " * 10, tmp_path / "data")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "c.safetensors",
                                                                  *(tmp_path / "data").iterdir()]}
        os.umask(0o027)
        save_file({"a": np.ones(3)}, tmp_path / "d.safetensors")
        assert stat.S_IMODE((tmp_path / "d.safetensors").stat().st_mode) == 0o640
    finally:
        os.umask(old)
    assert modes == {"c.safetensors": 0o644, "train.bin": 0o644, "val.bin": 0o644, "meta.json": 0o644}


# ------------------------------------------------------------------------------------- the CLI's words


def test_resume_refuses_a_corrupt_checkpoint_in_one_line(tmp_path, good_bytes, capsys):
    from reference.programs import cli
    run = tmp_path / "run"
    run.mkdir()
    path = run / "ckpt.safetensors"
    path.write_bytes(good_bytes)
    begin, end = tensor_span(path, WTE)
    raw = bytearray(good_bytes)
    raw[begin + 4] ^= 0x10
    path.write_bytes(bytes(raw))
    assert cli.main(["train", "--resume", str(run), "--max_iters", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: tensor {WTE!r} fails its checksum")
    assert cli.main(["sample", "--ckpt", str(path), "--max-new-tokens", "2"]) == 2
    assert "fails its checksum" in capsys.readouterr().err


def test_a_bad_file_on_disk_is_never_called_the_last_good_checkpoint(tmp_path, good_bytes):
    from reference.programs.train import _checkpoint_state
    path = tmp_path / "ckpt.safetensors"
    assert _checkpoint_state(path) == "no checkpoint was written"
    path.write_bytes(good_bytes)
    assert _checkpoint_state(path) == f"the last good checkpoint {path} (step 2) is left as it was"
    tensors, meta = load_file(path)
    tensors[WTE][0, 0] = np.nan
    save_file(tensors, path, metadata=seal(tensors, meta[METADATA_KEY]))
    state = _checkpoint_state(path)
    assert state.startswith("the checkpoint on disk fails its checks") and "non-finite" in state
    assert "good" not in state


def test_an_optimizer_listing_a_parameter_twice_is_refused_before_writing(tmp_path):
    """torch accepts duplicates within one group (with a warning) and updates them twice; such a state has
    no faithful checkpoint, so saving it is refused, not written as a file that cannot be loaded back."""
    import warnings
    from reference.optim import AdamW
    model = make_trainer(tiny_config(out_dir="", dropout=0.0)).model
    params = model.parameters()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = AdamW(params + [params[0]], lr=1e-3)
    path = tmp_path / "dup.safetensors"
    with pytest.raises(ValueError, match=r"the optimizer lists \['transformer.wte.weight'\] more than once"):
        save_checkpoint(path, model, opt)
    assert list(tmp_path.iterdir()) == []
