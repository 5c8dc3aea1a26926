"""The command line: `python -m reference <command>` or the `numpy-gpt` console script.

Each command lives in its own module, which provides `add_arguments(parser)` and `run(args) -> int`;
modules are imported only when their command runs, so `train` never imports torch and `verify`
can say clearly when torch is missing.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "verify": ("oracle.verify", "prove every layer and the whole model against PyTorch (needs torch)"),
    "train": ("reference.train", "train a model on prepared data (see data/prepare.py)"),
    "sample": ("reference.sample", "generate text from a checkpoint"),
    "bench": ("reference.bench", "time training steps against the PyTorch twin (needs torch)"),
    "plot": ("reference.plot", "draw the loss curves of a training log to PNG (needs matplotlib)"),
    "export": ("reference.export", "write a checkpoint as a Hugging Face model directory (needs the hf extra)"),
}


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = (e.name or "").split(".")[0]
        if missing not in ("torch", "matplotlib", "tqdm"):
            raise
        install = ("pip install torch==2.13.0 && pip install -e '.[test]'" if missing == "torch"
                   else "pip install -e '.[train]'")
        print(f"error: this command needs {missing}, which is not installed.\nInstall it with: {install}",
              file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="numpy-gpt", description="A GPT in pure NumPy, proved against PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.print_help() if not argv else parser.parse_args(argv)
        return 2
    module = _load(COMMANDS[argv[0]][0])
    if module is None:
        return 2
    cmd = argparse.ArgumentParser(prog=f"numpy-gpt {argv[0]}", description=COMMANDS[argv[0]][1])
    module.add_arguments(cmd)
    args = cmd.parse_args(argv[1:])
    if argv[0] in ("train", "sample"):                         # faster: docs/performance.md, "Threads"
        from .functional import products_on_pool
        with products_on_pool():
            return int(module.run(args) or 0)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
