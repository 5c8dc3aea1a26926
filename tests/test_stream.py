"""Streaming: `sample --stream` prints each token as it is drawn and flushes; with the byte tokenizer an
incomplete UTF-8 sequence waits until it completes, so the streamed text equals the decoded whole; Ctrl-C
keeps what was printed and exits with status 130 and one line (in-process, and with a real SIGINT)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference.programs.sampling import generation
from reference.programs.cli import main
from reference.programs.tokenizers import ByteTokenizer, CharTokenizer
from reference.programs.sampling.stream import TextStream

ROOT = Path(__file__).resolve().parents[1]
TEXT = "héllo wörld ☃ 日本語 — naïve café 🙂 " * 20


@st.composite
def byte_streams(draw):
    """UTF-8 text (multi-byte characters, emoji) with stray bytes spliced in, cut into random chunks."""
    data = bytearray(draw(st.text(min_size=0, max_size=40)).encode("utf-8"))
    for _ in range(draw(st.integers(0, 3))):                   # invalid or cut sequences as a model may draw them
        data.insert(draw(st.integers(0, len(data))), draw(st.integers(0x80, 0xFF)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    return bytes(data), cuts


@given(case=byte_streams())
def test_streamed_bytes_equal_the_decoded_whole(case):
    data, cuts = case
    tok, stream = ByteTokenizer(), TextStream(ByteTokenizer())
    ids = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    pieces = [stream.push(ids[a:b]) for a, b in zip([0] + cuts, cuts + [len(ids)])]
    pieces.append(stream.finish())
    assert "".join(pieces) == tok.decode(ids)


@given(text=st.text(alphabet="ab€😀", min_size=1, max_size=20))
def test_a_character_appears_once_its_last_byte_arrives(text):
    """Token by token: nothing of a multi-byte character is printed before its last byte, then all of it."""
    stream, shown = TextStream(ByteTokenizer()), ""
    for ch in text:
        encoded = ch.encode("utf-8")
        for i, byte in enumerate(encoded):
            piece = stream.push([byte])
            assert piece == ("" if i < len(encoded) - 1 else ch)
            shown += piece
    assert shown == text and stream.finish() == ""


def test_char_and_other_tokenizers_stream_too():
    chars = CharTokenizer.from_text("abc€")
    s = TextStream(chars)
    assert [s.push([i]) for i in chars.encode("a€c")] == ["a", "€", "c"] and s.finish() == ""

    class Utf8Pairs:                                            # a tokenizer we do not know: decoded whole each time
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")
    s = TextStream(Utf8Pairs())
    data = list("x😀y".encode("utf-8")) + [0xE2, 0x82]          # ends in an incomplete character
    pieces = [s.push([b]) for b in data] + [s.finish()]
    assert "".join(pieces) == Utf8Pairs().decode(data) and pieces[1:4] == ["", "", ""] and pieces[4] == "😀"
    with pytest.raises(ValueError):
        TextStream(ByteTokenizer()).push([256])


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    pytest.importorskip("tokenizers", reason="the BPE tokenizer needs the `hf` extra (tokenizers)")
    from test_bpe import make_bpe_files

    from reference.programs.tokenizers import BPETokenizer
    return BPETokenizer.from_dir(make_bpe_files(tmp_path_factory.mktemp("bpe")))


@given(text=st.text(max_size=30))
def test_bpe_streams_the_decoded_whole(bpe, text):
    """A byte-level BPE (GPT-2's kind) splits an unseen multi-byte character over several tokens: the stream
    holds its replacement character back until the character is complete, and ends with the whole text."""
    ids = bpe.encode(text)
    stream = TextStream(bpe)
    pieces = [stream.push([i]) for i in ids] + [stream.finish()]
    assert "".join(pieces) == bpe.decode(ids) == text
    assert "\ufffd" in text or not any("\ufffd" in p for p in pieces)     # no half character ever shown


# ------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny byte-level model trained for a few steps on text full of multi-byte characters."""
    from reference.programs.training.settings import TrainConfig
    from reference.programs.training.trainer import Trainer
    out = tmp_path_factory.mktemp("stream")
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    config = TrainConfig(out_dir=str(out), seed=1, n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4,
                         max_iters=30, learning_rate=1e-2, warmup_iters=2, lr_decay_iters=30, eval_interval=30,
                         eval_iters=1, pos="sinusoidal", optimizer="sgd", always_save_checkpoint=True)
    trainer = Trainer(config, train_data=ids[:600], val_data=ids[600:], tokenizer=tok)
    trainer.run()
    return trainer.save()


class Recorder(io.StringIO):
    """A stdout that records what had been written at each flush."""

    def __init__(self):
        super().__init__()
        self.flushed: list[str] = []

    def flush(self):
        self.flushed.append(self.getvalue())


SAMPLE = ["--max-new-tokens", "60", "--min-p", "0.05", "--repetition-penalty", "1.2", "--prompt", "h€llo ☃",
          "--temperature", "1.0", "--seed", "3"]


def test_stream_prints_token_by_token_the_same_text(ckpt, monkeypatch, capsys):
    assert main(["sample", "--ckpt", str(ckpt), *SAMPLE]) == 0
    whole = capsys.readouterr().out
    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["sample", "--ckpt", str(ckpt), "--stream", *SAMPLE]) == 0
    assert out.getvalue() == whole and not whole.isascii()
    growth = [b for a, b in zip(out.flushed, out.flushed[1:]) if b != a]
    assert len(growth) >= 20                                    # printed as it went, not at the end
    assert all(b.startswith(a) for a, b in zip(out.flushed, out.flushed[1:]))


def test_stream_with_several_samples_and_a_penalty_flag_refused(ckpt, capsys):
    assert main(["sample", "--ckpt", str(ckpt), *SAMPLE, "--num-samples", "2", "--stream"]) == 0
    streamed = capsys.readouterr().out
    assert main(["sample", "--ckpt", str(ckpt), *SAMPLE, "--num-samples", "2"]) == 0
    assert capsys.readouterr().out == streamed and streamed.count("---------------\n") == 1
    assert main(["sample", "--ckpt", str(ckpt), "--stream", "--presence-penalty", "3"]) == 2
    err = capsys.readouterr().err
    assert err == "error: presence_penalty must be a number in [-2, 2] (0 for none), got 3.0\n"


def test_ctrl_c_keeps_what_was_printed(ckpt, monkeypatch, capsys):
    """KeyboardInterrupt from the generator after 5 tokens: the prompt and those tokens stay printed, one line
    on stderr, status 130, no traceback."""
    real = generation._steps

    def interrupted(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if i == 5:
                raise KeyboardInterrupt
            yield item
    monkeypatch.setattr(generation, "_steps", interrupted)
    assert main(["sample", "--ckpt", str(ckpt), "--stream", *SAMPLE]) == 130
    out, err = capsys.readouterr()
    assert out.startswith("h€llo ☃") and len(out.encode("utf-8")) >= len("h€llo ☃".encode("utf-8")) + 1
    assert err.count("\n") == 1 and err.startswith("interrupted:") and "Traceback" not in err
    assert main(["sample", "--ckpt", str(ckpt), *SAMPLE]) == 130  # without --stream: the same clean exit
    assert capsys.readouterr().err.startswith("interrupted:")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_sigint_to_a_real_sample_stream(ckpt):
    """A real `python -m reference sample --stream` process, interrupted by SIGINT once it has printed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.Popen([sys.executable, "-m", "reference", "sample", "--ckpt", str(ckpt), "--stream",
                             "--max-new-tokens", "1000000", "--prompt", "h€llo"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.read(len("h€llo".encode("utf-8")) + 4)      # the prompt and a few tokens, streamed
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:                                # pragma: no cover - only if the child hangs
            proc.kill()
            proc.wait()
    assert first.startswith("h€llo".encode("utf-8"))
    assert proc.returncode == 130, err.decode(errors="replace")
    lines = err.decode("utf-8").splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted:") and b"Traceback" not in err
    assert (first + rest).endswith(b"\n")
