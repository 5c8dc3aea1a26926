"""A run's settings: `TrainConfig`, the presets, and where each setting comes from.

Highest precedence first (`resolve_settings`):

    1. flags given on the command line
    2. `--config file.json` (a flat JSON object of TrainConfig fields)
    3. on `--resume`: the training config saved in the checkpoint
    4. `--preset NAME`
    5. TrainConfig's defaults (nanoGPT's shakespeare_char CPU recipe)

What you type now (flags, then the file you name) wins over what was saved; what the run was (its
checkpoint) wins over templates (a preset, the defaults). So `--preset shakespeare_char --resume` continues
the run with its own max_iters, not the preset's, while `--resume --max_iters 4000` extends it. The model
settings of a resumed run must equal the checkpoint's. The effective settings, with where each
non-default one came from, are printed at start (`describe_settings`) and logged in the "start" record.

Fine-tuning (`--init-from DIR`, as nanoGPT's `init_from='gpt2'`): the model settings come from a Hugging
Face GPT-2 or Llama directory (reference/programs/hf.py); see `init_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import GPTConfig
from ...optim import cosine_lr
from ..options import check_field


@dataclass
class TrainConfig:
    """Everything a run needs besides the data. Defaults: nanoGPT's shakespeare_char CPU recipe
    (config/train_shakespeare_char.py with the README's CPU overrides; train.py's defaults elsewhere).
    ValueError names a field of the wrong kind or out of range ("batch_size must be >= 1 (int), got 0")."""

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
    recompute: bool = False         # activation checkpointing: keep block inputs, recompute blocks in backward
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
    gradient_accumulation_steps: int = 1   # a step's batch: batch_size x this many rows, in micro-batches
    zero_stage: int = 0             # 1: AdamW's moments split over the MPI ranks (llm.c's ZeRO-1)
    # evaluation, logging, checkpoints
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 1
    always_save_checkpoint: bool = False
    # objective
    objective: str = "lm"           # lm: next-token cross-entropy (SFT data: on responses); dpo: preference pairs
    beta: float = 0.1               # DPO's beta (reference/programs/dpo.py)
    packing: bool = True            # SFT data: windows of the packed stream; False: one example per row, padded
    # LoRA (reference/lora.py): adapters on the lora_targets layers, every other weight frozen
    lora_rank: int | None = None    # None: no adapters, every weight trains
    lora_alpha: float = 8.0         # peft's LoraConfig defaults: alpha 8, dropout 0, GPT-2's c_attn
    lora_dropout: float = 0.0
    lora_targets: str = "c_attn"    # comma-separated layer names or patterns (reference.lora.matches)

    def __post_init__(self):
        """The optimisation and logging fields' kinds and ranges (the model fields are GPTConfig's to
        check, in `model_config`)."""
        for name, f in FIELDS.items():              # JSON's 1 for 1.0
            value = getattr(self, name)
            if f.type == "float" and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, float(value))
        for names, kind, ok, what in FIELD_RULES:
            for name in names:
                check_field(name, getattr(self, name), kind, ok, what)
        if self.optimizer == "sgd" and self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(f"nesterov needs momentum > 0 and dampening 0 (as torch.optim.SGD), "
                             f"got momentum={self.momentum!r}, dampening={self.dampening!r}")
        if self.lora_rank is not None:
            check_field("lora_rank", self.lora_rank, int, lambda v: v >= 1,
                        ">= 1, or none to train every weight without adapters")
        if not all(t.strip() for t in self.lora_targets.split(",")):
            raise ValueError(f"lora_targets must be comma-separated layer names or patterns (c_attn,c_proj), "
                             f"got {self.lora_targets!r}")
        if self.zero_stage == 1 and self.optimizer != "adamw":
            raise ValueError(f"zero_stage 1 splits AdamW's moments over the ranks; optimizer {self.optimizer!r} "
                             "has none to split: pass --zero_stage 0 or --optimizer adamw")

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, **{k: getattr(self, k) for k in MODEL_FIELDS})

    @property
    def lora_target_list(self) -> list[str]:
        """lora_targets as apply_lora takes them: "c_attn, c_proj" -> ["c_attn", "c_proj"]."""
        return [t.strip() for t in self.lora_targets.split(",")]

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


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
TRAIN_CHOICES = {"optimizer": ("adamw", "sgd"), "objective": ("lm", "dpo")}
# (fields, kind, ok, what it must be): TrainConfig's checks, in the order they run.
FIELD_RULES = (
    (("batch_size", "eval_interval", "eval_iters", "log_interval", "gradient_accumulation_steps"), int,
     lambda v: v >= 1, ">= 1"),
    (("zero_stage",), int, lambda v: v in (0, 1), "0 or 1"),
    (("max_iters", "warmup_iters", "lr_decay_iters", "seed"), int, lambda v: v >= 0, ">= 0"),
    (("learning_rate",), float, lambda v: math.isfinite(v) and v > 0, "finite and > 0"),
    (("min_lr", "weight_decay", "eps", "grad_clip"), float, lambda v: math.isfinite(v) and v >= 0, "finite and >= 0"),
    (("beta1", "beta2"), float, lambda v: 0 <= v < 1, "in [0, 1)"),
    (("decay_lr", "always_save_checkpoint", "nesterov", "recompute", "packing"), bool, lambda v: True, "a boolean"),
    (("optimizer",), str, lambda v: v in TRAIN_CHOICES["optimizer"], f"one of {TRAIN_CHOICES['optimizer']}"),
    (("momentum",), float, lambda v: math.isfinite(v) and v >= 0, "finite and >= 0"),
    (("dampening",), float, math.isfinite, "finite"),
    (("objective",), str, lambda v: v in TRAIN_CHOICES["objective"], f"one of {TRAIN_CHOICES['objective']}"),
    (("beta",), float, lambda v: math.isfinite(v) and v > 0, "finite and > 0"),
    (("lora_alpha",), float, lambda v: math.isfinite(v) and v > 0, "finite and > 0"),
    (("lora_dropout",), float, lambda v: 0 <= v < 1, "in [0, 1)"),
    (("lora_targets",), str, lambda v: v.strip() != "", "layer names or patterns, comma-separated"),
)
FIELD_HELP = {
    "optimizer": "adamw (uses beta1, beta2, eps) or sgd (torch.optim.SGD; uses momentum, dampening, nesterov)",
    "momentum": "SGD's momentum factor, >= 0 (0: plain SGD)",
    "dampening": "SGD's dampening of the momentum buffer's gradient term",
    "nesterov": "SGD with Nesterov momentum (needs momentum > 0 and dampening 0)",
    "gradient_accumulation_steps": "nanoGPT's name: a step's batch is batch_size x this many rows, run in "
                                   "micro-batches of at most batch_size rows (over all MPI ranks together)",
    "zero_stage": "llm.c's name: 1 splits AdamW's moments over the MPI ranks (ZeRO-1), 0 keeps them whole",
    "objective": "lm: next-token cross-entropy (on response tokens only for data/prepare.py --sft data); "
                 "dpo: direct preference optimisation on data/prepare.py --dpo pairs, the starting weights as "
                 "the frozen reference",
    "beta": "DPO's beta, > 0: how far the policy may move from the reference",
    "packing": "for data/prepare.py --sft data (the name is TRL's SFTConfig flag): --packing draws windows of "
               "block_size + 1 tokens from the examples laid one after another, as nanoGPT does; --no-packing makes each row one whole example, "
               "right-padded to the batch's longest (an example longer than block_size + 1 tokens is refused)",
    "recompute": "activation checkpointing: keep each block's input only and run its forward again in the "
                 "backward (the same gradients bit for bit, less memory, about 1/3 more compute; "
                 "docs/checkpointing.md)",
    "lora_rank": "peft's r: train rank-r adapters (reference/lora.py) on the lora_targets layers and freeze every "
                 "other weight; none trains every weight",
    "lora_alpha": "peft's lora_alpha: the adapters' update is (lora_alpha / lora_rank) B A",
    "lora_dropout": "dropout on the adapters' input, in [0, 1)",
    "lora_targets": "the Linear layers that get adapters: comma-separated names (c_attn, c_proj, c_fc, c_gate, "
                    "lm_head, a suffix such as mlp.c_proj) or patterns of full names (transformer.h.1.*)",
}
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(GPTConfig) if f.name in FIELDS)
OPTIMIZER_FIELDS = {"adamw": ("beta1", "beta2", "eps"), "sgd": ("momentum", "dampening", "nesterov")}

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


def describe_settings(config: TrainConfig, source: dict[str, str], kernels: str | None = None) -> str:
    """One line: which path runs (`kernels`, "fast" or "textbook", when given), then every setting given now
    (flag, config file) or differing from the default, with where it came from; the rest are the defaults
    (the shakespeare_char recipe)."""
    defaults = TrainConfig()
    parts = []
    for name in FIELDS:
        value, where = getattr(config, name), source.get(name)
        if where in ("flag", "config file") or value != getattr(defaults, name):
            parts.append(f"{name}={value!r}" + (f" ({where})" if where else ""))
    head = "settings: " + (f"kernels={kernels}; " if kernels else "")
    if not parts:
        return head + "the defaults (the shakespeare_char recipe)"
    return head + ", ".join(parts) + "; the rest at their defaults"


def check_optimizer_flags(config: TrainConfig, source: dict[str, str]) -> None:
    """A flag of the optimizer this run does not use is a ValueError: `--momentum 0.5` with AdamW would
    otherwise be ignored without a word. (A config file may hold every key, as a saved train_config does.)"""
    for optimizer, names in OPTIMIZER_FIELDS.items():
        given = [f"--{n}" for n in names if source.get(n) == "flag"]
        if given and config.optimizer != optimizer:
            what = f"{given[0]} is a setting" if len(given) == 1 else f"{' and '.join(given)} are settings"
            raise ValueError(f"{what} of --optimizer {optimizer}, but this run uses {config.optimizer}; drop "
                             f"{'it' if len(given) == 1 else 'them'} or pass --optimizer {optimizer}")


LORA_FIELDS = ("lora_alpha", "lora_dropout", "lora_targets")


def check_lora_flags(config: TrainConfig, source: dict[str, str]) -> None:
    """A LoRA flag without --lora_rank is a ValueError: `--lora_targets c_proj` alone would otherwise train
    every weight without a word. (A config file may hold every key, as a saved train_config does.)"""
    given = [f"--{n}" for n in LORA_FIELDS if source.get(n) == "flag"]
    if given and config.lora_rank is None:
        what = f"{given[0]} is a setting" if len(given) == 1 else f"{' and '.join(given)} are settings"
        raise ValueError(f"{what} of LoRA adapters, but this run has no --lora_rank; pass --lora_rank R "
                         f"(e.g. 8) to train adapters, or drop {'it' if len(given) == 1 else 'them'}")


def check_objective_flags(config: TrainConfig, source: dict[str, str]) -> None:
    """`--beta` is DPO's: given with another objective it is a ValueError, not a setting ignored without a word."""
    if source.get("beta") == "flag" and config.objective != "dpo":
        raise ValueError(f"--beta is a setting of --objective dpo, but this run's objective is {config.objective}; "
                         "drop it, or pass --objective dpo (with data from python data/prepare.py --dpo FILE.jsonl)")


def init_config(config: TrainConfig, path, *, block_size: int | None = None,
                source: dict[str, str] | None = None) -> TrainConfig:
    """`config` with the model settings of the Hugging Face model directory `path` (reference/programs/hf.py);
    the context is `block_size` if given (at most the model's), else the model's. HFError (a ValueError)
    for a missing, incomplete or unsupported directory. `source` ({field: where}, resolve_settings): a
    model setting given as a flag or in a config file that the model contradicts is a ValueError naming
    both values (dtype, dropout and a shorter block_size are ours to choose); the fields taken from the
    model are marked "init-from" in it."""
    from ..hf import check_dir, untied_head
    model, arch = check_dir(path, dtype=config.dtype, dropout=config.dropout, block_size=block_size)
    if untied_head(path, model, arch):                   # loaded untied, as from_pretrained does
        model = model.replace(tie_weights=False)
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
