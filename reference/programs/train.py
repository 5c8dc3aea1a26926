"""`python -m reference train`: the command around the training loop (reference/programs/training/).

    python -m reference train --preset shakespeare_char
    python -m reference train --resume --max_iters 4000

Settings come from flags, `--config FILE.json`, a resumed checkpoint, `--preset` and the defaults, in that
order of precedence (reference/programs/training/settings.py); the effective ones, and which path runs
(`kernels=fast` or `kernels=textbook`), are printed at start.

`--resume` finds the run it continues: `--resume PATH` (a checkpoint file, or a run directory holding
ckpt.safetensors), else OUT_DIR/ckpt.safetensors with OUT_DIR from flags, config file or preset. A
relative `data_dir` that does not exist from the current directory is looked up next to the package
(the repository checkout), so `--preset shakespeare_char` works from any directory.

Failures of the environment or of user input end the command with one line on stderr and a non-zero
exit: bad values (2), a run that cannot fit in memory (2, checked before allocating, see
training/memory.py), an OUT_DIR another run is using (2: one run per directory, reference/programs/lock.py), a disk that fills up or a directory that cannot be written (1), divergence (1), and
Ctrl-C or SIGTERM (130); in each case the last good checkpoint on disk is left as it was.

Fine-tuning (`--init-from DIR`, as nanoGPT's `init_from='gpt2'`): the model settings and weights come
from a Hugging Face GPT-2 or Llama directory (reference/programs/hf.py); `--block_size` may shorten its
context (default: the model's), and dropout and dtype stay the run's; any other model flag that
contradicts the directory is refused. The data must be prepared with the model's own tokenizer
(`python data/prepare.py --tokenizer DIR`).

LoRA (`--lora_rank R`, with `--lora_alpha`, `--lora_dropout`, `--lora_targets`; reference/lora.py): adapters on
the target layers once the starting weights are in, every other weight frozen, the optimizer over the
adapters only; a run from `--init-from DIR` writes OUT_DIR/adapter, a peft adapter directory for DIR, at
each save (docs/lora.md, "In train"; docs/fine-tuning.md).
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path
from typing import Any

from ..config import CHOICES
from .checkpoint import CheckpointError, load_checkpoint
from .collectives import world_comm
from .distributed import DataParallel
from .lock import DirectoryLock, DirectoryLocked, lock_directory
from . import rank_watch
from .options import add_kernels_argument
from .rank_rendezvous import ranks_ready, run_ranks
from .training.settings import (FIELD_HELP, FIELDS, PRESETS, TRAIN_CHOICES, TrainConfig, check_lora_flags,
                                check_objective_flags, check_optimizer_flags, describe_settings, init_config,
                                resolve_settings)
from .training.trainer import CKPT_NAME, Trainer, TrainingDiverged

__all__ = ["add_arguments", "parse_args", "run"]


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


class _CannotCreate(Exception):
    """OUT_DIR could not be created or its lock file opened (an OSError of the environment: exit 1)."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


def _take_lock(out_dir: str | None, locks: list[DirectoryLock] | None) -> None:
    """One run per directory (reference/programs/lock.py): lock OUT_DIR, creating it, or raise
    DirectoryLocked naming the holder's pid. Nothing to lock without an out_dir (no files written), nor on
    the ranks above 0 of a data-parallel run (`locks` None): rank 0 writes and holds the lock for all."""
    if not out_dir or locks is None:
        return
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise NotADirectoryError(f"out_dir {out_dir} is a file, not a directory; expected the directory to "
                                 "write ckpt.safetensors and log.jsonl into (or a path that does not exist yet)")
    try:
        locks.append(lock_directory(out_dir))
    except DirectoryLocked:
        raise
    except OSError as e:
        raise _CannotCreate(e) from None


def run(args: argparse.Namespace) -> int:
    """The command. Under `mpiexec -n N` (N > 1) every rank runs it with the same flags: rank 0 prints and
    writes, the others stay quiet; the ranks meet once after setting up, so a rank that failed to start
    stops every rank with its own error line, and any later failure of one rank alone ends the whole run
    (MPI_Abort) rather than leave the others waiting (reference/programs/rank_rendezvous.py). Under MPICH's
    mpiexec each rank trains in a child process its launched process watches, so a rank killed by a signal
    is named in one line (reference/programs/rank_watch.py)."""
    if rank_watch.should_watch():
        return rank_watch.watch_worker()
    rank_watch.become_worker()
    try:
        comm = world_comm()
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    locks: list[DirectoryLock] | None = [] if comm.rank == 0 else None     # rank 0 holds OUT_DIR's lock
    previous = _sigterm_as_ctrl_c() if comm.size == 1 else None
    try:
        return run_ranks(comm, lambda state: _run(args, comm, state, locks))
    finally:
        for lock in locks or ():
            lock.release()
        if previous is not None:
            import signal
            signal.signal(signal.SIGTERM, previous)


def _sigterm_as_ctrl_c():
    """One process: SIGTERM (`kill`, a scheduler's stop) ends the run as Ctrl-C does (KeyboardInterrupt: one
    line, exit 130, the lock released, the last checkpoint as it was) rather than at once with the lock file
    left behind. Returns the handler it replaced (None off the main thread, where none can be set). Several
    ranks raise a flag instead (DataParallel.catch_interrupts)."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    return signal.signal(signal.SIGTERM, interrupt)


def _run(args: argparse.Namespace, comm, state: dict, locks: list[DirectoryLock] | None) -> int:
    """The command on one rank; the lock of OUT_DIR it takes (rank 0 only: `locks` is None on the others)
    goes into `locks`, released by `run` however this ends."""
    progress = not args.no_progress and comm.rank == 0
    try:
        config, source = resolve_settings(args)
        resume = None
        if args.resume:
            path = find_checkpoint(args.resume, config.out_dir)
            explicit_out = "out_dir" in source and source["out_dir"] in ("flag", "config file")
            _take_lock(config.out_dir if explicit_out else str(path.parent), locks)   # before reading it
            ckpt = load_checkpoint(path)                      # FileNotFoundError / CheckpointError
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
            _take_lock(config.out_dir, locks)                  # checked under the lock: no run can slip in
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
        check_lora_flags(config, source)
        check_objective_flags(config, source)
        kernels = getattr(args, "kernels", "fast")
        dist = DataParallel(comm, config.zero_stage)
        line = describe_settings(config, source, kernels=kernels)
        if comm.size > 1 or config.gradient_accumulation_steps > 1 or config.zero_stage:
            line += "; " + dist.describe(config.batch_size * config.gradient_accumulation_steps, config.batch_size,
                                         config.block_size, "pairs" if config.objective == "dpo" else "rows")
        print(line, file=sys.stderr)
        out_dir = Path(config.out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise NotADirectoryError(f"out_dir {out_dir} is a file, not a directory; expected the directory to "
                                     "write ckpt.safetensors and log.jsonl into (or a path that does not exist yet)")
        trainer = Trainer(config, resume=resume, progress=progress, init_from=init_from, kernels=kernels, dist=dist)
        if resume is not None and resume.step >= config.max_iters:
            print(f"nothing to train: the checkpoint {resume.path} is at step {resume.step} and max_iters is "
                  f"{config.max_iters}; pass --max_iters N with N > {resume.step} to train further", file=sys.stderr)
            return 0
        for line in schedule_warnings(config):
            print(line, file=sys.stderr)
    except (CheckpointError, FileNotFoundError, NotADirectoryError, ValueError, ImportError, DirectoryLocked) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except _CannotCreate as e:                                 # the environment's fault, not the user's input
        print(f"error: {_os_error(e.error)}", file=sys.stderr)
        return 1
    except MemoryError:
        print("error: out of memory while loading the data or building the model; lower batch_size, block_size, "
              "n_layer or n_embd", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {_os_error(e)}", file=sys.stderr)
        return 1
    if comm.size > 1:
        trainer.dist.catch_interrupts()                        # before the meeting: no KeyboardInterrupt from
        code = ranks_ready(comm, trainer, state)               # inside it, so a rank met is a rank ready
        if code:
            return code
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
        state["alone"] = True                                  # one rank's failure: MPI_Abort ends the others
        print(f"error: out of memory at step {trainer.step} (about {trainer.memory['total'] / 2**30:.1f} GiB "
              f"estimated); lower batch_size or block_size; {_checkpoint_state(trainer.ckpt_path)}", file=sys.stderr)
        return 1
    except OSError as e:                                       # a failed save every rank was told of (Trainer.save)
        state["alone"] = not getattr(e, "every_rank_knows", False)      # ends every rank alike: no MPI_Abort
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


def checkpoint_note(trainer: Trainer) -> str:
    """Where the run's checkpoint is, for the `done:` line; or why this run wrote none (a checkpoint is
    written after step 0 only, when the val loss improves on the best so far, which step 0's evaluation
    sets, or at every evaluation with always_save_checkpoint)."""
    saved = [r["step"] for r in trainer.history if r.get("saved")]
    if saved:
        return f"checkpoint {trainer.ckpt_path} (step {saved[-1]})"
    kept = (f"{trainer.ckpt_path} is unchanged" if trainer.ckpt_path is not None and trainer.ckpt_path.exists()
            else "no checkpoint was written")
    if trainer.step == 0:                                     # every run evaluates its last step, so step > 0
        why = ("the run trained no step (max_iters 0), and step 0, the initial weights, is never saved; "
               "pass --max_iters N with N > 0 to train and save")
    else:
        why = (f"the val loss never beat the best so far, {trainer.best_val_loss:.4f} "
               f"(--always_save_checkpoint saves at every evaluation)")
    return f"{kept}: {why}"
