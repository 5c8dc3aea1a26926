"""Training: `python -m reference train`, and `TrainConfig` / `Trainer` / `train()` for use from code.

The loop is nanoGPT's train.py, step for step, in NumPy:

    for step in 0, 1, ..., max_iters - 1:
        evaluate (every eval_interval steps)           mean train/val loss over eval_iters batches, no dropout
        lr = warmup-then-cosine(step)                  set on every param group (reference.optim.cosine_lr)
        x, y = get_batch(train, rng_train)             a seeded numpy Generator
        loss, grads = forward/backward(x, y, masks)    dropout masks from DropoutMasks(rng_dropout)
        clip_grad_norm_(params, grad_clip)             global L2 norm; logged
        AdamW step (or SGD, --optimizer sgd)           weight decay on the matrices (ndim >= 2) only
    evaluate once more after the last step (as nanoGPT's eval at iter_num == max_iters)

Randomness: the model is initialised with `GPT(config, seed=seed)`; batches, evaluation batches and
dropout masks come from three Generators seeded `[seed, 1]`, `[seed, 2]`, `[seed, 3]`. All three states
are saved in the checkpoint, so a resumed run is bit-identical to an uninterrupted one.

Checkpoints go to `out_dir/ckpt.safetensors` (see reference/programs/checkpoint.py) after an evaluation whose
val loss is the best so far (nanoGPT's `always_save_checkpoint = False` for shakespeare_char), or after
every evaluation with `--always_save_checkpoint`; never at step 0, never with non-finite weights.
Logs: one JSON object per line in `out_dir/log.jsonl`: `{"event": "train", "step", "loss", "lr",
"grad_norm", "dt_s", "tokens_per_s"}` for every log_interval-th step, `{"event": "eval", "step",
"train_loss", "val_loss", "lr", "best_val_loss", "saved"}` per evaluation, plus "start", "end" and
"diverged" records. A non-finite loss, gradient norm, weight or eval loss stops training with
`TrainingDiverged` naming the step; the last checkpoint on disk is left untouched.

Configuration, highest precedence first (`resolve_settings`):

    1. flags given on the command line
    2. `--config file.json` (a flat JSON object of TrainConfig fields)
    3. on `--resume`: the training config saved in the checkpoint
    4. `--preset NAME`
    5. TrainConfig's defaults (nanoGPT's shakespeare_char CPU recipe)

What you type now (flags, then the file you name) wins over what was saved; what the run was (its
checkpoint) wins over templates (a preset, the defaults). So `--preset shakespeare_char --resume` continues
the run with its own max_iters, not the preset's, while `--resume --max_iters 4000` extends it. The model
settings of a resumed run must equal the checkpoint's. The effective settings, with where each
non-default one came from, are printed at start and logged in the "start" record.

`--resume` finds the run it continues: `--resume PATH` (a checkpoint file, or a run directory holding
ckpt.safetensors), else OUT_DIR/ckpt.safetensors with OUT_DIR from flags, config file or preset. A
relative `data_dir` that does not exist from the current directory is looked up next to the package
(the repository checkout), so `--preset shakespeare_char` works from any directory.

Failures of the environment or of user input end the command with one line on stderr and a non-zero
exit: bad values (2), a run that cannot fit in memory (2, checked before allocating, see
`estimate_memory`), a disk that fills up or a directory that cannot be written (1), divergence (1), and
Ctrl-C (130); in each case the last good checkpoint on disk is left as it was.

Fine-tuning (`--init-from DIR`, as nanoGPT's `init_from='gpt2'`): the model settings and weights come
from a Hugging Face GPT-2 or Llama directory (reference/programs/hf.py); `--block_size` may shorten its context
(default: the model's), and dropout and dtype stay the run's; any other model flag that contradicts the
directory is refused. The data must be prepared with the model's own tokenizer (`python data/prepare.py --tokenizer DIR`). See `init_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import (Checkpoint, CheckpointError, check_compatible, generator_from_state, load_checkpoint,
                         restore_optimizer, save_checkpoint)
from ..config import CHOICES, GPTConfig
from .data import get_batch, load_meta, load_split, resolve_data_dir, tokenizer_from_dict
from .options import add_kernels_argument
from ..layers import DropoutMasks
from ..fast import use_kernels
from ..model import GPT
from ..optim import SGD, AdamW, clip_grad_norm_, cosine_lr

CKPT_NAME = "ckpt.safetensors"
LOG_NAME = "log.jsonl"
RNG_ROLES = {"train": 1, "eval": 2, "dropout": 3}     # Generator seeds: [seed, k]


class TrainingDiverged(RuntimeError):
    """A non-finite loss, gradient or weight: training stopped at `step`, checkpoint left intact."""

    def __init__(self, step: int, message: str):
        super().__init__(message)
        self.step = step


@dataclass
class TrainConfig:
    """Everything a run needs besides the data. Defaults: nanoGPT's shakespeare_char CPU recipe
    (config/train_shakespeare_char.py with the README's CPU overrides; train.py's defaults elsewhere)."""

    # I/O and seed
    data_dir: str = "data/shakespeare_char"
    out_dir: str = "out"
    seed: int = 1337
    # model (GPTConfig fields; vocab_size comes from the data)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    n_kv_head: int | None = None
    dropout: float = 0.0
    bias: bool = False
    tie_weights: bool = True
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"
    mlp_hidden: int | None = None
    gelu_approximate: str = "none"
    pos: str = "learned"
    rope_base: float = 10000.0
    dtype: str = "float32"
    # optimisation
    batch_size: int = 12
    max_iters: int = 2000
    learning_rate: float = 1e-3
    decay_lr: bool = True
    warmup_iters: int = 100
    lr_decay_iters: int = 2000
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float = 1.0          # 0 disables clipping (the norm is still computed and logged)
    optimizer: str = "adamw"        # adamw (beta1, beta2, eps) or sgd (momentum, dampening, nesterov)
    momentum: float = 0.9           # SGD only (torch.optim.SGD's momentum; torch's default is 0)
    dampening: float = 0.0          # SGD only
    nesterov: bool = False          # SGD only: needs momentum > 0 and dampening 0
    # evaluation, logging, checkpoints
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 1
    always_save_checkpoint: bool = False

    def __post_init__(self):
        for name, f in FIELDS.items():              # JSON's 1 for 1.0
            value = getattr(self, name)
            if f.type == "float" and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, float(value))
        for name in ("batch_size", "eval_interval", "eval_iters", "log_interval"):
            _check(name, getattr(self, name), int, lambda v: v >= 1, ">= 1")
        for name in ("max_iters", "warmup_iters", "lr_decay_iters", "seed"):
            _check(name, getattr(self, name), int, lambda v: v >= 0, ">= 0")
        _check("learning_rate", self.learning_rate, float, lambda v: math.isfinite(v) and v > 0, "finite and > 0")
        for name in ("min_lr", "weight_decay", "eps", "grad_clip"):
            _check(name, getattr(self, name), float, lambda v: math.isfinite(v) and v >= 0, "finite and >= 0")
        for name in ("beta1", "beta2"):
            _check(name, getattr(self, name), float, lambda v: 0 <= v < 1, "in [0, 1)")
        for name in ("decay_lr", "always_save_checkpoint", "nesterov"):
            _check(name, getattr(self, name), bool, lambda v: True, "a boolean")
        _check("optimizer", self.optimizer, str, lambda v: v in TRAIN_CHOICES["optimizer"],
               f"one of {TRAIN_CHOICES['optimizer']}")
        _check("momentum", self.momentum, float, lambda v: math.isfinite(v) and v >= 0, "finite and >= 0")
        _check("dampening", self.dampening, float, math.isfinite, "finite")
        if self.optimizer == "sgd" and self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(f"nesterov needs momentum > 0 and dampening 0 (as torch.optim.SGD), "
                             f"got momentum={self.momentum!r}, dampening={self.dampening!r}")

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, **{k: getattr(self, k) for k in MODEL_FIELDS})

    def lr_at(self, step: int) -> float:
        """The learning rate of 0-based optimizer step `step`: warmup, cosine decay, floor (nanoGPT's get_lr)."""
        if not self.decay_lr:
            return self.learning_rate
        return cosine_lr(step, lr=self.learning_rate, min_lr=self.min_lr, warmup=self.warmup_iters,
                         decay_steps=self.lr_decay_iters)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        unknown = sorted(set(d) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known keys are {sorted(FIELDS)}")
        return cls(**d)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _check(name, value, kind, ok, what):
    """Refuse a value that is not of `kind` (a bool is never an int or a float) or fails `ok`.
    Ints given for float fields were already made floats by TrainConfig.__post_init__."""
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)) or not ok(value):
        raise ValueError(f"{name} must be {what} ({kind.__name__}), got {value!r}")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
TRAIN_CHOICES = {"optimizer": ("adamw", "sgd")}
FIELD_HELP = {
    "optimizer": "adamw (uses beta1, beta2, eps) or sgd (torch.optim.SGD; uses momentum, dampening, nesterov)",
    "momentum": "SGD's momentum factor, >= 0 (0: plain SGD)",
    "dampening": "SGD's dampening of the momentum buffer's gradient term",
    "nesterov": "SGD with Nesterov momentum (needs momentum > 0 and dampening 0)",
}
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(GPTConfig) if f.name in FIELDS)

PRESETS: dict[str, dict[str, Any]] = {
    # nanoGPT README, "I only have a macbook": config/train_shakespeare_char.py with
    # --device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12
    # --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
    # (val loss ~1.88); the rest from that config file and train.py's defaults.
    "shakespeare_char": dict(
        data_dir="data/shakespeare_char", out_dir="out-shakespeare-char", seed=1337,
        n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False,
        batch_size=12, max_iters=2000, learning_rate=1e-3, decay_lr=True, warmup_iters=100,
        lr_decay_iters=2000, min_lr=1e-4, weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0,
        eval_interval=250, eval_iters=20, log_interval=1, always_save_checkpoint=False,
    ),
}


def configure_optimizers(model: GPT, config: TrainConfig) -> AdamW | SGD:
    """nanoGPT's configure_optimizers: AdamW, decay on parameters with ndim >= 2 (matrices and
    embeddings), none on biases and norm weights. Two groups, in model order, decay group first.
    With `optimizer="sgd"`, torch.optim.SGD's semantics on the same groups (docs/sgd.md)."""
    decay = [p for _, p in model.named_parameters() if p.data.ndim >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.data.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return SGD(groups, lr=config.learning_rate, momentum=config.momentum, dampening=config.dampening,
                   weight_decay=config.weight_decay, nesterov=config.nesterov)
    return AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2), eps=config.eps,
                 weight_decay=config.weight_decay)


def estimate_memory(config: TrainConfig, vocab_size: int) -> dict[str, int]:
    """Bytes a training step of `config` needs, estimated from the config before anything is allocated:
    {"weights": parameters + gradients + AdamW's two moments, "activations": what forward keeps for
    backward at batch_size x block_size, "total"}. Per layer about 8 (B, T, C)-sized arrays, the q/k/v
    projection, 2 (B, T, hidden)-sized arrays and one (B, n_head, T, T) attention map; the logits and
    their gradient (B, T, V). Calibrated against tracemalloc's peak of real steps (within about 10%,
    tests/test_cli_failures.py); NumPy's short-lived temporaries are not counted."""
    gc = config.model_config(vocab_size)
    item = np.dtype(gc.dtype).itemsize
    C, L, H, T, B, V = gc.n_embd, gc.n_layer, gc.n_head, gc.block_size, config.batch_size, vocab_size
    hidden = gc.hidden
    kv = (gc.n_head + 2 * gc.kv_heads) * gc.head_dim
    params = V * C * (1 if gc.tie_weights else 2) + (T * C if gc.pos == "learned" else 0) + 2 * C \
        + L * (4 * C + C * kv + kv + C * C + C + (3 if gc.mlp == "swiglu" else 2) * C * hidden + hidden + C)
    per_layer = B * T * (8 * C + kv + 2 * hidden) + B * H * T * T
    activations = L * per_layer + 2 * B * T * V
    out = {"weights": 4 * params * item, "activations": activations * item}
    out["total"] = out["weights"] + out["activations"]
    return out


def available_memory() -> int | None:
    """Bytes of memory available now (Linux: MemAvailable; else free physical pages), None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class InsufficientMemory(ValueError):
    """A run whose estimated memory exceeds what is available: refused before allocating."""


def check_memory(config: TrainConfig, vocab_size: int, available: int | None = None) -> dict[str, int]:
    """Refuse (InsufficientMemory) a run whose `estimate_memory` total exceeds the available memory."""
    est = estimate_memory(config, vocab_size)
    available = available_memory() if available is None else available
    if available is not None and est["total"] > available:
        gib = 2.0 ** 30
        raise InsufficientMemory(
            f"this run needs about {est['total'] / gib:.1f} GiB of memory (weights, gradients and AdamW moments "
            f"{est['weights'] / gib:.2f} GiB; activations at batch_size {config.batch_size}, block_size "
            f"{config.block_size}, n_layer {config.n_layer}: {est['activations'] / gib:.1f} GiB), but only "
            f"{available / gib:.1f} GiB is available; lower batch_size, block_size, n_layer or n_embd")
    return est


def _finite_params(model: GPT) -> bool:
    return all(bool(np.isfinite(p.data).all()) for p in model.parameters())


class Trainer:
    """One training run: model, optimizer, generators, step counter, evaluation, logs and checkpoints.

    Data come from `config.data_dir` (written by data/prepare.py) unless `train_data` and `val_data`
    (1-D token arrays) are given, with a `tokenizer` or a `vocab_size`. `resume` is a checkpoint path
    (or a loaded Checkpoint) to continue from. `config.out_dir` empty or None: no files are written.
    """

    def __init__(self, config: TrainConfig, *, train_data=None, val_data=None, tokenizer=None,
                 vocab_size: int | None = None, resume=None, progress: bool = False, init_from=None,
                 kernels: str = "fast"):
        """`init_from`: a Hugging Face model directory whose weights replace the initialisation (its
        settings must already be in `config`: `init_config`). `kernels`: the path the model runs on,
        "fast" or "textbook" (reference/fast/kernels.py); it is not saved in checkpoints."""
        self.config = config
        if (train_data is None) != (val_data is None):
            raise ValueError("give both train_data and val_data, or neither (to read config.data_dir)")
        if train_data is None:
            data_dir = resolve_data_dir(config.data_dir)
            meta = load_meta(data_dir)
            tokenizer = tokenizer_from_dict(meta["tokenizer"])
            train_data, val_data = load_split(data_dir, "train"), load_split(data_dir, "val")
        self.tokenizer = tokenizer
        if tokenizer is not None:
            vocab_size = tokenizer.vocab_size
        if vocab_size is None:
            raise ValueError("give a tokenizer or a vocab_size with train_data/val_data")
        self.train_data, self.val_data = np.asarray(train_data), np.asarray(val_data)
        for split, data in (("train", self.train_data), ("val", self.val_data)):
            if data.ndim != 1 or not np.issubdtype(data.dtype, np.integer):
                raise ValueError(f"{split} data must be a 1-D array of token ids, got {data.dtype} {data.shape}")
            if len(data) < config.block_size + 1:
                raise ValueError(f"the {split} split has {len(data)} tokens, too few for one window of "
                                 f"block_size {config.block_size} (+1 target); use a smaller block_size")
            outside = (data < 0) | (data >= vocab_size)
            if outside.any():
                bad = int(data[outside][0])                     # the first offending id, negative or too large
                raise ValueError(f"the {split} split holds token id {bad} outside the vocabulary of {vocab_size} "
                                 f"(expected 0 <= id < {vocab_size})")
        self.model_config = config.model_config(vocab_size)
        self.memory = check_memory(config, vocab_size)       # before the model and its arrays exist
        if init_from is not None:
            from .hf import from_pretrained, read_hf_config
            hf_vocab = read_hf_config(init_from).get("vocab_size")
            if hf_vocab != vocab_size:
                raise ValueError(f"the data's tokenizer has {vocab_size} ids but the model in {init_from} has "
                                 f"vocab_size {hf_vocab}; prepare the data with the model's tokenizer: "
                                 f"python data/prepare.py --tokenizer {init_from}")
            self.model = use_kernels(from_pretrained(init_from, dtype=config.dtype, dropout=config.dropout,
                                                     block_size=config.block_size), kernels)
            if self.model.config != self.model_config:
                raise ValueError(f"the model settings differ from {init_from}'s; use init_config()")
        else:
            self.model = use_kernels(GPT(self.model_config, seed=config.seed), kernels)
        self.params = self.model.parameters()
        self.optimizer = configure_optimizers(self.model, config)
        self.rng = {role: np.random.default_rng([config.seed, k]) for role, k in RNG_ROLES.items()}
        self.step = 0                       # optimizer steps done
        self.best_val_loss: float | None = None
        self.last_eval_step: int | None = None
        self.progress = progress
        self.history: list[dict] = []       # eval records
        self.train_time = 0.0               # seconds inside training steps (no eval, no I/O)
        self.resumed_from: int | None = None
        self.record = False                 # keep the last batch and dropout masks (to replay them in tests)
        self.last_batch = self.last_masks = None
        if resume is not None:
            self._resume(resume if isinstance(resume, Checkpoint) else load_checkpoint(resume))

    # ---------------------------------------------------------------------------------------- state

    @property
    def out_dir(self) -> Path | None:
        return Path(self.config.out_dir) if self.config.out_dir else None

    @property
    def ckpt_path(self) -> Path | None:
        return self.out_dir / CKPT_NAME if self.out_dir else None

    def _resume(self, ckpt: Checkpoint) -> None:
        check_compatible(ckpt, self.model_config, self.tokenizer)
        missing = sorted(set(RNG_ROLES) - set(ckpt.rng))
        if missing:
            raise CheckpointError(f"{ckpt.path}: no saved state for the {missing} generator(s); cannot resume exactly")
        self.model.load_state_dict(ckpt.model_state)
        restore_optimizer(self.optimizer, self.model, ckpt)
        self.rng = {role: generator_from_state(ckpt.rng[role]) for role in RNG_ROLES}
        self.step = ckpt.step
        self.best_val_loss = ckpt.best_val_loss
        self.last_eval_step = ckpt.extra.get("last_eval_step")
        self.resumed_from = ckpt.step

    def save(self, path=None) -> Path:
        """Write a checkpoint of the current state (default out_dir/ckpt.safetensors), atomically."""
        path = Path(path) if path is not None else self.ckpt_path
        if path is None:
            raise ValueError("no checkpoint path: config.out_dir is empty")
        if not _finite_params(self.model):
            raise TrainingDiverged(self.step, f"non-finite weights after step {self.step - 1}; "
                                              f"not saving over {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, self.model, self.optimizer, step=self.step, tokenizer=self.tokenizer,
                        train_config=self.config.to_dict(), rng=self.rng, best_val_loss=self.best_val_loss,
                        extra={"last_eval_step": self.last_eval_step})
        return path

    # ------------------------------------------------------------------------------------- one step

    def lr_at(self, step: int) -> float:
        return self.config.lr_at(step)

    def train_step(self) -> dict:
        """One optimizer step at `self.step`: returns {"step", "loss", "lr", "grad_norm", "dt_s"}."""
        cfg, step = self.config, self.step
        t0 = time.perf_counter()
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(self.train_data, cfg.batch_size, cfg.block_size, self.rng["train"])
        masks = DropoutMasks(self.rng["dropout"], record=self.record) if cfg.dropout > 0 else None
        if self.record:
            self.last_batch, self.last_masks = (x, y), masks
        self.model.zero_grad()
        with np.errstate(over="ignore", invalid="ignore"):   # non-finite results are caught just below
            loss = self.model.loss_and_backward(x, y, masks)
            norm = clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if not math.isfinite(loss):
            raise TrainingDiverged(step, f"non-finite loss ({loss}) at step {step} (lr {lr:.3g}); training stopped")
        if not math.isfinite(norm):
            raise TrainingDiverged(step, f"non-finite gradient norm ({norm}) at step {step} (loss {loss:.4f}, "
                                         f"lr {lr:.3g}); training stopped")
        with np.errstate(over="ignore", invalid="ignore"):   # non-finite weights: caught by the next loss
            self.optimizer.step()
        self.step += 1
        dt = time.perf_counter() - t0
        self.train_time += dt
        return {"step": step, "loss": loss, "lr": lr, "grad_norm": norm, "dt_s": dt}

    def evaluate(self) -> dict[str, float]:
        """Mean loss over eval_iters batches of each split, without dropout (nanoGPT's estimate_loss)."""
        cfg, out = self.config, {}
        for split, data in (("train", self.train_data), ("val", self.val_data)):
            with np.errstate(over="ignore", invalid="ignore"):     # a non-finite mean stops the run
                losses = [float(self.model.loss(*get_batch(data, cfg.batch_size, cfg.block_size, self.rng["eval"]))[0])
                          for _ in range(cfg.eval_iters)]
            out[split] = float(np.mean(losses))
        return out

    # ---------------------------------------------------------------------------------------- loop

    def run(self, until: int | None = None) -> dict:
        """Train to max_iters (or to step `until`), evaluating and saving on schedule; a summary dict.
        Raises TrainingDiverged (after logging it) when something becomes non-finite."""
        cfg = self.config
        target = cfg.max_iters if until is None else min(until, cfg.max_iters)
        log = self._open_log()
        bar = self._progress_bar(target)
        tokens_per_step = cfg.batch_size * cfg.block_size
        t_start, steps_start, ema = time.perf_counter(), self.step, None
        try:
            self._log(log, {"event": "start", "step": self.step, "resumed": self.resumed_from is not None,
                            "params": self.model.num_parameters(), "model": self.model_config.to_dict(),
                            "train_config": cfg.to_dict()})
            while True:
                if (self.step % cfg.eval_interval == 0 or self.step == cfg.max_iters) \
                        and self.last_eval_step != self.step:
                    self._eval_and_save(log, bar)
                if self.step >= target:
                    break
                try:
                    rec = self.train_step()
                except TrainingDiverged as e:
                    self._log(log, {"event": "diverged", "step": e.step, "message": str(e),
                                    "checkpoint": str(self.ckpt_path) if self.ckpt_path else None})
                    raise
                tps = tokens_per_step / rec["dt_s"] if rec["dt_s"] > 0 else float("inf")
                ema = tps if ema is None else 0.9 * ema + 0.1 * tps
                if rec["step"] % cfg.log_interval == 0:
                    self._log(log, {"event": "train", **rec, "tokens_per_s": tps})
                    if bar is None and self.progress:
                        print(f"step {rec['step']}: loss {rec['loss']:.4f}, lr {rec['lr']:.3e}, "
                              f"{ema:,.0f} tok/s", file=sys.stderr)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", tok_s=f"{ema:,.0f}",
                                    refresh=False)
            steps = self.step - steps_start
            summary = {"step": self.step, "best_val_loss": self.best_val_loss,
                       "last_eval": self.history[-1] if self.history else None,
                       "wall_s": time.perf_counter() - t_start, "train_s": self.train_time,
                       "tokens_per_s": steps * tokens_per_step / self.train_time if self.train_time > 0 else None}
            self._log(log, {"event": "end", **{k: v for k, v in summary.items() if k != "last_eval"}})
            return summary
        finally:
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()

    def _eval_and_save(self, log, bar) -> None:
        losses = self.evaluate()
        step = self.step
        self.last_eval_step = step
        if not (math.isfinite(losses["train"]) and math.isfinite(losses["val"])):
            msg = (f"non-finite eval loss (train {losses['train']}, val {losses['val']}) at step {step}; "
                   "training stopped")
            self._log(log, {"event": "diverged", "step": step, "message": msg})
            raise TrainingDiverged(step, msg)
        improved = self.best_val_loss is None or losses["val"] < self.best_val_loss
        if improved:
            self.best_val_loss = losses["val"]
        saved = False
        if self.ckpt_path is not None and step > 0 and (improved or self.config.always_save_checkpoint):
            self.save()
            saved = True
        rec = {"event": "eval", "step": step, "train_loss": losses["train"], "val_loss": losses["val"],
               "lr": self.lr_at(step), "best_val_loss": self.best_val_loss, "saved": saved}
        self.history.append(rec)
        self._log(log, rec)
        if self.progress:
            line = (f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                    + (f" (saved {self.ckpt_path})" if saved else ""))
            bar.write(line, file=sys.stderr) if bar is not None else print(line, file=sys.stderr)

    def _open_log(self):
        if self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return open(self.out_dir / LOG_NAME, "a" if self.resumed_from is not None else "w", encoding="utf-8")

    @staticmethod
    def _log(log, record: dict) -> None:
        if log is not None:
            record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
            log.write(json.dumps(record) + "\n")
            log.flush()

    def _progress_bar(self, target: int):
        if not self.progress:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            print("note: install tqdm for a progress bar (pip install tqdm); printing log lines instead",
                  file=sys.stderr)
            return None
        return tqdm(total=target, initial=self.step, desc="train", unit="step", dynamic_ncols=True)


def train(config: TrainConfig, **kwargs) -> dict:
    """Build a Trainer and run it to max_iters; see Trainer for the keyword arguments."""
    return Trainer(config, **kwargs).run()


# ------------------------------------------------------------------------------------------- CLI


def init_config(config: TrainConfig, path, *, block_size: int | None = None,
                source: dict[str, str] | None = None) -> TrainConfig:
    """`config` with the model settings of the Hugging Face model directory `path` (reference/programs/hf.py);
    the context is `block_size` if given (at most the model's), else the model's. HFError (a ValueError)
    for a missing, incomplete or unsupported directory. `source` ({field: where}, resolve_settings): a
    model setting given as a flag or in a config file that the model contradicts is a ValueError naming
    both values (dtype, dropout and a shorter block_size are ours to choose); the fields taken from the
    model are marked "init-from" in it."""
    from .hf import check_dir
    model, _ = check_dir(path, dtype=config.dtype, dropout=config.dropout, block_size=block_size)
    new = config.replace(**{k: getattr(model, k) for k in MODEL_FIELDS})
    if source is not None:
        for k in MODEL_FIELDS:
            ours, theirs = getattr(config, k), getattr(new, k)
            if ours == theirs:
                continue
            if source.get(k) in ("flag", "config file"):
                raise ValueError(f"{k}={ours!r} ({source[k]}) contradicts the model in {path} ({k}={theirs!r}): "
                                 f"--init-from takes the model's settings; drop {k}, or train a new model "
                                 "without --init-from")
            source[k] = "init-from"
    return new


def _int_or_none(text: str) -> int | None:
    return None if text.lower() in ("none", "null") else int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ((parser.description or "") + "\n\nSettings, highest precedence first: flags, "
                           "--config FILE.json, the resumed checkpoint's saved settings, --preset, the defaults "
                           "(the shakespeare_char recipe). The effective settings are printed at start.").strip()
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a ready-made recipe "
                        "(shakespeare_char: nanoGPT's CPU recipe, 4 layers, 4 heads, 128 wide, context 64; "
                        "default: none)")
    parser.add_argument("--config", metavar="FILE.json", default=None,
                        help="a JSON object of training config keys (default: none)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                        help=f"continue a run: from PATH (a checkpoint, or a run directory holding {CKPT_NAME}), or "
                             f"without PATH from OUT_DIR/{CKPT_NAME} (default: off, start a new run)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run even if OUT_DIR already holds a checkpoint (default: off)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar or per-step lines; the settings and the final line are still "
                             "printed (default: off)")
    parser.add_argument("--init-from", "--init_from", dest="init_from", metavar="DIR", default=None,
                        help="fine-tune a Hugging Face GPT-2 or Llama model directory (config.json + "
                             "model.safetensors): its settings and weights are the model's (a model flag that "
                             "contradicts them is refused; dropout and dtype are yours); "
                             "--block_size may shorten its context. Needs the hf extra and data prepared "
                             "with its tokenizer (data/prepare.py --tokenizer DIR) (default: none)")
    add_kernels_argument(parser)
    group = parser.add_argument_group("training config (defaults: the shakespeare_char recipe; a preset, "
                                      "config file or resumed checkpoint may change them)")
    for name, f in FIELDS.items():
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        kind = str(f.type)
        text = f"{FIELD_HELP[name]}; default {f.default!r}" if name in FIELD_HELP else f"default {f.default!r}"
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": text}
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif kind == "int | None":
            kw["type"] = _int_or_none
        else:
            kw["type"] = {"int": int, "float": float, "str": str}[kind]
            if name in CHOICES or name in TRAIN_CHOICES:
                kw["choices"] = {**CHOICES, **TRAIN_CHOICES}[name]
        group.add_argument(*flags, **kw)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The `train` command's flags parsed as the CLI parses them (for scripts and tests)."""
    parser = argparse.ArgumentParser(prog="numpy-gpt train")
    add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def read_config_file(path) -> dict:
    """A flat JSON object of TrainConfig keys; unknown keys are refused."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"config file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"config file {path} must hold a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(FIELDS))
    if unknown:
        raise ValueError(f"config file {path}: unknown keys {unknown}; known keys are {sorted(FIELDS)}")
    return d


def resolve_settings(args: argparse.Namespace, saved: dict | None = None) -> tuple[TrainConfig, dict[str, str]]:
    """The effective TrainConfig and where each non-default setting came from ({field: "flag" | "config file"
    | "checkpoint" | "preset"}): flags > config file > `saved` (a resumed checkpoint's train_config) >
    preset > defaults (module docstring)."""
    layers = []
    if getattr(args, "preset", None):
        layers.append(("preset", PRESETS[args.preset]))
    if saved:
        layers.append(("checkpoint", {k: v for k, v in saved.items() if k in FIELDS}))
    if getattr(args, "config", None):
        layers.append(("config file", read_config_file(args.config)))
    layers.append(("flag", {k: getattr(args, k) for k in FIELDS if hasattr(args, k)}))
    d, source = {}, {}
    for where, values in layers:
        d.update(values)
        source.update({k: where for k in values})
    return TrainConfig.from_dict(d), source


def resolve_config(args: argparse.Namespace, base: dict | None = None) -> TrainConfig:
    """The effective TrainConfig (see `resolve_settings`); `base` is a resumed checkpoint's train_config."""
    return resolve_settings(args, base)[0]


def describe_settings(config: TrainConfig, source: dict[str, str]) -> str:
    """One line: every setting given now (flag, config file) or differing from the default, with where it
    came from; the rest are the defaults (the shakespeare_char recipe)."""
    defaults = TrainConfig()
    parts = []
    for name in FIELDS:
        value, where = getattr(config, name), source.get(name)
        if where in ("flag", "config file") or value != getattr(defaults, name):
            parts.append(f"{name}={value!r}" + (f" ({where})" if where else ""))
    if not parts:
        return "settings: the defaults (the shakespeare_char recipe)"
    return "settings: " + ", ".join(parts) + "; the rest at their defaults"


def find_checkpoint(resume, out_dir: str) -> Path:
    """The checkpoint `--resume` names: PATH (a file, or a directory holding ckpt.safetensors), else
    OUT_DIR/ckpt.safetensors. FileNotFoundError says where it looked."""
    if resume is True:
        path = Path(out_dir) / CKPT_NAME
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint at {path} to resume (out_dir {out_dir!r}); give the run with "
                                    f"--out_dir DIR or --resume PATH")
        return path
    path = Path(resume)
    if path.is_dir():
        path = path / CKPT_NAME
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path} to resume")
    return path


def schedule_warnings(config: TrainConfig) -> list[str]:
    """What a user would not expect of the learning-rate schedule: one that is longer than the run, or one
    that decays upward (min_lr above learning_rate)."""
    out = []
    if config.decay_lr and config.lr_decay_iters > config.max_iters:
        out.append(f"warning: the learning-rate schedule decays over lr_decay_iters={config.lr_decay_iters} steps "
                   f"but the run stops at max_iters={config.max_iters}: the last lr is "
                   f"{config.lr_at(max(config.max_iters - 1, 0)):.3g}, not min_lr {config.min_lr:.3g}; "
                   f"pass --lr_decay_iters {config.max_iters} to decay within the run")
    if config.decay_lr and config.warmup_iters > config.max_iters:
        out.append(f"warning: warmup_iters={config.warmup_iters} is longer than the run (max_iters="
                   f"{config.max_iters}): the learning rate never reaches {config.learning_rate:.3g}")
    if config.decay_lr and config.min_lr > config.learning_rate:
        out.append(f"warning: min_lr={config.min_lr:.3g} is above learning_rate={config.learning_rate:.3g}: the "
                   f"cosine schedule rises after warmup instead of decaying; nanoGPT sets min_lr to about "
                   f"learning_rate / 10")
    return out


def _checkpoint_state(path: Path | None) -> str:
    """What is on disk at `path`, verified: "the last good checkpoint PATH (step N) is left as it was", or why
    it is not good. A checkpoint is called good only after load_checkpoint has checked it."""
    if path is None or not path.exists():
        return "no checkpoint was written"
    try:
        step = load_checkpoint(path).step
    except (CheckpointError, OSError) as e:
        return f"the checkpoint on disk fails its checks ({e})"
    return f"the last good checkpoint {path} (step {step}) is left as it was"


def _os_error(e: OSError) -> str:
    what = e.strerror or str(e)
    where = f" ({e.filename})" if e.filename else ""
    hint = {errno.ENOSPC: "; free some space", errno.EDQUOT: "; free some space or raise the quota",
            errno.EACCES: "; choose a writable --out_dir", errno.EROFS: "; choose a writable --out_dir",
            errno.EPERM: "; choose a writable --out_dir"}.get(e.errno, "")
    return f"{what}{where}{hint}"


def run(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    try:
        config, source = resolve_settings(args)
        resume = None
        if args.resume:
            path = find_checkpoint(args.resume, config.out_dir)
            ckpt = load_checkpoint(path)                      # FileNotFoundError / CheckpointError
            explicit_out = "out_dir" in source and source["out_dir"] in ("flag", "config file")
            config, source = resolve_settings(args, ckpt.train_config)
            if not explicit_out:                               # continue the run where its checkpoint is
                config = config.replace(out_dir=str(path.parent))
            resume = ckpt
            if ckpt.integrity_note:
                print(ckpt.integrity_note, file=sys.stderr)
            if getattr(args, "init_from", None):
                raise ValueError("--init-from starts a new run from a model directory; --resume continues "
                                 f"{path}: give one of them")
        else:
            ckpt_path = Path(config.out_dir) / CKPT_NAME
            if ckpt_path.exists() and not args.overwrite:
                print(f"error: {config.out_dir} already holds a checkpoint ({ckpt_path}); pass --resume to continue "
                      "it or --overwrite to start a new run there", file=sys.stderr)
                return 2
        init_from = None if resume else getattr(args, "init_from", None)
        if init_from:
            config = init_config(config, init_from, block_size=getattr(args, "block_size", None), source=source)
        config.model_config(1)                                 # model settings checked before reading any data
        check_optimizer_flags(config, source)
        print(describe_settings(config, source), file=sys.stderr)
        out_dir = Path(config.out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise NotADirectoryError(f"out_dir {out_dir} is a file, not a directory")
        trainer = Trainer(config, resume=resume, progress=progress, init_from=init_from,
                          kernels=getattr(args, "kernels", "fast"))
        if resume is not None and resume.step >= config.max_iters:
            print(f"nothing to train: the checkpoint {resume.path} is at step {resume.step} and max_iters is "
                  f"{config.max_iters}; pass --max_iters N with N > {resume.step} to train further", file=sys.stderr)
            return 0
        for line in schedule_warnings(config):
            print(line, file=sys.stderr)
    except (CheckpointError, FileNotFoundError, NotADirectoryError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory while loading the data or building the model; lower batch_size, block_size, "
              "n_layer or n_embd", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {_os_error(e)}", file=sys.stderr)
        return 1
    if progress:
        print(f"model: {trainer.model.num_parameters():,} parameters, {trainer.model_config.dtype}; "
              f"data: {len(trainer.train_data):,} train / {len(trainer.val_data):,} val tokens; "
              f"out: {config.out_dir}" + (f"; resuming at step {trainer.step}" if resume else ""), file=sys.stderr)
    try:
        summary = trainer.run()
    except TrainingDiverged as e:
        print(f"error: {e}; {_checkpoint_state(trainer.ckpt_path)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted at step {trainer.step}; {_checkpoint_state(trainer.ckpt_path)}", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"error: out of memory at step {trainer.step} (about {trainer.memory['total'] / 2**30:.1f} GiB "
              f"estimated); lower batch_size or block_size; {_checkpoint_state(trainer.ckpt_path)}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: writing to {config.out_dir} failed: {_os_error(e)}; {_checkpoint_state(trainer.ckpt_path)}",
              file=sys.stderr)
        return 1
    last, best = summary["last_eval"], summary["best_val_loss"]
    print(f"done: step {summary['step']}"
          + (f", val loss {last['val_loss']:.4f}" if last else "")
          + (f" (best {best:.4f})" if best is not None else "")
          + f", {summary['wall_s']:.1f} s, {summary['tokens_per_s'] or 0:,.0f} tokens/s"
          + f"; {checkpoint_note(trainer)}", file=sys.stderr)
    return 0


OPTIMIZER_FIELDS = {"adamw": ("beta1", "beta2", "eps"), "sgd": ("momentum", "dampening", "nesterov")}


def check_optimizer_flags(config: TrainConfig, source: dict[str, str]) -> None:
    """A flag of the optimizer this run does not use is a ValueError: `--momentum 0.5` with AdamW would
    otherwise be ignored without a word. (A config file may hold every key, as a saved train_config does.)"""
    for optimizer, names in OPTIMIZER_FIELDS.items():
        given = [f"--{n}" for n in names if source.get(n) == "flag"]
        if given and config.optimizer != optimizer:
            what = f"{given[0]} is a setting" if len(given) == 1 else f"{' and '.join(given)} are settings"
            raise ValueError(f"{what} of --optimizer {optimizer}, but this run uses {config.optimizer}; drop "
                             f"{'it' if len(given) == 1 else 'them'} or pass --optimizer {optimizer}")


def checkpoint_note(trainer: Trainer) -> str:
    """Where the run's checkpoint is, for the `done:` line; or why this run wrote none (a checkpoint is
    written only when the val loss improves on the best so far, which step 0's evaluation sets)."""
    saved = [r["step"] for r in trainer.history if r.get("saved")]
    if saved:
        return f"checkpoint {trainer.ckpt_path} (step {saved[-1]})"
    why = (f"the val loss never beat the best so far, {trainer.best_val_loss:.4f}"
           if trainer.best_val_loss is not None else "no evaluation after step 0")
    kept = (f"{trainer.ckpt_path} is unchanged" if trainer.ckpt_path is not None and trainer.ckpt_path.exists()
            else "no checkpoint was written")
    return f"{kept}: {why} (--always_save_checkpoint saves at every evaluation)"
