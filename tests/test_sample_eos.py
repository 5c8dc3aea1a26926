"""Sampling stops at eos as transformers' `generate` does: token for token against `generate` on the same
random GPT-2 directory (greedy, a batch whose rows stop at different steps, finished rows padded), the
`sample` command's text (the eos not printed, as decode(skip_special_tokens=True)), `--eos-token-id none`,
streaming, and where the default eos comes from (generation_config.json, config.json, a checkpoint's
tokenizer settings). A planted bug (eos ignored) is reported."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")

from reference.programs import hf  # noqa: E402
from reference.programs.sample import model_eos, resolve_eos  # noqa: E402
from reference.programs.sampling import generation  # noqa: E402
from test_hf import cli  # noqa: E402  (the command's exit code, stdout and stderr)

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
N = 10


def tiny_gpt2(vocab: int):
    torch.manual_seed(0)
    # initializer_range 0.2: peaked next-token distributions, so greedy text repeats tokens and stops early
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, initializer_range=0.2)).eval().double()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    theirs = tiny_gpt2(61)
    path = tmp_path_factory.mktemp("gpt2")
    theirs.save_pretrained(path)
    return theirs, hf.from_pretrained(path, dtype="float64")


PROMPT = np.random.default_rng(0).integers(0, 61, (2, 5))


def their_greedy(theirs, prompt, eos):
    with torch.no_grad():
        return theirs.generate(torch.as_tensor(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                               max_new_tokens=N, do_sample=False, eos_token_id=eos,
                               pad_token_id=0 if eos is None else np.atleast_1d(eos)[0].item()).numpy()


def mismatch(theirs, ours, eos) -> str | None:
    """None when our greedy ids equal transformers' (the stop included), else what differs."""
    want = their_greedy(theirs, PROMPT, eos)
    got = generation.generate(ours, PROMPT, N, greedy=True, eos_token_id=eos)
    if got.shape != want.shape or not np.array_equal(got, want):
        return f"eos {eos}: ours {got.tolist()} != transformers' {want.tolist()}"
    return None


def stopping_eos(theirs) -> int:
    """A token that greedy search from the first prompt draws at its third step and not before, so that
    eos ends that row mid-way."""
    free = their_greedy(theirs, PROMPT, None)[0, PROMPT.shape[1]:]
    for j in range(2, N):
        if free[j] not in free[:j]:
            return int(free[j])
    raise AssertionError(f"greedy text {free.tolist()} repeats from the start: no eos would stop it mid-way")


def test_greedy_stop_equals_transformers(pair):
    theirs, ours = pair
    eos = stopping_eos(theirs)
    assert mismatch(theirs, ours, eos) is None
    got = generation.generate(ours, PROMPT, N, greedy=True, eos_token_id=eos)
    assert got.shape[1] < PROMPT.shape[1] + N or (got[1, PROMPT.shape[1]:] == eos).any(), \
        "eos stopped nothing: the case proves nothing"
    assert mismatch(theirs, ours, [eos, (eos + 1) % 61]) is None
    assert mismatch(theirs, ours, None) is None


def test_planted_bug_eos_ignored_is_reported(pair, monkeypatch):
    theirs, ours = pair
    eos = stopping_eos(theirs)
    monkeypatch.setattr(generation, "eos_ids", lambda e, v: np.zeros(0, dtype=np.int64))
    assert mismatch(theirs, ours, eos) is not None


# ------------------------------------------------------------------------------------- sample


@pytest.fixture
def gpt2_dir(tmp_path):
    """A tiny GPT-2 directory with GPT-2's tokenizer file pair; config eos_token_id set below."""
    from test_bpe import make_bpe_files
    d = make_bpe_files(tmp_path / "gpt2-tiny")
    theirs = tiny_gpt2(len(json.loads((d / "vocab.json").read_text())))
    return d, theirs


def test_sample_stops_at_the_directorys_eos(gpt2_dir, capsys):
    from reference.programs.tokenizers import BPETokenizer
    d, theirs = gpt2_dir
    tok = BPETokenizer.from_dir(d)
    prompt = tok.encode("First Citizen:")[None]
    free = their_greedy(theirs, prompt, None)[0, prompt.shape[1]:]
    eos = next(int(t) for j, t in enumerate(free) if j >= 2 and t not in free[:j])
    theirs.config.eos_token_id = theirs.generation_config.eos_token_id = eos
    theirs.save_pretrained(d)
    assert json.loads((d / "generation_config.json").read_text())["eos_token_id"] == eos
    want = their_greedy(theirs, prompt, eos)[0]
    assert want[-1] == eos and len(want) < prompt.shape[1] + N
    base = ["sample", "--init-from", d, "--prompt", "First Citizen:", "--greedy", "--max-new-tokens", N]
    rc, out, err = cli(base, capsys)
    assert rc == 0, err
    assert out == tok.decode(want[:-1]) + "\n"                  # the eos is not printed
    rc, streamed, err = cli(base + ["--stream"], capsys)
    assert rc == 0 and streamed == out, err
    rc, two, err = cli(base + ["--num-samples", 2], capsys)
    assert rc == 0 and two == out + "---------------\n" + out, err
    rc, off, err = cli(base + ["--eos-token-id", "none"], capsys)   # generate(eos_token_id=None)
    assert rc == 0 and off == tok.decode(their_greedy(theirs, prompt, None)[0]) + "\n", err
    assert off != out
    rc, other, err = cli(base + ["--eos-token-id", int(free[0])], capsys)
    assert rc == 0 and other == tok.decode(prompt[0]) + "\n", err
    rc, beams, err = cli([a for a in base if a != "--greedy"] + ["--num-beams", 1], capsys)        # greedy search stops at the same eos
    assert rc == 0 and beams == out, err
    (d / "generation_config.json").unlink()                     # then config.json's eos_token_id
    assert model_eos(hf_dir=d) == [eos]
    rc, out2, err = cli(base, capsys)
    assert rc == 0 and out2 == out, err


@pytest.mark.parametrize("argv,message", [
    (["--eos-token-id", "100000"], "error: --eos-token-id: eos_token_id 100000 is out of range"),
    (["--eos-token-id", "x"], "invalid token id (or 'none') value: 'x'"),
])
def test_bad_eos_flag_is_one_line(gpt2_dir, capsys, argv, message):
    d, theirs = gpt2_dir
    theirs.save_pretrained(d)
    with pytest.raises(SystemExit) if "invalid" in message else _nothing():
        rc, out, err = cli(["sample", "--init-from", d, "--max-new-tokens", 2] + argv, capsys)
        assert rc == 2
    err = capsys.readouterr().err if "invalid" in message else err
    assert message in err and "Traceback" not in err


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_checkpoint_eos_comes_from_its_tokenizer_settings(gpt2_dir):
    from reference.programs.tokenizers import BPETokenizer, ByteTokenizer
    d, _ = gpt2_dir
    tok = BPETokenizer.from_dir(d)
    with_eos = BPETokenizer(tok.to_dict()["tokenizer_json"], tokenizer_config={"eos_token": "<|endoftext|>"})
    assert model_eos(SimpleNamespace(tokenizer=with_eos.to_dict())) == [tok.token_id("<|endoftext|>")]
    assert model_eos(SimpleNamespace(tokenizer=tok.to_dict())) is None          # no settings: no eos
    assert model_eos(SimpleNamespace(tokenizer=ByteTokenizer().to_dict())) is None
    assert resolve_eos(None, [5, 10**6], 100) == [5]           # a default id the model cannot draw is dropped
    assert resolve_eos([None], [5], 100) is None and resolve_eos([7, 8], [5], 100) == [7, 8]
