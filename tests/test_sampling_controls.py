"""min-p, the repetition penalty and their composition with temperature, top-k and top-p, against
transformers' own logits processors, in the order transformers' `generate` builds them
(`_get_logits_processor`), on random logits in float64 and float32; presence and frequency penalties
against OpenAI's documented formula written out token by token; argument ranges; the wiring in
`generate`. Skipped, with the reason, when transformers (the `hf` extra) is not installed."""

import math

import numpy as np
import pytest

from oracle import rel_error
from oracle.core import tolerance as policy
from reference import GPT, GPTConfig
from reference.programs.sampling.generation import generate, iter_generate
from reference.programs.sampling.logits_process import apply_penalties, check_penalty_args, next_token_probs, sample_next

torch = pytest.importorskip("torch")
V = 40


@pytest.fixture(scope="module")
def hf():
    """transformers' generation module, and a tiny random GPT-2 whose `_get_logits_processor` builds the list."""
    generation = pytest.importorskip("transformers.generation", reason="transformers (the `hf` extra) is not installed")
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=8, n_layer=1, n_head=2,
                                                               bos_token_id=0, eos_token_id=0))
    return generation, model


def random_problem(dtype, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((4, V)) * 3.0).astype(dtype)
    logits[0, :5] = -np.abs(logits[0, :5])                     # seen tokens with negative logits, and positive ones
    context = rng.integers(0, V, (4, 12))                       # repeats included
    return logits, context


def check(ours: np.ndarray, their, truth, dtype: str, what: str) -> float:
    """float64: to round-off of torch's float64; float32: within the policy, against torch's float64 result."""
    their, truth = np.asarray(their, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    finite = np.isfinite(truth)
    assert np.array_equal(np.isfinite(ours), finite), f"{what}: a different set of tokens is kept"
    if dtype == "float64":
        err, tol = rel_error(ours[finite], their[finite])[0], policy.FLOAT64_TOL
    else:
        err = rel_error(ours[finite], truth[finite])[0]
        tol = max(policy.FLOAT32_FACTOR * rel_error(their[finite], truth[finite])[0], policy.FLOAT32_FLOOR)
    assert err <= tol, f"{what}: err {err:.2e} > tol {tol:.1e}"
    return err


def log_probs(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p)


def torch_log_softmax(scores):
    return torch.log_softmax(scores.double(), dim=-1).numpy()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("penalty", [0.5, 1.2, 3.0])
def test_repetition_penalty_matches_transformers(hf, penalty, dtype):
    generation, _ = hf
    logits, context = random_problem(dtype, seed=int(penalty * 10))
    proc = generation.RepetitionPenaltyLogitsProcessor(penalty)
    run = lambda dt: proc(torch.from_numpy(context), torch.from_numpy(logits).to(dt)).numpy()  # noqa: E731
    ours = apply_penalties(logits, context, repetition_penalty=penalty)
    check(ours, run(getattr(torch, dtype)), run(torch.float64), dtype, "repetition penalty")
    touched = ours != logits.astype(np.float64)
    assert touched.any() and all(set(np.flatnonzero(touched[b])) <= set(context[b]) for b in range(4))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("min_p", [0.0, 0.02, 0.1, 0.5, 1.0])
def test_min_p_matches_transformers(hf, min_p, dtype):
    """MinPLogitsWarper keeps the tokens with p >= min_p * max p; the same set, the same renormalised distribution."""
    generation, _ = hf
    logits, _ = random_problem(dtype, seed=7)
    warper = generation.MinPLogitsWarper(min_p)
    run = lambda dt: torch_log_softmax(warper(None, torch.from_numpy(logits).to(dt)))  # noqa: E731
    ours = log_probs(next_token_probs(logits, min_p=min_p))
    check(ours, run(getattr(torch, dtype)), run(torch.float64), dtype, f"min_p {min_p}")


ORDER_GRID = [
    dict(repetition_penalty=1.3, temperature=0.7, top_k=12, top_p=0.9, min_p=0.05),
    dict(repetition_penalty=0.8, temperature=1.5, top_k=30, top_p=0.95, min_p=0.02),
    dict(repetition_penalty=2.0, temperature=0.5, top_k=None, top_p=None, min_p=0.2),
    dict(repetition_penalty=1.0, temperature=1.0, top_k=5, top_p=None, min_p=None),
    dict(repetition_penalty=1.1, temperature=0.9, top_k=None, top_p=0.5, min_p=None),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rule", ORDER_GRID, ids=lambda r: "-".join(f"{k}={v}" for k, v in r.items()))
def test_composition_matches_transformers_generate(hf, rule, dtype):
    """Penalties, temperature, top-k, top-p and min-p together give the distribution of the processor list that
    transformers' `generate` builds for the same settings (`_get_logits_processor`, do_sample=True)."""
    generation, model = hf
    config = generation.GenerationConfig(do_sample=True, temperature=rule["temperature"], top_k=rule["top_k"] or 0,
                                         top_p=rule["top_p"] or 1.0, min_p=rule["min_p"],
                                         repetition_penalty=rule["repetition_penalty"])
    processors = model._get_logits_processor(generation_config=config, input_ids_seq_length=12)
    logits, context = random_problem(dtype, seed=11)
    ids = torch.from_numpy(context)
    run = lambda dt: torch_log_softmax(processors(ids, torch.from_numpy(logits).to(dt)))  # noqa: E731
    z = apply_penalties(logits, context, repetition_penalty=rule["repetition_penalty"])
    ours = log_probs(next_token_probs(z, temperature=rule["temperature"], top_k=rule["top_k"], top_p=rule["top_p"],
                                      min_p=rule["min_p"]))
    check(ours, run(getattr(torch, dtype)), run(torch.float64), dtype, str(rule))


def test_generate_builds_processors_in_the_documented_order(hf):
    """The order our module docstring and docs/sampling.md state is the order of transformers' list."""
    generation, model = hf
    config = generation.GenerationConfig(do_sample=True, temperature=0.7, top_k=10, top_p=0.9, min_p=0.05,
                                         repetition_penalty=1.2)
    names = [type(p).__name__ for p in model._get_logits_processor(generation_config=config, input_ids_seq_length=3)]
    assert names == ["RepetitionPenaltyLogitsProcessor", "TemperatureLogitsWarper", "TopKLogitsWarper",
                     "TopPLogitsWarper", "MinPLogitsWarper"]


def openai_penalties(logits, generated, presence, frequency):
    """OpenAI's API docs: mu[j] -> mu[j] - c[j] * alpha_frequency - float(c[j] > 0) * alpha_presence, with c[j]
    how often token j was sampled prior to the current position: one row, entry by entry, in plain Python."""
    out = [float(x) for x in logits]
    for j in range(len(out)):
        c = sum(1 for t in generated if t == j)
        out[j] = out[j] - c * frequency - float(c > 0) * presence
    return out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("presence, frequency", [(0.5, 0.0), (0.0, 0.7), (1.5, -0.4), (-2.0, 2.0)])
def test_presence_and_frequency_follow_openais_formula(presence, frequency, dtype):
    """Only the generated tokens count (the last n_generated of the context), each as often as it was sampled."""
    logits, context = random_problem(dtype, seed=3)
    n_generated = 7
    ours = apply_penalties(logits, context, n_generated, presence_penalty=presence, frequency_penalty=frequency)
    want = np.array([openai_penalties(logits[b], context[b, -n_generated:].tolist(), presence, frequency) for b in range(4)])
    assert ours.dtype == np.float64
    assert rel_error(ours, want)[0] <= 1e-15
    prompt_only = set(context[0, :-n_generated]) - set(context[0, -n_generated:])
    assert all(ours[0, j] == float(logits[0, j]) for j in prompt_only)       # the prompt is not counted
    assert np.array_equal(apply_penalties(logits, context, 0, presence_penalty=presence, frequency_penalty=frequency),
                          logits.astype(np.float64))


def test_one_row_of_logits_and_context():
    """A single row (V,) with a 1-D context is a batch of one, and the caller's logits are left alone."""
    z = np.array([1.0, -1.0, 2.0])
    out = apply_penalties(z, np.array([1, 2]), 1, repetition_penalty=2.0, frequency_penalty=1.0)
    assert out.tolist() == [[1.0, -2.0, 2.0 / 2 - 1.0]] and z.tolist() == [1.0, -1.0, 2.0]


def test_repetition_then_presence_and_frequency():
    """Order within the penalties (vLLM's): the repetition penalty scales the raw logit, then the additive
    penalties are subtracted."""
    z = np.array([[2.0, -1.0, 0.5]])
    out = apply_penalties(z, np.array([[0, 1, 0]]), 2, repetition_penalty=2.0, presence_penalty=0.5,
                          frequency_penalty=0.25)
    assert out.tolist() == [[2.0 / 2 - 0.25 - 0.5, -1.0 * 2 - 0.25 - 0.5, 0.5]]   # ids 1, 0 generated once each


@pytest.mark.parametrize("kwargs, words", [
    (dict(min_p=-0.1), "min_p must be a number in [0, 1] (or None for no limit), got -0.1"),
    (dict(min_p=1.5), "min_p must be a number in [0, 1]"),
    (dict(min_p=float("nan")), "min_p must be a number in [0, 1] (or None for no limit), got nan"),
    (dict(min_p="0.1"), "got '0.1'"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be a finite number > 0 (1 for none), got 0.0"),
    (dict(repetition_penalty=-1.2), "repetition_penalty must be a finite number > 0 (1 for none), got -1.2"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty must be a finite number > 0 (1 for none), got inf"),
    (dict(repetition_penalty=True), "repetition_penalty must be a finite number > 0 (1 for none), got True"),
    (dict(presence_penalty=2.5), "presence_penalty must be a number in [-2, 2] (0 for none), got 2.5"),
    (dict(frequency_penalty=-3), "frequency_penalty must be a number in [-2, 2] (0 for none), got -3"),
    (dict(frequency_penalty=None), "frequency_penalty must be a number in [-2, 2] (0 for none), got None"),
])
def test_every_argument_is_range_checked(kwargs, words):
    with pytest.raises(ValueError) as e:
        check_penalty_args(**kwargs)
    assert words in str(e.value)
    model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4))
    with pytest.raises(ValueError) as e:                          # refused before any work, not at the first step
        iter_generate(model, np.array([1]), 3, rng=np.random.default_rng(0), **kwargs)
    assert words in str(e.value)


@pytest.mark.parametrize("greedy", [False, True])
def test_generate_applies_the_rule_to_each_step(greedy):
    """generate, step by step, equals recomputing the whole sequence, penalising with the context so far
    (prompt and generated) and the generated tokens, and drawing with sample_next from the same generator."""
    config = GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8, pos="sinusoidal")
    model = GPT(config, seed=2)
    prompt = np.array([[3, 3, 1, 4], [0, 5, 9, 2]])
    kw = dict(min_p=0.05, repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.3)
    out = generate(model, prompt, 8, temperature=0.9, top_k=6, top_p=0.95, greedy=greedy, rng=np.random.default_rng(5), **kw)
    rng, seq = np.random.default_rng(5), prompt.copy()
    for n in range(4, 12):
        logits, _ = model.forward(seq)
        z = apply_penalties(logits[:, -1], seq, n - 4, repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.3)
        nxt = sample_next(z, temperature=0.9, top_k=6, top_p=0.95, min_p=0.05, greedy=greedy, rng=rng)
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    assert np.array_equal(out, seq)


def test_a_strong_penalty_changes_greedy_output():
    """Greedy search with a repetition penalty avoids repeating (transformers applies processors to greedy too)."""
    model = GPT(GPTConfig(vocab_size=7, block_size=32, n_layer=1, n_head=1, n_embd=4), seed=0)
    plain = generate(model, np.array([1]), 20, greedy=True)
    penalised = generate(model, np.array([1]), 20, greedy=True, frequency_penalty=2.0, presence_penalty=2.0,
                         repetition_penalty=math.e)
    assert len(set(penalised.tolist())) > len(set(plain.tolist()))
