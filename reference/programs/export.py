"""Export: `python -m reference export --ckpt out/ckpt.safetensors --to out/hf` writes a checkpoint's
model as a Hugging Face model directory (config.json + model.safetensors, and tokenizer.json for a BPE
tokenizer, with chat_template.jinja, tokenizer_config.json and generation_config.json where the tokenizer
carries a chat template and special tokens: reference/programs/tokenizer_settings.py) that transformers' `AutoModelForCausalLM.from_pretrained(DIR)` loads with the same logits:
GPT2LMHeadModel for a GPT-2-like config, LlamaForCausalLM for a Llama-like one (reference/programs/hf_export.py,
docs/huggingface.md). Any other config is refused with the option that has no equivalent. A LoRA run's
checkpoint is exported merged, W + (alpha / r) B A in each adapted layer (peft's `merge_and_unload`); its
adapters alone are the peft directory `train` writes beside the checkpoint (OUT_DIR/adapter).

The directory holds exactly what the export wrote: it is built beside DIR and swapped in
(reference/programs/hf_export.py, `save_pretrained`), so `--overwrite` leaves no file of the model that was
there, and a failure or Ctrl-C leaves DIR as it was. While it runs, the export holds the lock of DIR
(`.DIR.lock` beside it, reference/programs/lock.py): a second export to DIR is refused at start."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .atomic import os_error_line
from .lock import DirectoryLock, DirectoryLocked, lock_file

__all__ = ["add_arguments", "lock_target", "run"]


def lock_target(target) -> DirectoryLock:
    """The lock of the export target `target`: a file beside it (the target itself is swapped by a
    rename, so a lock file inside it would move away with the old directory); removed on release."""
    target = Path(target).absolute()
    created = None
    if not target.parent.exists():
        target.parent.mkdir(parents=True)
        created = target.parent
    return lock_file(target.with_name(f".{target.name}.lock"), target, created=created)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", default="out/ckpt.safetensors", help="checkpoint (default out/ckpt.safetensors)")
    parser.add_argument("--to", required=True, metavar="DIR", help="the Hugging Face model directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it already holds a Hugging Face model (config.json): "
                        "afterwards it holds only what this export wrote")


def run(args: argparse.Namespace) -> int:
    from ..lora import merge_lora
    from .checkpoint import CheckpointError, build_model, load_checkpoint
    from .hf_export import hf_config, save_pretrained

    out = Path(args.to)
    lock = None
    try:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--to {out}: exists and is not a directory")
        lock = lock_target(out)                                  # one export per directory
        if out.is_dir() and any(out.iterdir()) and not args.overwrite:
            raise ValueError(f"--to {out}: the directory is not empty; pass --overwrite to replace it")
        ckpt = load_checkpoint(args.ckpt)
        arch = hf_config(ckpt.config)["architectures"][0]       # refuses before anything is built or written
        model = merge_lora(build_model(ckpt))                   # a LoRA run's adapters folded into W (peft's merge_and_unload)
        save_pretrained(model, out, tokenizer=ckpt.tokenizer)
    except (CheckpointError, FileNotFoundError, ValueError, DirectoryLocked, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:                                     # a read-only, full or forbidden --to
        print(f"error: {os_error_line(e, 'choose a writable --to')}", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.release()
    kind = (ckpt.tokenizer or {}).get("kind")
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"wrote {out} ({files}): {arch}, {model.num_parameters():,} parameters, {ckpt.config.dtype}")
    if kind != "bpe":
        print(f"note: the checkpoint's {kind or 'missing'} tokenizer has no Hugging Face form; "
              "no tokenizer files were written", file=sys.stderr)
    return 0
