"""The training loop: `Trainer`, `configure_optimizers` and `train()`.

The loop is nanoGPT's train.py, step for step, in NumPy:

    for step in 0, 1, ..., max_iters - 1:
        evaluate (every eval_interval steps)           mean train/val loss over eval_iters batches, no dropout
        lr = warmup-then-cosine(step)                  set on every param group (reference.optim.cosine_lr)
        x, y = get_batch(train, rng_train)             a seeded numpy Generator
        loss, grads = forward/backward(x, y, masks)    dropout masks from DropoutMasks(rng_dropout)
        clip_grad_norm_(params, grad_clip)             global L2 norm; logged
        AdamW step (or SGD, --optimizer sgd)           weight decay on the matrices (ndim >= 2) only
    evaluate once more after the last step (as nanoGPT's eval at iter_num == max_iters)

A step's batch is batch_size x gradient_accumulation_steps rows, run in micro-batches of at most batch_size
rows whose gradients are weighted by their count of target tokens, so the step's gradient is the whole
batch's mean; under `mpiexec -n N` the rows are shared over the ranks and the gradients all-reduced
(`self.dist`, reference/programs/distributed.py; one process with K = 1 runs the plain code above).
The data, SFT's layouts and DPO's pairs are read and checked in training/splits.py; `objective`
(dpo.DPOObjective, --objective dpo) brings its own batches of pairs and loss, its micro-batches and ranks
sharing out pairs, each weighted by its share of them.

Randomness: the model is initialised with `GPT(config, seed=seed)`; batches and dropout masks come from
two Generators seeded `[seed, 1]` and `[seed, 3]`, whose states the checkpoint keeps, so a resumed run is
bit-identical to an uninterrupted one; the evaluation at step s draws its batches from a Generator seeded
`[seed, 2, s]`, so it logs the same losses however the run reached step s.

Checkpoints go to `out_dir/ckpt.safetensors` (see reference/programs/checkpoint.py) after an evaluation whose
val loss is the best so far (nanoGPT's `always_save_checkpoint = False` for shakespeare_char), or after
every evaluation with `always_save_checkpoint`; never at step 0, never with non-finite weights.
Logs: one JSON object per line in `out_dir/log.jsonl`, and the progress on stderr (run_log.py: the records
and what each holds). A non-finite loss, gradient norm, weight or eval loss stops training with
`TrainingDiverged` naming the step; the last checkpoint on disk is left untouched.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ...fast import use_kernels
from ...layers import DropoutMasks
from ...lora import apply_lora, lora_parameter_shapes, lora_parameters, lora_settings, set_lora_masks
from ...model import GPT
from ...module import Parameter
from ...optim import SGD, AdamW
from ..checkpoint import (Checkpoint, CheckpointError, check_compatible, generator_from_state, load_checkpoint,
                          restore_optimizer, save_checkpoint)
from .. import sft
from ..data import get_batch
from ..tokenizers import describe_tokenizer, tokenizer_digest
from ..distributed import DataParallel, data_digest
from .memory import check_memory
from .run_log import RunLog
from .settings import TrainConfig
from .splits import load_splits, model_tokenizer

CKPT_NAME = "ckpt.safetensors"
LOG_NAME = "log.jsonl"
ADAPTER_DIR = "adapter"         # a LoRA run from --init-from DIR: the peft adapter directory for DIR
RNG_ROLES = {"train": 1, "dropout": 3}     # the generators a checkpoint keeps, seeded [seed, k]
EVAL_SEED = 2                              # evaluation at step s draws from a generator seeded [seed, 2, s]


class TrainingDiverged(RuntimeError):
    """A non-finite loss, gradient or weight: training stopped at `step`, checkpoint left intact."""

    def __init__(self, step: int, message: str):
        super().__init__(message)
        self.step = step


def trainable_parameters(model: GPT) -> list[tuple[str, Parameter]]:
    """(name, Parameter) of what the optimizer updates, in model order: the LoRA adapters' A and B when the
    model has adapters (every other weight frozen, as peft's LoraModel freezes them), else every parameter."""
    adapters = lora_parameters(model)
    return list(adapters.items()) if adapters else list(model.named_parameters())


def configure_optimizers(model: GPT, config: TrainConfig) -> AdamW | SGD:
    """nanoGPT's configure_optimizers: AdamW, decay on parameters with ndim >= 2 (matrices and
    embeddings), none on biases and norm weights. Two groups, in model order, decay group first.
    With `optimizer="sgd"`, torch.optim.SGD's semantics on the same groups (docs/sgd.md). Over the
    `trainable_parameters` only: with LoRA adapters, their A and B (both in the decay group)."""
    params = trainable_parameters(model)
    decay = [p for _, p in params if p.data.ndim >= 2]
    no_decay = [p for _, p in params if p.data.ndim < 2]
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
    (1-D token arrays) are given, with a `tokenizer` or a `vocab_size` (training/splits.py). `resume` is a
    checkpoint path (or a loaded Checkpoint) to continue from. `config.out_dir` empty or None: no files are
    written.
    """

    def __init__(self, config: TrainConfig, *, train_data=None, val_data=None, tokenizer=None,
                 vocab_size: int | None = None, resume=None, progress: bool = False, init_from=None,
                 kernels: str = "fast", dist: DataParallel | None = None, loss_masks: tuple | None = None,
                 example_lengths: tuple | None = None, objective=None):
        """`init_from`: a Hugging Face model directory whose weights replace the initialisation (its
        settings must already be in `config`: `init_config`). `kernels`: the path the model runs on,
        "fast" or "textbook" (reference/fast/kernels.py); the "start" log record names it, checkpoints do not
        (either path resumes either's run). `dist`: this process's part in a data-parallel run
        (reference/programs/distributed.py; default: one process, with config.zero_stage). `loss_masks`:
        (train mask, val mask) for SFT data given as arrays (reference/programs/sft.py: 1 on response
        tokens, the only targets counted); SFT data in `config.data_dir` brings its own. `example_lengths`:
        (train lengths, val lengths) of those examples in tokens, for `config.packing` False (one example per
        row, sft.PaddedExamples); data in `config.data_dir` brings its own. `objective`:
        another training objective than next-token cross-entropy (reference/programs/dpo.py::DPOObjective):
        its `prepare(model)` runs once the model is built (not when resuming: the checkpoint keeps what it
        made), its `get_batch` and `loss` replace the language model's, and `self.dist` runs its pieces
        (distributed.py::TokenMean's protocol: micro-batches and ranks)."""
        self.config = config
        data = load_splits(config, train_data=train_data, val_data=val_data, tokenizer=tokenizer, vocab_size=vocab_size,
                           loss_masks=loss_masks, example_lengths=example_lengths, objective=objective)
        self.train_data, self.val_data, self.tokenizer, vocab_size = data.train, data.val, data.tokenizer, data.vocab_size
        self.data_source, self.loss_masks, objective = data.source, data.loss_masks, data.objective
        self.window_starts, self.examples = data.window_starts, data.examples
        self.model_config = config.model_config(vocab_size)
        if config.lora_rank is not None:                      # bad targets or rank: refused before building
            lora_parameter_shapes(self.model_config, config.lora_rank, config.lora_target_list)
        self.memory = check_memory(config, vocab_size)       # before the model and its arrays exist
        if init_from is not None:
            from ..hf import from_pretrained, read_hf_config
            hf_vocab = read_hf_config(init_from).get("vocab_size")
            if hf_vocab != vocab_size:
                raise ValueError(f"the data's tokenizer has {vocab_size} ids but the model in {init_from} has "
                                 f"vocab_size {hf_vocab}; prepare the data with the model's tokenizer: "
                                 f"python data/prepare.py --tokenizer {init_from}")
            self.tokenizer = model_tokenizer(self.tokenizer, self.data_source, init_from)
            self.model = use_kernels(from_pretrained(init_from, dtype=config.dtype, dropout=config.dropout,
                                                     block_size=config.block_size), kernels)
            if self.model.config != self.model_config:
                raise ValueError(f"the model settings differ from {init_from}'s; use init_config()")
        else:
            self.model = use_kernels(GPT(self.model_config, seed=config.seed), kernels)
        self.lora_base = str(init_from) if init_from is not None and config.lora_rank is not None else None
        if config.lora_rank is not None:                      # after the starting weights are in: B = 0 keeps them
            apply_lora(self.model, config.lora_rank, config.lora_alpha, config.lora_dropout,
                       config.lora_target_list, seed=config.seed)
            use_kernels(self.model, kernels)
        self.kernels = kernels
        self.model.recompute = config.recompute
        self.objective = objective
        if objective is not None and resume is None:          # resuming: the checkpoint's, loaded below
            objective.prepare(self.model)                     # e.g. DPO's reference log-probs, from these weights
        self.params = [p for _, p in trainable_parameters(self.model)]   # clipped, reduced over ranks, stepped
        self.optimizer = configure_optimizers(self.model, config)
        self.dist = dist if dist is not None else DataParallel(zero_stage=config.zero_stage)
        self.dist.attach(self.params, self.optimizer)
        self.rng = {role: np.random.default_rng([config.seed, k]) for role, k in RNG_ROLES.items()}
        self.step = 0                       # optimizer steps done
        self.best_val_loss: float | None = None
        self.last_eval_step: int | None = None
        self.progress = progress
        self.history: list[dict] = []       # eval records
        self.train_time = 0.0               # seconds inside training steps (no eval, no I/O)
        self.step_tokens = 0                # positions the last step fed through the model
        self.resumed_from: int | None = None
        self.record = False                 # keep the last batch and dropout masks (to replay them in tests)
        self.last_batch = self.last_masks = None
        if resume is not None:
            self._resume(resume if isinstance(resume, Checkpoint) else load_checkpoint(resume))
        self.dist.adopt_optimizer_state(self.optimizer)

    def fingerprint(self) -> dict:
        """What every rank of a data-parallel run must share: settings, data and the step it starts at."""
        return {"settings": self.config.to_dict(), "train data": data_digest(self.train_data),
                "val data": data_digest(self.val_data), "resumed step": self.step}

    # ---------------------------------------------------------------------------------------- state

    @property
    def out_dir(self) -> Path | None:
        return Path(self.config.out_dir) if self.config.out_dir else None

    @property
    def ckpt_path(self) -> Path | None:
        return self.out_dir / CKPT_NAME if self.out_dir else None

    def _resume(self, ckpt: Checkpoint) -> None:
        same = (self.tokenizer is None or ckpt.tokenizer is None
                or tokenizer_digest(self.tokenizer) == tokenizer_digest(ckpt.tokenizer))
        if not same and "bpe" in (ckpt.tokenizer.get("kind"), self.tokenizer.to_dict()["kind"]):
            raise CheckpointError(f"{ckpt.path}: tokenizer mismatch: the checkpoint was trained with tokenizer "
                                  f"{describe_tokenizer(ckpt.tokenizer)}, {self.data_source} was prepared with "
                                  f"{describe_tokenizer(self.tokenizer)}; prepare the data with the checkpoint's "
                                  f"tokenizer, or train a new model")
        check_compatible(ckpt, self.model_config, None if same else self.tokenizer)
        missing = sorted(set(RNG_ROLES) - set(ckpt.rng))
        if missing:
            raise CheckpointError(f"{ckpt.path}: no saved state for the {missing} generator(s); cannot resume exactly")
        ours = lora_settings(self.model)
        if ckpt.lora != ours:
            def show(s):
                return ("no LoRA adapters" if s is None else f"LoRA r={s['r']}, lora_alpha={s['lora_alpha']}, "
                        f"lora_dropout={s['lora_dropout']} on {len(s['layers'])} layer(s) ({', '.join(s['layers'][:3])}"
                        f"{', ...' if len(s['layers']) > 3 else ''})")
            raise CheckpointError(f"{ckpt.path}: LoRA mismatch: the checkpoint has {show(ckpt.lora)}, this run "
                                  f"{show(ours)}; resume with the checkpoint's LoRA settings (drop the --lora_* flags)")
        self.model.load_state_dict(ckpt.model_state)
        restore_optimizer(self.optimizer, self.model, ckpt)
        self.rng = {role: generator_from_state(ckpt.rng[role]) for role in RNG_ROLES}
        self.step = ckpt.step
        self.best_val_loss = ckpt.best_val_loss
        self.last_eval_step = ckpt.extra.get("last_eval_step")
        self.lora_base = ckpt.extra.get("lora_base")
        if self.objective is not None:                         # DPO: the reference of the run's start, not ours
            self.objective.load_state_dict(ckpt.extra.get("objective"), ckpt.path)
        self.resumed_from = ckpt.step

    def save(self, path=None) -> Path:
        """Write a checkpoint of the current state (default out_dir/ckpt.safetensors), atomically."""
        path = Path(path) if path is not None else self.ckpt_path
        if path is None:
            raise ValueError("no checkpoint path: config.out_dir is empty")
        if not _finite_params(self.model):
            raise TrainingDiverged(self.step, f"non-finite weights after step {self.step - 1}; "
                                              f"not saving over {path}")
        self.dist.full_optimizer_state(self.optimizer)            # ZeRO-1: the slices gathered on rank 0
        error = None
        try:
            if self.dist.is_main:                                   # rank 0 writes; the others wait for its word
                path.parent.mkdir(parents=True, exist_ok=True)
                save_checkpoint(path, self.model, self.optimizer, step=self.step, tokenizer=self.tokenizer,
                                train_config=self.config.to_dict(), rng=self.rng, best_val_loss=self.best_val_loss,
                                extra={"last_eval_step": self.last_eval_step,
                                       **({"objective": self.objective.state_dict()} if self.objective is not None
                                          else {}),
                                       **({"lora_base": self.lora_base} if self.lora_base else {})})
                if self.lora_base:                                  # the adapters alone, for peft, beside it
                    from ..lora_io import save_adapter
                    save_adapter(self.model, path.parent / ADAPTER_DIR, base_model_name_or_path=self.lora_base)
        except (OSError, ValueError) as e:
            error = e
            raise
        finally:
            self.dist.release_optimizer_state(self.optimizer)
            told = self.dist.agree(None if error is None else str(error))
            if error is not None:
                error.every_rank_knows = True               # each rank raises it here: none is left waiting
            elif told is not None:
                lost = OSError(f"rank 0 could not write {path}: {told}")
                lost.every_rank_knows = True
                raise lost
        return path

    # ------------------------------------------------------------------------------------- one step

    def lr_at(self, step: int) -> float:
        return self.config.lr_at(step)

    def get_batch(self, split: str, rng: np.random.Generator, rows: int | None = None) -> tuple:
        """`rows` (default batch_size) (x, y) windows of `split`; for SFT data, y is IGNORE_INDEX on prompt
        tokens (sft.get_batch); with an objective, its batch."""
        cfg = self.config
        rows = cfg.batch_size if rows is None else rows
        if self.objective is not None:
            return self.objective.get_batch(split, rows, rng)
        data = self.train_data if split == "train" else self.val_data
        if self.examples is not None:
            return self.examples[split].get_batch(rows, rng)
        if self.loss_masks is None:
            return get_batch(data, rows, cfg.block_size, rng)
        return sft.get_batch(data, self.loss_masks[split], rows, cfg.block_size, rng, self.window_starts[split])

    def _eval_loss(self, batch) -> float:
        if self.objective is not None:
            return float(self.objective.loss(self.model, batch))
        return float(self.model.loss(*batch)[0])

    def train_step(self) -> dict:
        """One optimizer step at `self.step`: returns {"step", "loss", "lr", "grad_norm", "dt_s"}."""
        cfg, step = self.config, self.step
        t0 = time.perf_counter()
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self.get_batch("train", self.rng["train"], cfg.batch_size * cfg.gradient_accumulation_steps)
        self.step_tokens = int(np.asarray(batch[0]).size)    # positions fed: rows x width (padded rows, DPO pairs)
        lora_dropout = cfg.lora_rank is not None and cfg.lora_dropout > 0
        masks = DropoutMasks(self.rng["dropout"], record=self.record) if cfg.dropout > 0 or lora_dropout else None
        if self.record:
            self.last_batch, self.last_masks = batch, masks
        self.model.zero_grad()
        set_lora_masks(self.model, masks)                     # the adapters' dropout, this step only
        try:
            with np.errstate(over="ignore", invalid="ignore"):   # non-finite results are caught just below
                # micro-batches, ranks; SFT: ignored targets; DPO: pieces of pairs (objective None: the LM)
                loss = self.dist.forward_backward(self.model, batch, masks, cfg.batch_size, self.objective)
        finally:
            set_lora_masks(self.model, None)                  # evaluation and sampling run without dropout
        with np.errstate(over="ignore", invalid="ignore"):
            norm = self.dist.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if not math.isfinite(loss):
            raise TrainingDiverged(step, f"non-finite loss ({loss}) at step {step} (lr {lr:.3g}); training stopped")
        if not math.isfinite(norm):
            raise TrainingDiverged(step, f"non-finite gradient norm ({norm}) at step {step} (loss {loss:.4f}, "
                                         f"lr {lr:.3g}); training stopped")
        with np.errstate(over="ignore", invalid="ignore"):   # non-finite weights: caught by the next loss
            self.dist.step(self.optimizer)
        self.step += 1
        dt = time.perf_counter() - t0
        self.train_time += dt
        return {"step": step, "loss": loss, "lr": lr, "grad_norm": norm, "dt_s": dt}

    def evaluate(self) -> dict[str, float]:
        """Mean loss over eval_iters batches of each split, without dropout (nanoGPT's estimate_loss). The
        batches are drawn from a generator seeded by the seed and the step alone, so an evaluation at step s
        sees the same batches however the run got there (in one go, or stopped and resumed: a run stopped
        at a step that is no eval_interval multiple evaluates there, which would shift a shared generator)."""
        cfg, out = self.config, {}
        rng = np.random.default_rng([cfg.seed, EVAL_SEED, self.step])
        for split in ("train", "val"):
            with np.errstate(over="ignore", invalid="ignore"):     # a non-finite mean stops the run
                out[split] = self.dist.eval_loss(lambda: self.get_batch(split, rng), self._eval_loss, cfg.eval_iters)
        return out

    # ---------------------------------------------------------------------------------------- loop

    def run(self, until: int | None = None) -> dict:
        """Train to max_iters (or to step `until`), evaluating and saving on schedule; a summary dict.
        Raises TrainingDiverged (after logging it) when something becomes non-finite."""
        cfg = self.config
        target = cfg.max_iters if until is None else min(until, cfg.max_iters)
        main = self.out_dir is not None and self.dist.is_main       # rank 0 writes the log
        log = RunLog(self.out_dir / LOG_NAME if main else None, append=self.resumed_from is not None,
                     progress=self.progress, total=target, initial=self.step)
        t_start, ema, tokens = time.perf_counter(), None, 0
        try:
            log.record({"event": "start", "step": self.step, "resumed": self.resumed_from is not None,
                            "params": self.model.num_parameters(),
                            "trainable_params": sum(p.data.size for p in self.params), "kernels": self.kernels, "ranks": self.dist.ranks(),
                            "model": self.model_config.to_dict(),
                            "train_config": cfg.to_dict()})
            while True:
                if (self.step % cfg.eval_interval == 0 or self.step == cfg.max_iters) \
                        and self.last_eval_step != self.step:
                    self._eval_and_save(log)
                if self.step >= target:
                    break
                try:
                    rec = self.train_step()
                except TrainingDiverged as e:
                    log.record({"event": "diverged", "step": e.step, "message": str(e),
                                "checkpoint": str(self.ckpt_path) if self.ckpt_path else None})
                    raise
                tokens += self.step_tokens
                tps = self.step_tokens / rec["dt_s"] if rec["dt_s"] > 0 else float("inf")
                ema = tps if ema is None else 0.9 * ema + 0.1 * tps
                log.step(rec, tps, ema, logged=rec["step"] % cfg.log_interval == 0)
            summary = {"step": self.step, "best_val_loss": self.best_val_loss,
                       "last_eval": self.history[-1] if self.history else None,
                       "wall_s": time.perf_counter() - t_start, "train_s": self.train_time,
                       "tokens_per_s": tokens / self.train_time if self.train_time > 0 else None}
            log.record({"event": "end", **{k: v for k, v in summary.items() if k != "last_eval"}})
            return summary
        finally:
            log.close()

    def _eval_and_save(self, log: RunLog) -> None:
        losses = self.evaluate()
        step = self.step
        self.last_eval_step = step
        if not (math.isfinite(losses["train"]) and math.isfinite(losses["val"])):
            msg = (f"non-finite eval loss (train {losses['train']}, val {losses['val']}) at step {step}; "
                   "training stopped")
            log.record({"event": "diverged", "step": step, "message": msg})
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
        log.evaluated(rec, self.ckpt_path)


def train(config: TrainConfig, **kwargs) -> dict:
    """Build a Trainer and run it to max_iters; see Trainer for the keyword arguments."""
    return Trainer(config, **kwargs).run()
