"""Non-finite values never reach a sample (`sample_next([[nan, 0, 1]])` is refused, as `torch.multinomial`
refuses such rows), and the `sample` command writes UTF-8 whatever the locale, never losing a generated sample."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reference.programs import cli, sample
from reference.programs.checkpoint import build_model, load_checkpoint
from reference.programs.sampling.generation import generate
from reference.programs.sampling.logits_process import next_token_probs, sample_next
from test_checkpoint import make_trainer, tiny_config

REPO = Path(__file__).resolve().parent.parent
BAD = {"nan": [[np.nan, 0.0, 1.0]], "+inf": [[np.inf, 0.0, 1.0]], "all -inf": [[-np.inf, -np.inf, -np.inf]]}


@pytest.mark.parametrize("case", list(BAD))
def test_non_finite_logits_are_refused_as_torch_multinomial_refuses_them(case):
    logits = np.array(BAD[case])
    probs = torch.softmax(torch.tensor(logits), -1)
    with pytest.raises(RuntimeError):                                  # torch: "invalid multinomial distribution"
        torch.multinomial(probs, 1)
    rng = np.random.default_rng(0)
    for call in (lambda: sample_next(logits, rng=rng), lambda: sample_next(logits, greedy=True),
                 lambda: next_token_probs(logits), lambda: sample_next(logits[0], top_k=2, rng=rng)):
        with pytest.raises(ValueError, match="non-finite|-inf for every token"):
            call()


def test_minus_inf_masks_a_token_and_is_allowed():
    p = next_token_probs(np.array([[-np.inf, 0.0, 0.0]]))
    assert p.tolist() == [[0.0, 0.5, 0.5]]


def test_a_temperature_that_overflows_the_logits_is_refused():
    with pytest.raises(ValueError, match=r"logits / temperature \(1e-308\)"):
        next_token_probs(np.array([[1e10, 0.0]]), temperature=1e-308)


@pytest.fixture(scope="module")
def cjk_ckpt(tmp_path_factory):
    """A tiny trained checkpoint whose vocabulary holds CJK characters."""
    d = tmp_path_factory.mktemp("cjk")
    text = "漢字と日本語、かな。hello 世界! " * 40
    trainer = make_trainer(tiny_config(out_dir=str(d), dropout=0.0, max_iters=2), text=text)
    trainer.run()
    return trainer.save()


def test_nan_weights_give_a_clear_error_from_generate(cjk_ckpt):
    """However NaN got there (here: a weight set after loading), generation refuses it."""
    model = build_model(load_checkpoint(cjk_ckpt))
    dict(model.named_parameters())["transformer.h.0.mlp.c_fc.weight"].data[0, 0] = np.nan
    with np.errstate(invalid="ignore"), pytest.raises(ValueError, match="NaN"):
        generate(model, np.array([1, 2]), 3, rng=np.random.default_rng(0))


def test_sample_cli_prints_one_line_for_non_finite_logits(cjk_ckpt, monkeypatch, capsys):
    import reference.programs.checkpoint as checkpoint

    real = checkpoint.build_model

    def nan_model(ckpt):
        model = real(ckpt)
        dict(model.named_parameters())["transformer.ln_f.weight"].data[:] = np.nan
        return model

    monkeypatch.setattr(checkpoint, "build_model", nan_model)
    with np.errstate(invalid="ignore"):
        code = cli.main(["sample", "--ckpt", str(cjk_ckpt), "--prompt", "漢", "--max-new-tokens", "3"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: sample 1: logits hold non-finite values")


@pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "cp1252"}, {"LC_ALL": "C", "LANG": "C"},
                                 {"PYTHONIOENCODING": "ascii", "PYTHONUTF8": "0"}], ids=["cp1252", "C", "ascii"])
def test_sample_output_is_utf8_whatever_the_locale(cjk_ckpt, env):
    full = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "LC_ALL", "LANG", "PYTHONUTF8")}
    full.update(env, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "reference", "sample", "--ckpt", str(cjk_ckpt), "--prompt", "漢字",
                           "--greedy", "--max-new-tokens", "8", "--num-samples", "2"],
                          cwd=REPO, env=full, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    out = proc.stdout.decode("utf-8")                                   # valid UTF-8, the sample intact
    assert out.startswith("漢字") and out.count("---------------") == 1
    assert b"Traceback" not in proc.stderr


def test_a_sample_too_long_for_memory_is_one_line(cjk_ckpt, capsys):
    code = cli.main(["sample", "--ckpt", str(cjk_ckpt), "--prompt", "漢", "--max-new-tokens", str(10**15)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "out of memory for 1,000,000,000,000,001 tokens" in err
