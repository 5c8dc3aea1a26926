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

Checkpoints go to `out_dir/ckpt.safetensors` (see reference/checkpoint.py) after an evaluation whose
val loss is the best so far (nanoGPT's `always_save_checkpoint = False` for shakespeare_char), or after
every evaluation with `--always_save_checkpoint`; never at step 0, never with non-finite weights.
Logs: one JSON object per line in `out_dir/log.jsonl`: `{"event": "train", "step", "loss", "lr",
"grad_norm", "dt_s", "tokens_per_s"}` for every log_interval-th step, `{"event": "eval", "step",
"train_loss", "val_loss", "lr", "best_val_loss", "saved"}` per evaluation, plus "start", "end" and
"diverged" records. A non-finite loss, gradient norm, weight or eval loss stops training with
`TrainingDiverged` naming the step; the last checkpoint on disk is left untouched.

Configuration, lowest to highest precedence: TrainConfig's defaults (which are nanoGPT's shakespeare_char
CPU recipe), `--preset NAME`, `--config file.json` (a flat JSON object of TrainConfig fields), flags.
When resuming, the checkpoint's saved training config takes the place of the defaults, and the model
settings must equal the checkpoint's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import (Checkpoint, CheckpointError, check_compatible, generator_from_state, load_checkpoint,
                         restore_optimizer, save_checkpoint)
from .config import CHOICES, GPTConfig
from .data import get_batch, load_meta, load_split, tokenizer_from_dict
from .layers import DropoutMasks
from .model import GPT
from .optim import SGD, AdamW, clip_grad_norm_, cosine_lr

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


def _finite_params(model: GPT) -> bool:
    return all(bool(np.isfinite(p.data).all()) for p in model.parameters())


class Trainer:
    """One training run: model, optimizer, generators, step counter, evaluation, logs and checkpoints.

    Data come from `config.data_dir` (written by data/prepare.py) unless `train_data` and `val_data`
    (1-D token arrays) are given, with a `tokenizer` or a `vocab_size`. `resume` is a checkpoint path
    (or a loaded Checkpoint) to continue from. `config.out_dir` empty or None: no files are written.
    """

    def __init__(self, config: TrainConfig, *, train_data=None, val_data=None, tokenizer=None,
                 vocab_size: int | None = None, resume=None, progress: bool = False):
        self.config = config
        if (train_data is None) != (val_data is None):
            raise ValueError("give both train_data and val_data, or neither (to read config.data_dir)")
        if train_data is None:
            meta = load_meta(config.data_dir)
            tokenizer = tokenizer_from_dict(meta["tokenizer"])
            train_data, val_data = load_split(config.data_dir, "train"), load_split(config.data_dir, "val")
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
        self.model = GPT(self.model_config, seed=config.seed)
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


def _int_or_none(text: str) -> int | None:
    return None if text.lower() in ("none", "null") else int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a ready-made recipe "
                        "(shakespeare_char: nanoGPT's CPU recipe, 4 layers, 4 heads, 128 wide, context 64)")
    parser.add_argument("--config", metavar="FILE.json", help="a JSON object of training config keys")
    parser.add_argument("--resume", action="store_true", help=f"continue from OUT_DIR/{CKPT_NAME}")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run even if OUT_DIR already holds a checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or console lines")
    group = parser.add_argument_group("training config (defaults: the shakespeare_char recipe)")
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


def resolve_config(args: argparse.Namespace, base: dict | None = None) -> TrainConfig:
    """defaults (or `base`) < preset < config file < flags."""
    d = dict(base or {})
    if getattr(args, "preset", None):
        d.update(PRESETS[args.preset])
    if getattr(args, "config", None):
        d.update(read_config_file(args.config))
    d.update({k: getattr(args, k) for k in FIELDS if hasattr(args, k)})
    return TrainConfig.from_dict(d)


def run(args: argparse.Namespace) -> int:
    try:
        config = resolve_config(args)
        ckpt_path = Path(config.out_dir) / CKPT_NAME
        resume = None
        if args.resume:
            ckpt = load_checkpoint(ckpt_path)                 # FileNotFoundError / CheckpointError
            base = {k: v for k, v in (ckpt.train_config or {}).items() if k in FIELDS}
            config = resolve_config(args, {**base, "out_dir": config.out_dir})
            resume = ckpt
        elif ckpt_path.exists() and not args.overwrite:
            print(f"error: {config.out_dir} already holds a checkpoint ({ckpt_path}); pass --resume to continue "
                  "it or --overwrite to start a new run there", file=sys.stderr)
            return 2
        trainer = Trainer(config, resume=resume, progress=not args.no_progress)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    if progress:
        print(f"model: {trainer.model.num_parameters():,} parameters, {trainer.model_config.dtype}; "
              f"data: {len(trainer.train_data):,} train / {len(trainer.val_data):,} val tokens; "
              f"out: {config.out_dir}" + (f"; resuming at step {trainer.step}" if resume else ""), file=sys.stderr)
    try:
        summary = trainer.run()
    except TrainingDiverged as e:
        kept = (f"; the last good checkpoint {trainer.ckpt_path} is left as it was"
                if trainer.ckpt_path is not None and trainer.ckpt_path.exists() else "; no checkpoint was written")
        print(f"error: {e}{kept}", file=sys.stderr)
        return 1
    if progress:
        last, best = summary["last_eval"], summary["best_val_loss"]
        print(f"done: step {summary['step']}"
              + (f", val loss {last['val_loss']:.4f}" if last else "")
              + (f" (best {best:.4f})" if best is not None else "")
              + f", {summary['wall_s']:.1f} s, {summary['tokens_per_s'] or 0:,.0f} tokens/s", file=sys.stderr)
    return 0
