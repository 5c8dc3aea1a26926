"""Beam search (reference/programs/beam.py) against transformers' `generate(num_beams=k)`, on GPT-2 and
Llama directories built offline, float64, both paths: the same tokens, the same per-step scores and
sequence scores (to transformers' float32 rounding: it takes log-probabilities in float32), and our scores
equal, to float64 round-off, to the log-probabilities of the returned sequences recomputed from scratch.
The reordered KV cache gives what recomputing every beam without it gives."""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import pytest

from oracle.core.tolerance import FLOAT64_TOL
from reference import GPT, GPTConfig, KVCache
from reference.fast import use_kernels
from reference.programs.beam import beam_search, check_beam_flags, log_softmax, run_beams

V, T, N = 61, 5, 8
# transformers takes each step's log-probabilities from float32 logits, in float32, and sums them in
# float32: a few float32 roundings (2^-24 relative) of values of size |score| per step.
FLOAT32_SCORE_TOL = 4 * N * 2.0**-24


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1.0))


@pytest.fixture(scope="module")
def pair(request, tmp_path_factory):
    """{arch: (transformers model, ours)}: random float64 GPT-2 and Llama, saved and loaded as directories."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from oracle.bridge.hf import float64_llama
    from reference.programs import hf
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                   # tiny tensors: threads only add synchronisation
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    torch.manual_seed(0)
    # A larger initializer_range than the default makes the next-token distributions peaked, as a
    # trained model's are, so that beams part ways and eos is chosen.
    theirs = {
        "gpt2": GPT2LMHeadModel(GPT2Config(
            vocab_size=V, n_positions=T + N, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, initializer_range=0.2)),
        "llama": LlamaForCausalLM(LlamaConfig(
            vocab_size=V, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=T + N, bos_token_id=None, eos_token_id=None,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0}, initializer_range=0.2))}
    out = {}
    for arch, model in theirs.items():
        model = model.eval().double()
        path = tmp_path_factory.mktemp(arch)
        model.save_pretrained(path)
        if arch == "llama":
            float64_llama(model)                               # every step in float64 (oracle/hf.py)
        out[arch] = (model, hf.from_pretrained(path, dtype="float64"))
    return out


PROMPT = np.random.default_rng(0).integers(0, V, (2, T))


def first_token(model) -> int:
    """The most likely first token after the first prompt: as eos, it ends a beam at once."""
    return int(np.argmax(model.forward(PROMPT[:1])[0][0, -1]))


def generate_hf(model, k, lp, early_stopping, eos, n):
    import torch
    pad = eos[0] if isinstance(eos, list) else eos
    with torch.no_grad():
        out = model.generate(input_ids=torch.as_tensor(PROMPT), attention_mask=torch.ones(PROMPT.shape, dtype=torch.long),
                             max_new_tokens=N, num_beams=k, do_sample=False, length_penalty=lp,
                             early_stopping=early_stopping, eos_token_id=eos, pad_token_id=pad,
                             num_return_sequences=n, output_scores=True, return_dict_in_generate=True)
    scores = [s.numpy().astype(np.float64) for s in out.scores]
    if k == 1:                                                 # greedy search reports the logits
        scores = [log_softmax(s) for s in scores]
    seq_scores = None if k == 1 else out.sequences_scores.numpy()
    return out.sequences.numpy(), seq_scores, scores


def recomputed_scores(model: GPT, sequences, eos, lp) -> np.ndarray:
    """sum of log p(token) over each hypothesis' generated tokens (to its first eos) / length ** lp, from
    one forward of the whole sequence without a cache."""
    logp = log_softmax(model.forward(sequences[:, :-1])[0])    # (n, L - 1, V): position t predicts t + 1
    eos = [] if eos is None else np.atleast_1d(eos)
    out = []
    for row, lps in zip(sequences, logp):
        gen = row[T:]
        ends = np.flatnonzero(np.isin(gen, eos))
        length = ends[0] + 1 if ends.size else gen.size
        out.append(sum(lps[T - 1 + i, gen[i]] for i in range(length)) / length ** lp)
    return np.array(out)


def check_against_hf(theirs, ours, k, lp, early_stopping, eos):
    n = min(k, 2)
    seq, seq_scores, scores = generate_hf(theirs, k, lp, early_stopping, eos, n)
    for kernels in ("textbook", "fast"):
        use_kernels(ours, kernels)
        got = beam_search(ours, PROMPT, N, num_beams=k, length_penalty=lp, early_stopping=early_stopping,
                          eos_token_id=eos, num_return_sequences=n)
        where = f"{kernels}, k={k}, length_penalty={lp}, early_stopping={early_stopping}, eos={eos}"
        np.testing.assert_array_equal(got.sequences, seq, err_msg=where)
        assert len(got.scores) == len(scores), where
        e_steps = max(rel_err(a, b) for a, b in zip(got.scores, scores))
        assert e_steps <= FLOAT32_SCORE_TOL, f"per-step scores off by {e_steps:.1e} ({where})"
        if seq_scores is not None:
            e_seq = rel_err(got.sequences_scores, seq_scores)
            assert e_seq <= FLOAT32_SCORE_TOL, f"sequence scores off by {e_seq:.1e} ({where})"
        e64 = rel_err(got.sequences_scores, recomputed_scores(ours, got.sequences, eos, lp))
        assert e64 <= FLOAT64_TOL, f"sequence scores off their recomputation by {e64:.1e} ({where})"
    return seq


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_beam_search_equals_transformers(pair, arch, k):
    """Length penalties 0.5, 1, 2; no eos, one eos id, two; token for token and score for score."""
    theirs, ours = pair[arch]
    eos = first_token(ours)
    ended = False
    for lp, e in itertools.product([0.5, 1.0, 2.0], [None, eos, [eos, (eos + 1) % V]]):
        seq = check_against_hf(theirs, ours, k, lp, False, e)
        ended |= e is not None and bool(np.isin(seq[:, T:], e).any())
    assert ended, "eos never ended a hypothesis: the eos cases prove nothing"


def stopping_eos(model) -> int:
    """An eos id for which early_stopping changes our result: the tokens our beams generate without eos,
    most frequent first, tried in turn."""
    seq = beam_search(model, PROMPT, N, num_beams=4, num_return_sequences=4).sequences[:, T:]
    ids, counts = np.unique(seq, return_counts=True)
    for eos in ids[np.argsort(-counts, kind="stable")]:
        for lp in (0.5, 1.0, 2.0):
            runs = [beam_search(model, PROMPT, N, num_beams=4, length_penalty=lp, early_stopping=es,
                                eos_token_id=int(eos), num_return_sequences=2).sequences.tolist()
                    for es in (False, True, "never")]
            if runs[0] != runs[1] or runs[0] != runs[2]:
                return int(eos)
    raise AssertionError("no eos makes early_stopping matter: the cases would prove nothing")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_early_stopping_equals_transformers(pair, arch):
    """early_stopping True and "never" beside False, with an eos for which they differ."""
    theirs, ours = pair[arch]
    use_kernels(ours, "textbook")
    eos = stopping_eos(ours)
    for lp, es in itertools.product([0.5, 1.0, 2.0], [False, True, "never"]):
        check_against_hf(theirs, ours, 4, lp, es, eos)


@pytest.mark.parametrize("kernels", ["textbook", "fast"])
@pytest.mark.parametrize("pos,kv", [("learned", 4), ("rope", 2), ("alibi", 1)])
def test_reordered_cache_equals_recompute(kernels, pos, kv):
    """Beam search with the KV cache reordered after every step gives the tokens and scores of
    recomputing each running beam's whole sequence."""
    config = GPTConfig(vocab_size=23, block_size=16, n_layer=2, n_head=4, n_kv_head=kv, n_embd=16, pos=pos,
                       dtype="float64")
    model = use_kernels(GPT(config, seed=3), kernels)
    for p in model.parameters():
        p.data *= 8                                            # peaked distributions: beams part ways
    prompt = np.random.default_rng(1).integers(0, 23, (2, 4))
    for k, eos in ((3, None), (4, 5)):
        a = beam_search(model, prompt, 10, num_beams=k, eos_token_id=eos, num_return_sequences=k)
        b = beam_search(model, prompt, 10, num_beams=k, eos_token_id=eos, num_return_sequences=k, use_cache=False)
        np.testing.assert_array_equal(a.sequences, b.sequences)
        np.testing.assert_allclose(a.sequences_scores, b.sequences_scores, rtol=1e-12, atol=1e-13)
        for sa, sb in zip(a.scores, b.scores):
            np.testing.assert_allclose(sa, sb, rtol=1e-12, atol=1e-12)
        assert len({tuple(s) for s in a.sequences}) == len(a.sequences)   # the beams differ


def test_kv_cache_reorder():
    """reorder(index): row i continues from old row index[i]; rows may repeat and the batch may grow."""
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, dtype="float64")
    model = GPT(config, seed=0)
    idx = np.random.default_rng(0).integers(0, 11, (3, 6))
    cache = KVCache(config, batch=3)
    model.forward(idx[:, :5], kv_cache=cache)
    order = np.array([2, 0, 2, 1])
    cache.reorder(order)
    step, _ = model.forward(idx[order, 5:6], kv_cache=cache)
    np.testing.assert_allclose(step[:, 0], model.forward(idx[order])[0][:, -1], rtol=1e-12, atol=1e-13)
    assert cache.length == 6 and cache.layers[0].k.shape[0] == 4


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_beams=0), "num_beams must be an integer >= 1, got 0"),
    (dict(num_beams=2.0), "num_beams must be an integer >= 1, got 2.0"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences must be an integer from 1 to num_beams \\(2\\)"),
    (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1, got 0"),
    (dict(length_penalty=float("nan")), "length_penalty must be a finite number"),
    (dict(early_stopping="sometimes"), "early_stopping must be True, False or \"never\", got 'sometimes'"),
    (dict(eos_token_id=11), "eos_token_id 11 is out of range for vocab_size 11"),
    (dict(eos_token_id=[1, -1]), "eos_token_id -1 is out of range"),
    (dict(pad_token_id=12), "pad_token_id 12 is out of range"),
    (dict(max_new_tokens=5), "a prompt of 4 tokens plus max_new_tokens 5 is longer than the context \\(block_size 8\\)"),
    (dict(idx=np.zeros((0,), dtype=int)), "prompt must be non-empty token ids"),
    (dict(idx=np.array([[1, 11]])), "token id 11 is out of range for vocab_size 11"),
])
def test_bad_arguments_are_refused_in_one_line(kwargs, message):
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    args = dict(idx=np.zeros(4, dtype=int), max_new_tokens=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message) as e:
        beam_search(model, args.pop("idx"), args.pop("max_new_tokens"), **args)
    assert "\n" not in str(e.value)


# -------------------------------------------------------------------------------- sample --num-beams


def sample_parser() -> argparse.ArgumentParser:
    from reference.programs import sample
    parser = argparse.ArgumentParser()
    sample.add_arguments(parser)                               # the beam flags included
    return parser


@pytest.mark.parametrize("argv,message", [
    (["--num-beams", "2", "--top-p", "0.9"], "--top-p does not combine with --num-beams"),
    (["--num-beams", "2", "--temperature", "1.0"], "--temperature does not combine with --num-beams"),
    (["--num-beams", "2", "--greedy"], "--greedy does not combine with --num-beams"),
    (["--num-beams", "2", "--num-samples", "3"], "--num-samples 3 is more than --num-beams 2"),
    (["--num-beams", "0"], "--num-beams must be >= 1, got 0"),
    (["--length-penalty", "2"], "--length-penalty needs --num-beams K"),
    (["--eos-token-id", "3", "none"], "--eos-token-id none turns eos off: give it alone"),
])
def test_beam_flags_are_checked(argv, message):
    with pytest.raises(ValueError, match=message):
        check_beam_flags(sample_parser().parse_args(argv))


def test_run_beams_prints_the_best_hypotheses(capsys):
    from reference.programs.tokenizers import CharTokenizer
    tok = CharTokenizer.from_text("abcdefgh ")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8), seed=0)
    args = sample_parser().parse_args(["--num-beams", "3", "--num-samples", "2", "--max-new-tokens", "5",
                                       "--length-penalty", "0.5"])
    check_beam_flags(args)
    ids = tok.encode("abc")
    assert run_beams(args, model, tok, ids) == 0
    out, err = capsys.readouterr()
    best = beam_search(model, ids, 5, num_beams=3, length_penalty=0.5, num_return_sequences=2)
    assert out == "\n---------------\n".join(tok.decode(s) for s in best.sequences) + "\n"
    assert f"beam 1: score {best.sequences_scores[0]:.4f}" in err and "beam 2:" in err


@pytest.mark.parametrize("prompt,n,message", [
    ("abcdef", 60, "--max-new-tokens 60 plus the prompt's 6 tokens is longer than the context (block_size 64): "
                   "beam search keeps every position, so use --max-new-tokens 58 or less"),
    ("abcdef", 0, "--max-new-tokens must be >= 1 with --num-beams, got 0"),
    ("a" * 64, 1, "the prompt has 64 tokens, which leaves no room for a new one in the context (block_size 64): "
                  "beam search keeps every position, so shorten the prompt to at most 63 tokens"),
    ("abcdef", 58, None),
])
def test_beam_length_is_named_in_the_commands_words(capsys, prompt, n, message):
    """sample --num-beams with a prompt and --max-new-tokens that do not fit the context: one line that
    names the flag and the largest value that fits, exit status 2 (planted: beam_search's own line,
    "max_new_tokens 60 is longer than the context", names no flag and no value that works)."""
    from reference.programs.tokenizers import CharTokenizer
    tok = CharTokenizer.from_text("abcdef")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=8), seed=0)
    args = sample_parser().parse_args(["--num-beams", "2", "--max-new-tokens", str(n)])
    status = run_beams(args, model, tok, tok.encode(prompt))
    out, err = capsys.readouterr()
    if message is None:
        assert status == 0 and len(out) == len(prompt) + n + 1
    else:
        assert (status, out, err) == (2, "", f"error: {message}\n")
