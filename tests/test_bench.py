"""The benchmark runs and writes its table: once, on a tiny configuration. Timings are never asserted."""

import argparse
import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")

from oracle.bridge import bench, bench_children, bench_config  # noqa: E402
from oracle.cli import main  # noqa: E402
from reference.fast import pool  # noqa: E402


def test_bench_writes_markdown_and_json(tmp_path, capsys):
    out = tmp_path / "bench"
    rc = main(["bench", "--config", "tiny", "--dtype", "float64", "--steps", "1", "--warmup", "0", "--memory-steps", "1",
               "--runs", "1", "--sample-config", "tiny", "--profile", "--peak-size", "256", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert [(r["config"], r["dtype"], r["kernels"]) for r in result["rows"]] == [
        ("tiny", "float64", "fast"), ("tiny", "float64", "textbook")]   # both paths by default
    for row in result["rows"]:
        assert row["numpy_s"] > 0 and row["torch_s"] > 0 and row["ratio"] > 0 and row["gflop_per_step"] > 0
        assert row["numpy_mem"]["peak_mb"] > 0 and row["torch_mem"]["peak_mb"] > 0
        assert row["numpy_mem"]["torch_imported"] is False     # the NumPy side's child never imports torch
        assert abs(row["loss_first_step"]["numpy"] - row["loss_first_step"]["torch"]) < 1e-4   # same model
    assert result["sampling"]["speedup"] > 0 and result["sampling"]["same_tokens"] in (True, False)
    assert set(result["profiles"]) == {"tiny float64 fast", "tiny float64 textbook"}
    md = out.with_suffix(".md").read_text()
    assert "| config | dtype | kernels | NumPy s/step | PyTorch s/step | ratio |" in md and "KV cache" in md
    assert "| textbook |" in md and "| fast |" in md
    assert "(6 N + 12 L T C) B T" in md
    assert "wrote" in capsys.readouterr().out
    assert bench.child_env(2, 0).get("OPENBLAS_THREAD_TIMEOUT") == os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    assert bench.child_env(2, 4)["OPENBLAS_THREAD_TIMEOUT"] == "4"


def test_bench_without_extras(tmp_path, capsys, monkeypatch):
    out = tmp_path / "plain"
    recorded = tmp_path / "repo" / "benchmarks" / "results" / "bench"
    monkeypatch.setattr(bench, "RECORDED", recorded)          # an absolute path: the repository's stays untouched
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    defaults = parser.parse_args([])
    assert defaults.out is None and not defaults.record      # by default the results are printed, not written
    assert defaults.kernels == ["fast", "textbook"]
    for action in parser._actions[1:]:                         # every flag says its default
        assert "default" in action.help, action.option_strings
    assert main(["bench", "--config", "tiny", "--dtype", "float32", "--steps", "1", "--memory-steps", "0",
                 "--runs", "2", "--no-sample", "--kernels", "fast", "--peak-size", "256", "--out", str(out),
                 "--record"]) == 0
    printed = capsys.readouterr().out
    assert "| config | dtype | kernels |" in printed and printed.count("wrote") == 2
    assert recorded.with_suffix(".md").read_text() == out.with_suffix(".md").read_text()
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["sampling"] is None and result["profiles"] == {} and "numpy_mem" not in result["rows"][0]
    row = result["rows"][0]                                    # two timing processes, their steps pooled
    assert row["runs"] == 2 and len(row["numpy_times"]) == len(row["torch_times"]) == 2 == len(row["matmul_peaks"]) / 2
    md = out.with_suffix(".md").read_text()
    assert "KV cache" not in md and "2 per row one after another" in md
    with pytest.raises(SystemExit):
        main(["bench", "--runs", "0"])
    assert "expected a whole number >= 1, got '0'" in capsys.readouterr().err


def test_config_specs_and_flops():
    cfg = bench.parse_config("x:d=64,layers=2,heads=4,T=32,batch=3,vocab=50")
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.block_size, cfg.batch, cfg.vocab_size) == (64, 2, 4, 32, 3, 50)
    with pytest.raises(Exception, match="bad config"):
        bench.parse_config("x:d=64,depth=2")
    model, _ = bench_children.make_reference(cfg, "float32")
    n = model.num_parameters() - 32 * 64                       # without the position table
    assert bench.flops_per_step(cfg, model.num_parameters()) == (6 * n + 12 * 2 * 32 * 64) * 3 * 32


@pytest.mark.parametrize("flag, value, expected", [
    ("--steps", "0", "expected a whole number >= 1, got '0'"),
    ("--steps", "-1", "expected a whole number >= 1, got '-1'"),
    ("--warmup", "-1", "expected a whole number >= 0, got '-1'"),
    ("--threads", "0", "expected a whole number >= 1, got '0'"),
    ("--memory-steps", "-1", "expected a whole number >= 0, got '-1'"),
    ("--blas-thread-timeout", "-1", "expected a whole number >= 0, got '-1'"),
    ("--config", "x:d=32,heads=2", "missing layers, T, batch"),
    ("--config", "x:d=0,layers=1,heads=1,T=4,batch=1", "d='0', expected a whole number >= 1"),
    ("--config", "x:d=8,layers=1,heads=3,T=4,batch=1", "n_embd (8) must be divisible by n_head (3)"),
    ("--config", "x:d=8,depth=2", "'depth=2' is not KEY=N with KEY one of d, layers, heads, T, batch, vocab"),
])
def test_bad_bench_flags_are_refused_before_anything_runs(flag, value, expected, capsys):
    # Before: --steps 0, --warmup -1 and --threads -2 ran the children and died with KeyError 'numpy_times';
    # heads not dividing d died in a child; the spec errors quoted BenchConfig.__init__'s signature.
    with pytest.raises(SystemExit) as e:
        main(["bench", flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_bench_out_that_cannot_be_written_is_refused_first(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    called = []
    monkeypatch.setattr(bench, "bench_row", lambda *a, **k: called.append(a))
    assert main(["bench", "--config", "tiny", "--out", str(blocker / "sub" / "bench")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {blocker / 'sub' / 'bench'}: cannot create its directory") and not called


def test_children_run_in_process(monkeypatch):
    # The children's bodies, run here so that their lines count (the bench runs them in subprocesses).
    from oracle.bridge import bench_twin
    threads = bench.blas_threads()
    spec = {"cfg": vars(bench.parse_config("tiny")), "dtype": "float32", "steps": 1, "warmup": 1, "threads": threads,
            "products": "pool", "peak_size": 256}
    assert bench_children.profile_child({**spec, "kernels": "textbook"})[-1][0] == "total step"
    for child in (bench_children.memory_child, bench_twin.memory_child):
        mem = child(spec)
        assert mem["peak_mb"] >= mem["baseline_mb"] > 0
    timing = bench_children.timing_child(spec)
    assert len(timing["numpy_times"]) == len(timing["torch_times"]) == 1 and min(timing["matmul_peaks"]) > 0
    assert bench_children.profile_child(spec)[-1][0] == "total step"
    monkeypatch.setattr(pool, "THREADS", 2)                    # again with attention's blocks on the pool:
    monkeypatch.setattr(pool, "BLOCK_ELEMENTS", 256)           # their softmax calls are not timed twice
    profile = bench_children.profile_child(spec)
    names = [row[0] for row in profile]                        # softmax ran on the pool: in attention's rows
    assert names[-1] == "total step" and "attention core forward" in names
    assert not {"softmax (in attention)", "softmax backward (in attention)"} & set(names)
    assert bench_children.sampling_child(spec)["T"] == 16
    assert bench.blas_threads() == threads
    assert np.isfinite(bench_config.rss_mb()) and bench_config.peak_rss_mb() > 0


# ---------------------------------------------------------------- the speed machinery changes no number

def test_blocks_and_threads_give_the_same_numbers(monkeypatch):
    from reference.fast import functional as F
    from reference.fast.layers import LayerNorm
    rng = np.random.default_rng(0)
    s = rng.standard_normal((3, 2, 300, 300))                  # several blocks of 2 x 300 x 300 ... rows
    h = rng.standard_normal((2, 300, 700)).astype(np.float32) * 3
    x = rng.standard_normal((4, 400, 384))
    dy = rng.standard_normal(x.shape)

    def run():
        p = F.softmax(s)
        ds = F.softmax_backward(s, p)
        ln = LayerNorm(384, dtype="float64")
        y, cache = ln.forward(x)
        return p, ds, *F.gelu_and_grad(h), *F.gelu_and_grad(h, "tanh"), y, ln.backward(dy, cache), ln.weight.grad
    monkeypatch.setattr(pool, "THREADS", 2)
    threaded = run()
    monkeypatch.setattr(pool, "THREADS", 1)
    single = run()                                             # same blocks, one thread: the very same numbers
    monkeypatch.setattr(pool, "BLOCK_ELEMENTS", 1 << 30)
    unblocked = run()                                          # one block: the plain evaluation, up to round-off
    for a, b, c in zip(threaded, single, unblocked):
        assert a.dtype == b.dtype == c.dtype and np.array_equal(a, b)
        assert np.allclose(a, c, rtol=1e-12 if a.dtype == np.float64 else 1e-6, atol=1e-12)
    e = np.exp(s - s.max(-1, keepdims=True))
    assert np.allclose(threaded[0], e / e.sum(-1, keepdims=True), rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", [dict(n_kv_head=2, dropout=0.1), dict(pos="rope", mlp="swiglu", norm="rmsnorm"),
                                     dict(pos="alibi", n_kv_head=1, bias=False)])
def test_products_on_the_pool_give_the_same_numbers(monkeypatch, dtype, variant):
    """Products split over the pool (BLAS single-threaded) against one BLAS call each: the same
    loss, gradients and KV-cache logits, to round-off. (Bit for bit at the benchmark's sizes; on
    products this small OpenBLAS picks other kernels for the halves, which round differently.)"""
    from reference.config import GPTConfig
    from reference.fast import attention
    from reference.fast import pool as F
    from reference.layers import DropoutMasks
    from reference.model import GPT, KVCache
    monkeypatch.setattr(F, "THREADS", 2)                       # split even on a 1-core machine
    monkeypatch.setattr(F, "BLOCK_ELEMENTS", 2048)             # several blocks of the batch in attention
    monkeypatch.setattr(attention, "QUERY_TILE", 5)            # and several tiles of queries in each
    config = GPTConfig(vocab_size=23, block_size=16, n_layer=2, n_head=4, n_embd=32, dtype=dtype, **variant)
    idx = np.random.default_rng(1).integers(0, 23, (5, 16))

    def run():
        model = GPT(config, seed=3)
        loss = model.loss_and_backward(idx, np.roll(idx, -1, 1), DropoutMasks(np.random.default_rng(7)))
        cache = KVCache(config, 5)
        cached = [model.forward(idx[:, :9], kv_cache=cache)[0], model.forward(idx[:, 9:10], kv_cache=cache)[0]]
        return [np.asarray(loss), *cached, *(p.grad for p in model.parameters())]
    with F.products_on_pool(False) as on_pool:
        assert not on_pool and not F.SPLIT_PRODUCTS
        by_blas = run()
    with F.products_on_pool() as on_pool:
        assert on_pool and F.SPLIT_PRODUCTS and F.blas_threads() == 1
        by_pool = run()
    names = ["loss", "cached logits", "next cached logits", *(n for n, _ in GPT(config, seed=3).named_parameters())]
    rtol = 1e-13 if dtype == "float64" else 1e-6
    differ = [(n, float(np.abs(a - b).max() / np.abs(a).max())) for n, a, b in zip(names, by_blas, by_pool)
              if a.dtype != b.dtype or np.abs(a - b).max() > rtol * np.abs(a).max()]
    assert not differ


def test_recycler_hands_out_only_free_buffers():
    from reference.fast.pool import Recycler
    r = Recycler(min_bytes=1000, slack=1.25)
    assert r.empty((10,), "float32").base is None              # small: plain np.empty
    a = r.empty((100, 100), "float32")
    view = a.T[:10]
    del a
    b = r.empty((100, 100), "float32")                         # the first is still referred to by `view`
    assert len(r.buffers) == 2 and not np.shares_memory(b, view)
    del view
    c = r.empty((10000,), "float32")                           # now free again: reused
    assert len(r.buffers) == 2 and c.base is r.buffers[0] and c.shape == (10000,)
    assert r.empty((50, 200), "float64").dtype == np.float64 and len(r.buffers) == 3
    del b, c
    for n in range(2000, 40000, 1000):                         # ever-changing sizes stay bounded
        x = r.empty((n,), "float64")
    assert r.nbytes() <= 1.25 * r.peak_in_use and x.shape == (39000,)


def test_gemm_rates_script_prints_both_rates(monkeypatch, capsys):
    """benchmarks/gemm_rates.py (the best single product and the sustained rate, quoted in
    docs/performance.md) runs; on tiny shapes here, so only its output's form is checked."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gemm_rates.py"
    spec = importlib.util.spec_from_file_location("gemm_rates", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "SHAPES", {"tiny": (64, 32, 48)})
    assert module.main(["--products", "2", "--repeats", "1", "--rounds", "2", "--dtype", "float64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "best single product | sustained" in lines[0]
    cells = lines[1].split()[1:]
    assert lines[1].startswith("tiny") and len(cells) == 6 and all(float(c) > 0 for c in cells if c != "|")


def test_gemm_rates_prints_slow_rates_as_nonzero(monkeypatch, capsys):
    """A product on a busy machine can run at 0.01 GFLOP/s: the printed rate must still be above 0
    (it was formatted with no decimals, and the check above failed under load)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gemm_rates.py"
    spec = importlib.util.spec_from_file_location("gemm_rates", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "SHAPES", {"tiny": (4, 4, 4)})
    monkeypatch.setattr(module, "best_single", lambda *a: 0.0123)
    monkeypatch.setattr(module, "sustained", lambda *a: 0.000456)
    assert module.main(["--rounds", "1", "--dtype", "float32"]) == 0
    cells = capsys.readouterr().out.splitlines()[1].split()[1:]
    assert [float(c) for c in cells if c != "|"] == [0.0123, 0.000456]
