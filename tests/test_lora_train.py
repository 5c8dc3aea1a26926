"""LoRA in `train`: adapters on the chosen layers, every other weight frozen, checkpoints and resume.

- `lora_parameter_shapes(config, r, targets)`, from the config alone, is the adapted model's
  `named_parameters()` (names, shapes, order) for every variant, and refuses what apply_lora refuses.
- A LoRA run trains A and B only: the other weights keep their bits, the optimizer and its checkpoint
  state hold the adapters only; its trajectory equals peft's LoraModel trained by torch.optim.AdamW with
  torch's clip_grad_norm_ on the same batches (float64, tests/test_lora_peft.py's tiny GPT-2).
- Resumed equals uninterrupted, bit for bit, on both paths, with both dropouts on (planted: the adapters'
  moments not restored). Gradient accumulation with the adapters' dropout equals one batch to round-off
  (planted: the adapters' masks not handed to each micro-batch). DPO and SFT data train adapters.
- A run from --init-from DIR writes OUT_DIR/adapter, which `PeftModel.from_pretrained(DIR model, ...)`
  loads with our checkpoint's logits (float64); `export` writes the merged model, `sample` reads it.
- Bad input gets one line: targets that match no layer or a tied head, rank 0 or above the layer's,
  LoRA flags without --lora_rank, a resume with other LoRA settings, a "lora" header that lies.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from reference.config import GPTConfig
from reference.fast import use_kernels
from reference.lora import apply_lora, lora_layers, lora_parameter_shapes
from reference.model import GPT
from reference.programs import checkpoint as ck
from reference.programs import distributed
from reference.programs.checkpoint import CheckpointError, build_model, load_checkpoint
from reference.programs.cli import main
from reference.programs.training.settings import TrainConfig
from reference.programs.training.trainer import ADAPTER_DIR, Trainer

V = 23
DATA = np.random.default_rng(0).integers(0, V, 600)
SMALL = dict(n_layer=2, n_head=2, n_embd=16, block_size=8, batch_size=4, eval_iters=2, warmup_iters=1,
             lr_decay_iters=8, learning_rate=1e-2, dtype="float64", seed=3)


def lora_config(out_dir="", **kw) -> TrainConfig:
    return TrainConfig(**{**SMALL, "out_dir": str(out_dir), "lora_rank": 2, "lora_targets": "c_attn,mlp.c_proj",
                          **kw})


def trainer(config, **kw) -> Trainer:
    return Trainer(config, train_data=DATA, val_data=DATA, vocab_size=V, **kw)


# ------------------------------------------------------------------------------------ the shapes


VARIANTS = [
    (dict(), "c_attn"),
    (dict(bias=True), "c_attn,c_proj,c_fc"),
    (dict(mlp="swiglu", norm="rmsnorm", pos="rope", n_kv_head=1, tie_weights=False), "c_gate,lm_head,attn.c_proj"),
    (dict(bias=True, tie_weights=False), "transformer.h.1.*"),
]


@pytest.mark.parametrize("variant, targets", VARIANTS)
def test_lora_parameter_shapes_are_the_adapted_models(variant, targets):
    config = GPTConfig(vocab_size=V, n_layer=2, n_head=2, n_embd=16, block_size=8, **variant)
    model = GPT(config, seed=0)
    apply_lora(model, 3, 8.0, targets=targets.split(","))
    assert list(lora_parameter_shapes(config, 3, targets.split(",")).items()) == \
        [(n, p.data.shape) for n, p in model.named_parameters()]


@pytest.mark.parametrize("rank, targets, words", [
    (2, ["c_nope"], "LoRA target 'c_nope' matches no Linear layer"),
    (2, ["c_gate"], "matches no Linear layer"),                    # a GELU model has no c_gate
    (2, ["lm_head"], "tied to another layer"),
    (17, ["c_attn"], "LoRA rank 17 is larger than layer transformer.h.0.attn.c_attn allows"),
])
def test_lora_parameter_shapes_refuse_as_apply_lora_does(rank, targets, words):
    config = GPTConfig(vocab_size=V, n_layer=2, n_head=2, n_embd=16, block_size=8)
    with pytest.raises(ValueError) as from_config:
        lora_parameter_shapes(config, rank, targets)
    with pytest.raises(ValueError) as from_model:
        apply_lora(GPT(config, seed=0), rank, 8.0, targets=targets)
    assert words in str(from_config.value) and str(from_config.value) == str(from_model.value)


# ------------------------------------------------------------------------------------ a LoRA run


def test_a_lora_run_trains_the_adapters_only():
    t = trainer(lora_config(max_iters=3, eval_interval=3, lora_dropout=0.2, dropout=0.1))
    frozen = {n: p.data.copy() for n, p in t.model.named_parameters() if "lora_" not in n}
    adapters = {n: p.data.copy() for n, p in t.model.named_parameters() if "lora_" in n}
    assert len(adapters) == 2 * 2 * 2 and len(t.params) == len(adapters)      # 2 layers x (c_attn, mlp.c_proj) x A, B
    params = dict(t.model.named_parameters())
    assert all(params[n].grad is None for n in frozen if "base_layer" in n)   # no dW for them
    t.run()
    assert all(np.array_equal(p.data, frozen[n]) for n, p in t.model.named_parameters() if n in frozen)
    assert all(not np.array_equal(p.data, adapters[n]) for n, p in t.model.named_parameters() if n in adapters)
    assert {id(p) for g in t.optimizer.param_groups for p in g["params"]} == {id(p) for p in t.params}
    assert all(m.masks is None for m in lora_layers(t.model).values())     # evaluation runs without dropout


def test_lora_trajectory_equals_peft_with_torch_adamw(tmp_path):
    """Four steps of a LoRA run from a GPT-2 directory against peft's LoraModel on the same directory, trained
    by torch.optim.AdamW (decay on A and B) after torch's clip_grad_norm_ over the adapters, on our batches."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from oracle.core.tolerance import FLOAT64_TOL

    base_dir = gpt2_dir(tmp_path, torch)
    from transformers import GPT2LMHeadModel
    config = init(lora_config(lora_targets="c_attn,c_fc", learning_rate=3e-2, decay_lr=False, grad_clip=0.05,
                              weight_decay=0.1, max_iters=4), base_dir)
    t = trainer(config, init_from=base_dir, kernels="textbook")
    t.record = True
    theirs = get_peft_model(GPT2LMHeadModel.from_pretrained(base_dir, dtype=torch.float64),
                            LoraConfig(r=2, lora_alpha=8.0, lora_dropout=0.0, fan_in_fan_out=True,
                                       target_modules=["c_attn", "c_fc"])).double()
    named = dict(theirs.named_modules())
    pairs = []                                                  # (our parameter, theirs), A and B of each layer
    for n, m in lora_layers(t.model).items():
        layer = named[f"base_model.model.{n}"]
        pairs += [(m.lora_A, layer.lora_A["default"].weight), (m.lora_B, layer.lora_B["default"].weight)]
    with torch.no_grad():
        for ours, p in pairs:
            p.copy_(torch.as_tensor(ours.data))
    opt = torch.optim.AdamW([p for _, p in pairs], lr=3e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    worst = 0.0
    for _ in range(4):
        rec = t.train_step()
        x, y = (torch.as_tensor(a) for a in t.last_batch)
        opt.zero_grad()
        logits = theirs(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in pairs], 0.05)
        opt.step()
        worst = max(worst, abs(rec["loss"] - loss.item()) / loss.item(), abs(rec["grad_norm"] - norm.item()) / norm.item(),
                    *(float(np.abs(ours.data - p.detach().numpy()).max() / np.abs(p.detach().numpy()).max())
                      for ours, p in pairs))
    print(f"LoRA run vs peft + torch.optim.AdamW, 4 steps, float64: worst relative error {worst:.2e}")
    assert worst <= FLOAT64_TOL


# ------------------------------------------------------------------------------------ resume


def _run_to(config, steps, resume=None):
    t = trainer(config, resume=resume)
    t.run(until=steps)
    return t


@pytest.mark.parametrize("kernels", ["textbook", "fast"])
def test_a_resumed_lora_run_equals_the_uninterrupted_one_bit_for_bit(tmp_path, kernels, monkeypatch):
    base = dict(max_iters=6, eval_interval=3, always_save_checkpoint=True, lora_dropout=0.2, dropout=0.1)
    whole = trainer(lora_config(tmp_path / "whole", **base), kernels=kernels)
    whole.run()
    half = trainer(lora_config(tmp_path / "half", **base), kernels=kernels)
    half.run(until=3)
    ckpt = load_checkpoint(tmp_path / "half" / "ckpt.safetensors")
    assert ckpt.lora["r"] == 2 and ckpt.step == 3
    assert sorted(ckpt.optimizer["state"]) == sorted(n for n, _ in whole.model.named_parameters() if "lora_" in n)
    again = trainer(lora_config(tmp_path / "half", **base), kernels=kernels, resume=ckpt)
    again.run()
    assert all(np.array_equal(a.data, b.data) for a, b in zip(whole.model.parameters(), again.model.parameters()))

    # planted: the adapters' AdamW moments not restored
    monkeypatch.setattr("reference.programs.training.trainer.restore_optimizer", lambda *a: None)
    planted = trainer(lora_config(tmp_path / "half", **base), kernels=kernels, resume=ckpt)
    planted.run()
    assert not all(np.array_equal(a.data, b.data) for a, b in zip(whole.model.parameters(), planted.model.parameters()))


def test_gradient_accumulation_with_the_adapters_dropout_equals_one_batch(monkeypatch):
    def final(k):
        t = trainer(lora_config(max_iters=3, eval_interval=3, lora_dropout=0.3, batch_size=8 // k,
                                gradient_accumulation_steps=k))
        t.run()
        return [p.data.copy() for p in t.params]

    def worst(a, b):
        return max(float(np.abs(x - y).max() / np.abs(y).max()) for x, y in zip(a, b))

    one = final(1)
    e = worst(final(2), one)
    print(f"LoRA, 2 micro-batches vs 1 batch, adapters' dropout 0.3: worst relative error {e:.1e}")
    assert e <= 1e-12
    monkeypatch.setattr(distributed, "set_lora_masks", lambda model, masks: None)    # planted
    assert worst(final(2), one) > 1e-6


def test_lora_under_mpi_equals_one_process(data_dir, tmp_path):
    """2 ranks x 3 micro-batches with both dropouts equal one process with the whole batch (to
    tests/test_data_parallel.py's 1e-13); ZeRO-1 over the adapters equals plain data parallel bit for bit."""
    pytest.importorskip("mpi4py")
    dp = pytest.importorskip("test_data_parallel")             # skipped there, with the reason, without mpiexec
    lora = ["--lora_rank", "2", "--lora_targets", "c_attn,c_fc", "--lora_dropout", "0.2", "--max_iters", "6",
            "--eval_interval", "6"]
    runs = {"one": (0, "--batch_size", "9"), "two": (2, "--batch_size", "3", "--gradient_accumulation_steps", "3"),
            "zero": (2, "--batch_size", "3", "--gradient_accumulation_steps", "3", "--zero_stage", "1")}
    for name, (n, *flags) in runs.items():
        rc, err = dp.train(n, data_dir, tmp_path / name, *flags, *lora)
        assert rc == 0, err
    diffs = dp.differences(tmp_path / "two", tmp_path / "one")
    print(f"LoRA, 2 ranks x 3 micro-batches vs one process: {diffs}")
    assert max(diffs.values()) <= dp.RTOL, diffs
    assert dp.identical(tmp_path / "zero", tmp_path / "two")
    assert load_checkpoint(tmp_path / "two" / "ckpt.safetensors").lora["r"] == 2


def test_dpo_and_sft_train_adapters(tmp_path):
    from reference.programs import dpo
    rng = np.random.default_rng(1)
    pairs = [tuple(rng.integers(0, V, n) for n in (3, 2, 3)) for _ in range(6)]
    objective = dpo.DPOObjective(pairs, pairs, beta=0.5)
    config = lora_config(max_iters=2, eval_interval=2, objective="dpo")
    t = trainer(config, objective=objective)
    plain = use_kernels(GPT(t.model_config, seed=config.seed), "fast")   # the starting weights, no adapters
    assert np.array_equal(objective.reference["train"], dpo.reference_logprobs(plain, pairs))
    t.run()
    base = [p for n, p in t.model.named_parameters() if "lora_" not in n]
    assert len(base) == len(plain.parameters())
    assert all(np.array_equal(p.data, q.data) for p, q in zip(base, plain.parameters()))   # frozen
    assert t.history[-1]["val_loss"] < np.log(2)               # the policy moved from the reference

    mask = (np.arange(len(DATA)) % 5 >= 2).astype(np.uint8)      # SFT: responses are 3 of every 5 tokens
    s = trainer(lora_config(max_iters=2, eval_interval=2), loss_masks=(mask, mask))
    s.record = True
    before = [p.data.copy() for p in s.params]
    s.run()
    assert (s.last_batch[1] == -100).any()                       # prompt tokens: ignored targets
    assert all(not np.array_equal(p.data, b) for p, b in zip(s.params, before))


# ------------------------------------------------------------------------------------ peft, export, sample


def gpt2_dir(tmp_path, torch):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=8, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                                       embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None))
    model.double().save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def init(config, base_dir):
    from reference.programs.training.settings import init_config
    return init_config(config, base_dir)


def test_a_run_from_a_model_directory_writes_a_peft_adapter(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import GPT2LMHeadModel
    from oracle.core.tolerance import FLOAT64_TOL

    base_dir = gpt2_dir(tmp_path, torch)
    config = init(lora_config(tmp_path / "out", max_iters=4, eval_interval=2, always_save_checkpoint=True,
                              lora_targets="c_attn,c_proj,c_fc"), base_dir)
    trainer(config, init_from=base_dir).run(until=2)
    t = trainer(config, resume=tmp_path / "out" / "ckpt.safetensors")      # the base directory remembered
    t.run()
    adapter = tmp_path / "out" / ADAPTER_DIR
    meta = json.loads((adapter / "adapter_config.json").read_text())
    assert (meta["r"], meta["lora_alpha"], meta["base_model_name_or_path"]) == (2, 8.0, str(base_dir))
    ours = build_model(load_checkpoint(tmp_path / "out" / "ckpt.safetensors"))
    x = np.random.default_rng(5).integers(0, V, (2, 8))
    theirs = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base_dir, dtype=torch.float64), adapter).eval()
    with torch.no_grad():
        their_logits = theirs(input_ids=torch.as_tensor(x)).logits.numpy()
    ours_logits = ours.forward(x)[0]
    e = float(np.abs(ours_logits - their_logits).max() / np.abs(their_logits).max())
    moved = float(np.abs(ours_logits - GPT2LMHeadModel.from_pretrained(base_dir, dtype=torch.float64)(
        input_ids=torch.as_tensor(x)).logits.detach().numpy()).max())
    print(f"train's adapter in peft (GPT-2, float64): logits error {e:.2e}; the adapters moved the logits by {moved:.2e}")
    assert e <= FLOAT64_TOL and moved > 1e-6

    # export writes the merged model (peft's merge_and_unload), which transformers loads with the same logits
    assert main(["export", "--ckpt", str(tmp_path / "out" / "ckpt.safetensors"), "--to", str(tmp_path / "hf")]) == 0
    with torch.no_grad():
        merged = GPT2LMHeadModel.from_pretrained(tmp_path / "hf", dtype=torch.float64)(
            input_ids=torch.as_tensor(x)).logits.numpy()
    e_merged = float(np.abs(merged - ours_logits).max() / np.abs(ours_logits).max())
    print(f"export of the LoRA run (merged) in transformers: logits error {e_merged:.2e}")
    assert e_merged <= FLOAT64_TOL


def test_sample_reads_a_lora_checkpoint(data_dir, tmp_path, capsys):
    args = ["train", "--data_dir", data_dir, "--out_dir", tmp_path / "out", "--n_layer", "1", "--n_head", "2",
            "--n_embd", "16", "--block_size", "8", "--max_iters", "2", "--eval_interval", "2", "--eval_iters", "1",
            "--lora_rank", "2", "--lora_alpha", "4", "--always_save_checkpoint", "--no-progress"]
    assert main(list(map(str, args))) == 0
    assert "lora_rank=2 (flag)" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(tmp_path / "out" / "ckpt.safetensors"), "--max-new-tokens", "4",
                 "--prompt", "to"]) == 0
    assert capsys.readouterr().out.startswith("to")


# ------------------------------------------------------------------------------------ bad input


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


@pytest.fixture
def data_dir(tmp_path):
    from test_train import TEXT
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("data_prepare", Path(__file__).parent.parent / "data" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.prepare(TEXT.encode(), tmp_path / "data", kind="char")
    return tmp_path / "data"


@pytest.mark.parametrize("flags, words", [
    (["--lora_rank", "2", "--lora_targets", "c_nope"], "error: LoRA target 'c_nope' matches no Linear layer: expected "
                                                      "a name such as c_attn, c_fc, c_proj"),
    (["--lora_rank", "2", "--lora_targets", "c_gate"], "error: LoRA target 'c_gate' matches no Linear layer"),
    (["--lora_rank", "2", "--lora_targets", "lm_head"], "has a weight tied to another layer"),
    (["--lora_rank", "0"], "error: lora_rank must be >= 1, or none to train every weight without adapters (int), got 0"),
    (["--lora_rank", "17"], "error: LoRA rank 17 is larger than layer transformer.h.0.attn.c_attn allows: "
                            "expected 1 <= rank <= min(in, out) = 16"),
    (["--lora_alpha", "16", "--lora_targets", "c_fc"], "error: --lora_alpha and --lora_targets are settings of LoRA "
                                                       "adapters, but this run has no --lora_rank"),
    (["--lora_rank", "2", "--lora_dropout", "1"], "error: lora_dropout must be in [0, 1) (float), got 1.0"),
    (["--lora_rank", "2", "--lora_targets", "c_attn,"], "error: lora_targets must be comma-separated layer names"),
])
def test_bad_lora_flags_get_one_line(data_dir, tmp_path, capsys, flags, words):
    argv = ["train", "--data_dir", data_dir, "--out_dir", tmp_path / "out", "--n_layer", "1", "--n_head", "2",
            "--n_embd", "16", "--block_size", "8", "--max_iters", "1", "--no-progress", *flags]
    assert main(list(map(str, argv))) == 2
    assert words in one_line(capsys.readouterr().err)
    assert not (tmp_path / "out" / "ckpt.safetensors").exists()


def test_a_resume_with_other_lora_settings_is_refused(data_dir, tmp_path, capsys):
    argv = ["train", "--data_dir", data_dir, "--out_dir", tmp_path / "out", "--n_layer", "1", "--n_head", "2",
            "--n_embd", "16", "--block_size", "8", "--max_iters", "2", "--eval_interval", "2", "--eval_iters", "1",
            "--always_save_checkpoint", "--no-progress", "--lora_rank", "2"]
    assert main(list(map(str, argv))) == 0
    capsys.readouterr()
    for extra, words in ((["--lora_rank", "4"], "LoRA mismatch: the checkpoint has LoRA r=2, lora_alpha=8.0"),
                         (["--lora_rank", "none"], "this run no LoRA adapters")):
        assert main(list(map(str, argv + ["--resume", "--max_iters", "4"] + extra))) == 2
        assert words in one_line(capsys.readouterr().err)


def test_a_lora_header_that_lies_is_refused(tmp_path):
    from reference.programs.checkpoint_format import METADATA_KEY, seal
    from reference.programs.safetensors_io import SafetensorsFile, save_file
    t = trainer(lora_config(tmp_path / "out", max_iters=1, eval_interval=1, always_save_checkpoint=True))
    t.run()
    path = tmp_path / "out" / "ckpt.safetensors"
    with SafetensorsFile(str(path)) as f:
        tensors = {n: f.tensor(n) for n in f.entries}
        header = json.loads(f.metadata[METADATA_KEY])

    def load_with(**lora):
        h = {**header, "lora": {**header["lora"], **lora}} if lora else {k: v for k, v in header.items() if k != "lora"}
        save_file(tensors, tmp_path / "edited.safetensors", metadata=seal(tensors, json.dumps(h)))
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(tmp_path / "edited.safetensors")
        return str(e.value)

    assert "missing model tensors [" in load_with()                         # no "lora": the names are foreign
    assert "tensor 'transformer.h.0.attn.c_attn.lora_A' has shape (2, 16), expected (3, 16)" in load_with(r=3)
    assert "lora 'layers' must name each adapted layer in model order" in load_with(layers=["c_attn"])
    assert "do not fit its model config: LoRA target 'transformer.h.9.attn.c_attn' matches no" in \
        load_with(layers=["transformer.h.9.attn.c_attn"])
    assert "'lora_dropout' must be a number in [0, 1)" in load_with(lora_dropout=2)
    assert ck.load_checkpoint(path).lora == {**header["lora"]}
