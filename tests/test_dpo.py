"""DPO (reference/programs/dpo.py, docs/dpo.md): loss and every gradient against a twin built from torch
built-ins (F.log_softmax, F.logsigmoid) in float64 on both paths, against TRL's DPOTrainer loss for the
same batch on a GPT-2 directory, the batch layout by hand, training through Trainer, and bad input."""

from __future__ import annotations

import json
import math
import types
from collections import defaultdict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from oracle.bridge import twins  # noqa: E402
from oracle.core.tolerance import FLOAT64_TOL  # noqa: E402
from reference import GPT, GPTConfig  # noqa: E402
from reference.fast import use_kernels  # noqa: E402
from reference.programs import dpo  # noqa: E402
from reference.programs.tokenizers import CharTokenizer  # noqa: E402
from reference.programs.training.settings import TrainConfig  # noqa: E402
from reference.programs.training.trainer import Trainer  # noqa: E402

BETA = 0.5


def pairs(n: int, seed: int = 0):
    """Prefer the reversed word (chosen) to the word itself (rejected)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w = "".join(rng.choice(list("abcd"), size=int(rng.integers(2, 5))))
        w = w if w != w[::-1] else w + ("b" if w[0] == "a" else "a")
        out.append((f"{w}=", f"{w[::-1]}.", f"{w}."))
    return out


def setup(kernels="textbook", n=6):
    ps = pairs(n)
    tok = CharTokenizer.from_text("".join("".join(p) for p in ps))
    enc = dpo.encode_pairs(ps, tok, 16)
    model = use_kernels(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16,
                                      dtype="float64"), seed=0), kernels)
    return ps, tok, enc, model


def test_batch_layout_by_hand():
    tok = CharTokenizer.from_text("abcxyz")
    enc = dpo.encode_pairs([("ab", "c", "xyz")], tok, 8)
    x, y = dpo.make_batch(enc, [0])
    a, b, c, xx, yy, z = (tok.encode(ch)[0] for ch in "abcxyz")
    assert x.tolist() == [[a, b, 0, 0], [a, b, xx, yy]]
    assert y.tolist() == [[-100, c, -100, -100], [-100, xx, yy, z]]    # response tokens only, padding ignored


def twin_loss(model, x, y, ref, beta):
    """The DPO loss from torch built-ins: F.log_softmax, gather, F.logsigmoid."""
    twin = twins.twin_of(model.config)
    twins.load_reference_state(twin, model.state_dict())
    logits = twin(torch.as_tensor(x))
    yt = torch.as_tensor(y)
    valid = yt != -100
    tok = F.log_softmax(logits, -1).gather(-1, yt.clamp(min=0)[..., None])[..., 0]
    lp = (tok * valid).sum(1)
    B = lp.shape[0] // 2
    ref = torch.as_tensor(ref)
    h = beta * ((lp[:B] - ref[:B]) - (lp[B:] - ref[B:]))
    loss = -F.logsigmoid(h).mean()
    loss.backward()
    return loss.item(), {n: p.grad.numpy() for n, p in twin.named_parameters()}


@pytest.mark.parametrize("kernels", ["textbook", "fast"])
def test_loss_and_gradients_against_twin(kernels):
    _, _, enc, model = setup(kernels)
    ref = dpo.reference_logprobs(model, enc)
    for p in model.parameters():                                # a policy that has moved from the reference
        p.data += np.random.default_rng(7).standard_normal(p.data.shape) * 0.05
    x, y = dpo.make_batch(enc, [0, 3, 5, 1])
    ref_lp = np.concatenate([ref[[0, 3, 5, 1], 0], ref[[0, 3, 5, 1], 1]])
    model.zero_grad()
    loss, stats = dpo.dpo_loss_and_backward(model, x, y, ref_lp, BETA)
    loss_t, grads = twin_loss(model, x, y, ref_lp, BETA)
    errs = {"loss": abs(loss - loss_t) / abs(loss_t)}
    errs.update({n: float(np.abs(p.grad - grads[n]).max() / np.abs(grads[n]).max())
                 for n, p in model.named_parameters()})
    worst = max(errs, key=errs.get)
    print(f"DPO vs F.log_softmax/F.logsigmoid twin, {kernels}: loss {loss:.6f}, worst error {errs[worst]:.2e} ({worst})")
    assert errs[worst] <= FLOAT64_TOL, worst
    assert abs(loss - math.log(2)) > 1e-3 and 0 <= stats["accuracy"] <= 1


def test_at_the_reference_the_loss_is_log_2():
    _, _, enc, model = setup()
    ref = dpo.reference_logprobs(model, enc)
    x, y = dpo.make_batch(enc, [0, 1])
    loss, dlp, _ = dpo.dpo_loss(dpo.sequence_logprobs(model.forward(x)[0], y)[0],
                                np.concatenate([ref[[0, 1], 0], ref[[0, 1], 1]]), BETA)
    assert abs(loss - math.log(2)) < 1e-12 and np.allclose(np.abs(dlp), BETA / 4)   # sigmoid(0) / B, B = 2


def test_against_trl(tmp_path):
    """TRL's DPOTrainer._compute_loss (loss_type sigmoid, precomputed reference log-probs) on the same batch."""
    trl = pytest.importorskip("trl", reason="TRL is not installed")
    transformers = pytest.importorskip("transformers")
    from oracle.bridge.hf import hf_grads
    from reference.programs import hf
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    base = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=11, n_positions=16, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)).double().eval()
    base.save_pretrained(tmp_path)
    model = hf.from_pretrained(tmp_path, dtype="float64")
    ps = pairs(5)
    tok = CharTokenizer.from_text("abcd=.")
    enc = dpo.encode_pairs(ps, tok, 16)
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((5, 2)) - 8.0                     # any reference log-probabilities
    idx = [4, 0, 2]
    x, y = dpo.make_batch(enc, idx)
    ref_lp = np.concatenate([ref[idx, 0], ref[idx, 1]])
    model.zero_grad()
    loss, _ = dpo.dpo_loss_and_backward(model, x, y, ref_lp, BETA)

    # TRL's inputs: whole sequences, attention mask, completion mask (1 on response tokens)
    seqs = [np.concatenate([enc[i][0], enc[i][1]]) for i in idx] + [np.concatenate([enc[i][0], enc[i][2]]) for i in idx]
    L = max(s.size for s in seqs)
    ids, att, comp = (np.zeros((len(seqs), L), np.int64) for _ in range(3))
    for r, (s, i) in enumerate(zip(seqs, idx * 2)):
        ids[r, :s.size], att[r, :s.size] = s, 1
        comp[r, enc[i][0].size:s.size] = 1
    fake = types.SimpleNamespace(
        model=base, accelerator=types.SimpleNamespace(device="cpu", gather_for_metrics=lambda t: t, gather=lambda t: t),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=["sigmoid"], loss_weights=[1.0], beta=BETA, use_weighting=False, label_smoothing=0.0,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.as_tensor(ids), "attention_mask": torch.as_tensor(att),
              "completion_mask": torch.as_tensor(comp), "ref_chosen_logps": torch.as_tensor(ref[idx, 0]),
              "ref_rejected_logps": torch.as_tensor(ref[idx, 1])}
    base.zero_grad()
    try:
        loss_t = trl.DPOTrainer._compute_loss(fake, base, inputs, return_outputs=False)
    except (AttributeError, TypeError) as e:                    # TRL's internals moved: name what is missing
        pytest.fail(f"TRL {trl.__version__}'s DPOTrainer._compute_loss needs something the stand-in lacks: {e}")
    loss_t = loss_t[0] if isinstance(loss_t, tuple) else loss_t
    loss_t.backward()
    theirs = hf_grads(base, model.config, "gpt2")
    errs = {"loss": abs(loss - loss_t.item()) / abs(loss_t.item())}
    errs.update({n: float(np.abs(p.grad - theirs[n]).max() / np.abs(theirs[n]).max())
                 for n, p in model.named_parameters()})
    worst = max(errs, key=errs.get)
    print(f"DPO vs TRL {trl.__version__} DPOTrainer: loss {loss:.6f} vs {loss_t.item():.6f}, "
          f"worst error {errs[worst]:.2e} ({worst})")
    assert errs[worst] <= FLOAT64_TOL, worst


def test_trainer_dpo_learns_the_preference():
    ps, tok, enc, _ = setup(n=24)
    cfg = TrainConfig(out_dir="", seed=1, n_layer=2, n_head=2, n_embd=16, block_size=16, batch_size=4, max_iters=30,
                      learning_rate=3e-3, warmup_iters=0, dropout=0.0, eval_iters=2, dtype="float64")
    stream = np.concatenate([np.concatenate(e) for e in enc])
    objective = dpo.DPOObjective(enc[:20], enc[20:], beta=BETA)
    trainer = Trainer(cfg, train_data=stream, val_data=stream, tokenizer=tok, objective=objective, kernels="fast")
    first = trainer.evaluate()["train"]
    assert abs(first - math.log(2)) < 1e-9                      # the reference is the starting weights
    losses = [trainer.train_step()["loss"] for _ in range(30)]
    assert all(math.isfinite(v) for v in losses)
    assert trainer.evaluate()["train"] < first - 0.1


@pytest.mark.parametrize("line, match", [
    ('{"prompt": "a", "chosen": "b"}', r"line 2: no 'rejected' key"),
    ('{"prompt": "a", "chosen": "b", "rejected": null}', r"line 2: 'rejected' must be a string, got NoneType"),
    ('not json', r"line 2: not valid JSON"),
])
def test_bad_lines(tmp_path, line, match):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n' + line + "\n")
    with pytest.raises(dpo.DPOError, match=match):
        dpo.read_pairs(f)


def test_chosen_equal_rejected_warned_and_empty_refused(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "b"}) + "\n")
    with pytest.warns(UserWarning, match=r"chosen equals rejected on line\(s\) 1"):
        assert dpo.read_pairs(f) == [("a", "b", "b", False)]
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(dpo.DPOError, match="pair 1: the rejected response is empty after tokenisation"):
        dpo.encode_pairs([("a", "b", "")], tok, 8)
    with pytest.raises(dpo.DPOError, match=r"pair 1: prompt \+ chosen is 10 tokens, longer than block_size \+ 1 = 5"):
        dpo.encode_pairs([("aaaaaaaaa", "b", "a")], tok, 4)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        dpo.DPOObjective([], [], beta=0)


# ------------------------------------------------------------------------------ the command line


def write_pairs(path, n=24):
    path.write_text("\n".join(json.dumps(dict(zip(dpo.KEYS, p))) for p in pairs(n)) + "\n")
    return path


def cli(capsys, *args):
    from reference.programs.cli import main
    rc = main(["train", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.err


TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "12", "--batch_size", "4",
        "--eval_iters", "2", "--warmup_iters", "1", "--lr_decay_iters", "8", "--learning_rate", "3e-3",
        "--dropout", "0.1", "--no-progress", "--objective", "dpo", "--beta", "0.5", "--dtype", "float64"]


@pytest.mark.parametrize("kernels", ["fast", "textbook"])
def test_train_objective_dpo_resumes_bit_identical(tmp_path, capsys, kernels):
    """prepare.py --dpo, then train --objective dpo: straight to 6 steps equals 3 steps and a resume to 6."""
    from test_sft import prepare
    from reference.programs.safetensors_io import load_file
    assert prepare.main(["--dpo", str(write_pairs(tmp_path / "p.jsonl")), "--out", str(tmp_path / "d")]) == 0
    common = ("--data_dir", tmp_path / "d", "--eval_interval", 3, "--always_save_checkpoint", "--kernels", kernels,
              *TINY)
    assert cli(capsys, "--out_dir", tmp_path / "a", "--max_iters", 6, *common)[0] == 0
    assert cli(capsys, "--out_dir", tmp_path / "b", "--max_iters", 3, *common)[0] == 0
    rc, err = cli(capsys, "--out_dir", tmp_path / "b", "--resume", "--max_iters", 6, "--no-progress", "--kernels", kernels)
    assert rc == 0, err
    a, _ = load_file(tmp_path / "a" / "ckpt.safetensors")
    b, _ = load_file(tmp_path / "b" / "ckpt.safetensors")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if r["event"] == "eval"]
    assert abs(evals[0]["train_loss"] - math.log(2)) < 1e-9   # step 0: the policy is the reference


def test_train_objective_and_data_must_agree(tmp_path, capsys):
    from test_sft import prepare
    assert prepare.main(["--dpo", str(write_pairs(tmp_path / "p.jsonl")), "--out", str(tmp_path / "d")]) == 0
    args = [a for a in TINY if a not in ("--objective", "dpo", "--beta", "0.5")]
    rc, err = cli(capsys, "--data_dir", tmp_path / "d", "--out_dir", tmp_path / "o", "--max_iters", 1, *args)
    assert rc == 2 and "is preference pairs but the objective is lm" in err and len(err.strip().splitlines()) >= 1
    assert "Traceback" not in err
    rc, err = cli(capsys, "--data_dir", tmp_path / "d", "--out_dir", tmp_path / "o", "--max_iters", 1, *args,
                  "--beta", "0.5")                          # DPO's setting on a run that is not DPO: not ignored
    assert rc == 2 and err.strip().splitlines()[-1] == (
        "error: --beta is a setting of --objective dpo, but this run's objective is lm; drop it, or pass "
        "--objective dpo (with data from python data/prepare.py --dpo FILE.jsonl)")
    rc, err = cli(capsys, "--data_dir", tmp_path / "d", "--out_dir", tmp_path / "o", "--max_iters", 1,
                  *[a if a != "12" else "4" for a in TINY])
    assert rc == 2 and "prompt + chosen is" in err and "longer than block_size + 1 = 5" in err
    rc, err = cli(capsys, "--data_dir", tmp_path / "d", "--out_dir", tmp_path / "o", "--max_iters", 1, *TINY[:-2],
                  "--beta", "0")
    assert rc == 2 and "beta" in err and "> 0" in err


def test_prepare_dpo_warns_chosen_equal_rejected(tmp_path, capsys):
    from test_sft import prepare
    f = write_pairs(tmp_path / "p.jsonl", 4)
    f.write_text(f.read_text() + json.dumps({"prompt": "ab=", "chosen": "ba.", "rejected": "ba."}) + "\n")
    assert prepare.main(["--dpo", str(f), "--out", str(tmp_path / "d")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"prepare.py: warning: {f}: chosen equals rejected on line(s) 5: such a pair teaches nothing "
                   "(loss log 2, gradient 0)"]


def saved_run(tmp_path):
    """A DPO Trainer on 8 train and 4 val pairs, one step taken and saved: (cfg, stream, tok, enc, trainer, path)."""
    _, tok, enc, _ = setup(n=12)
    stream = np.concatenate([np.concatenate(e) for e in enc])
    cfg = TrainConfig(out_dir=str(tmp_path), seed=1, n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=2,
                      max_iters=2, warmup_iters=0, eval_iters=1, dtype="float64", objective="dpo")
    a = Trainer(cfg, train_data=stream, val_data=stream, tokenizer=tok, objective=dpo.DPOObjective(enc[:8], enc[8:], BETA))
    a.train_step()
    return cfg, stream, tok, enc, a, a.save()


def test_resume_keeps_the_runs_reference(tmp_path):
    """The reference is the weights the run started from, kept in the checkpoint: a resumed Trainer whose own
    starting weights differ (another seed here; a model directory given again, in practice) uses the saved one."""
    cfg, stream, tok, enc, a, path = saved_run(tmp_path)
    b = Trainer(cfg.replace(seed=2), train_data=stream, val_data=stream, tokenizer=tok,
                objective=dpo.DPOObjective(enc[:8], enc[8:], BETA), resume=path)
    assert all(np.array_equal(a.objective.reference[k], b.objective.reference[k]) for k in ("train", "val"))
    c = Trainer(cfg.replace(seed=2), train_data=stream, val_data=stream, tokenizer=tok,
                objective=dpo.DPOObjective(enc[:8], enc[8:], BETA))
    assert not np.array_equal(c.objective.reference["train"], a.objective.reference["train"])


def test_resume_on_other_pairs_of_the_same_count_is_refused(tmp_path):
    """The saved reference log-probabilities belong to the run's pairs: resumed on other pairs of the same
    count (chosen and rejected swapped here), they would be compared with the wrong sequences and the loss
    would silently be another one. The checkpoint names its pairs (sha256) and such a resume is refused."""
    cfg, stream, tok, enc, a, path = saved_run(tmp_path)
    swapped = [(p, r, c) for p, c, r in enc[:8]]
    with pytest.raises(ValueError, match=r"holds DPO reference log-probabilities of other train pairs \(sha256 "
                                         r"[0-9a-f]{12}, these pairs' [0-9a-f]{12}\): expected the data the run"):
        Trainer(cfg, train_data=stream, val_data=stream, tokenizer=tok,
                objective=dpo.DPOObjective(swapped, enc[8:], BETA), resume=path)
    b = Trainer(cfg, train_data=stream, val_data=stream, tokenizer=tok,
                objective=dpo.DPOObjective([tuple(q.copy() for q in e) for e in enc[:8]], enc[8:], BETA), resume=path)
    assert np.array_equal(b.objective.reference["train"], a.objective.reference["train"])   # equal pairs: resumed


def test_a_val_split_shorter_than_a_window_is_fine_for_pairs():
    """DPO's rows are whole pairs, not windows of block_size + 1 tokens of the stream: a val split of fewer
    tokens than one window (a few short pairs) trains; the language model's window check does not apply."""
    _, tok, enc, _ = setup(n=12)
    stream = np.concatenate([np.concatenate(e) for e in enc])
    short = np.concatenate([np.concatenate(e) for e in enc[8:9]])
    cfg = TrainConfig(out_dir="", seed=1, n_layer=1, n_head=2, n_embd=16, block_size=len(short) + 4, batch_size=2,
                      max_iters=2, warmup_iters=0, eval_iters=1, dtype="float64", objective="dpo")
    t = Trainer(cfg, train_data=stream, val_data=short, tokenizer=tok,
                objective=dpo.DPOObjective(enc[:8], enc[8:9], BETA))
    assert math.isfinite(t.train_step()["loss"]) and math.isfinite(t.evaluate()["val"])
