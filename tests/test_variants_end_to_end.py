"""Every model variant trains, saves, resumes exactly and samples with the KV cache (hypothesis picks
the combination of norm, MLP, positions, key/value heads, biases, tying and dtype)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.programs.checkpoint import build_model, load_checkpoint
from reference.programs.tokenizers import CharTokenizer
from reference.programs.sampling.generation import generate
from reference.programs.training.settings import TrainConfig
from reference.programs.training.trainer import Trainer

TEXT = "the quick brown fox jumps over the lazy dog. " * 12


def trainer_for(config: TrainConfig, **kw) -> Trainer:
    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode(TEXT)
    n = int(len(ids) * 0.9)
    return Trainer(config, train_data=ids[:n], val_data=ids[n:], tokenizer=tok, **kw)


@settings(max_examples=6)
@given(norm=st.sampled_from(["layernorm", "rmsnorm"]), mlp=st.sampled_from(["gelu", "swiglu"]),
       pos=st.sampled_from(["learned", "rope", "alibi", "sinusoidal"]), kv=st.sampled_from([1, 2, 4]), bias=st.booleans(),
       tie=st.booleans(), dtype=st.sampled_from(["float32", "float64"]))
def test_variant_trains_resumes_and_samples(tmp_path_factory, norm, mlp, pos, kv, bias, tie, dtype):
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(out_dir=str(out), seed=3, n_layer=2, n_head=4, n_kv_head=kv, n_embd=16, block_size=8,
                         batch_size=4, max_iters=6, learning_rate=3e-3, min_lr=3e-4, warmup_iters=1,
                         lr_decay_iters=6, eval_interval=3, eval_iters=1, dropout=0.1, bias=bias,
                         tie_weights=tie, norm=norm, mlp=mlp, pos=pos, dtype=dtype, always_save_checkpoint=True)
    straight = trainer_for(config)
    straight.run(until=6)
    first = trainer_for(config)
    first.run(until=3)
    path = first.save()
    resumed = trainer_for(config, resume=path)
    resumed.run(until=6)
    for (name, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert np.array_equal(p.data, q.data), name

    model = build_model(load_checkpoint(path))
    prompt = np.array([1, 2, 3])
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    cached, logits_c = generate(model, prompt, 10, rng=rng(), return_logits=True, verbose=False)
    plain, logits_p = generate(model, prompt, 10, rng=rng(), use_cache=False, return_logits=True, verbose=False)
    assert np.array_equal(cached, plain) and len(cached) == 13
    # The cached and recomputed paths multiply matrices of different shapes, so they round differently:
    # round-off in float64; in float32 about 100 ulps (2^-23 ~ 1.2e-7) through two blocks.
    tol = 1e-12 if dtype == "float64" else 1e-5
    for a, b in zip(logits_c, logits_p):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
