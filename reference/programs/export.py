"""Export: `python -m reference export --ckpt out/ckpt.safetensors --to out/hf` writes a checkpoint's
model as a Hugging Face model directory (config.json + model.safetensors, and tokenizer.json for a BPE
tokenizer) that transformers' `AutoModelForCausalLM.from_pretrained(DIR)` loads with the same logits:
GPT2LMHeadModel for a GPT-2-like config, LlamaForCausalLM for a Llama-like one (reference/programs/hf.py,
docs/huggingface.md). Any other config is refused with the option that has no equivalent."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .atomic import os_error_line

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", default="out/ckpt.safetensors", help="checkpoint (default out/ckpt.safetensors)")
    parser.add_argument("--to", required=True, metavar="DIR", help="the Hugging Face model directory to write")
    parser.add_argument("--overwrite", action="store_true", help="write into DIR even if it already holds files")


def run(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, build_model, load_checkpoint
    from .hf import hf_config, save_pretrained

    out = Path(args.to)
    try:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--to {out}: exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not args.overwrite:
            raise ValueError(f"--to {out}: the directory is not empty; pass --overwrite to write into it")
        ckpt = load_checkpoint(args.ckpt)
        arch = hf_config(ckpt.config)["architectures"][0]       # refuses before anything is built or written
        model = build_model(ckpt)
        save_pretrained(model, out, tokenizer=ckpt.tokenizer)
    except (CheckpointError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:                                     # a read-only, full or forbidden --to
        print(f"error: {os_error_line(e, 'choose a writable --to')}", file=sys.stderr)
        return 2
    kind = (ckpt.tokenizer or {}).get("kind")
    files = "config.json, model.safetensors" + (", tokenizer.json" if kind == "bpe" else "")
    print(f"wrote {out} ({files}): {arch}, {model.num_parameters():,} parameters, {ckpt.config.dtype}")
    if kind != "bpe":
        print(f"note: the checkpoint's {kind or 'missing'} tokenizer has no Hugging Face form; "
              "no tokenizer files were written", file=sys.stderr)
    return 0
