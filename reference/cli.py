"""The command line of the model: `python -m reference train|sample|plot`.

Each command lives in its own module, which provides `add_arguments(parser)` and `run(args) -> int`;
modules are imported only when their command runs, so `train` never imports matplotlib. The commands
that need PyTorch (`verify`, `bench`) live in the oracle: `python -m oracle verify|bench`, also
installed as `numpy-gpt` (oracle/cli.py), which serves these commands too. `reference/` never
imports the oracle.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": ("reference.train", "train a model on prepared data (see data/prepare.py)"),
    "sample": ("reference.sample", "generate text from a checkpoint"),
    "plot": ("reference.plot", "draw the loss curves of a training log to PNG (needs matplotlib)"),
}
# Commands of the oracle (they need torch): named here only to point at them.
ORACLE_COMMANDS = ("verify", "bench")


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


def main(argv: list[str] | None = None, prog: str = "python -m reference") -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ORACLE_COMMANDS:
        print(f"error: '{argv[0]}' is a command of the oracle: run `python -m oracle {argv[0]}` "
              f"(or `numpy-gpt {argv[0]}`)", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=prog, description="A GPT in pure NumPy, proved against PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.print_help() if not argv else parser.parse_args(argv)
        return 2
    module = _load(COMMANDS[argv[0]][0])
    if module is None:
        return 2
    cmd = argparse.ArgumentParser(prog=f"{prog} {argv[0]}", description=COMMANDS[argv[0]][1])
    module.add_arguments(cmd)
    args = cmd.parse_args(argv[1:])
    if getattr(args, "kernels", None) == "fast":              # train, sample: docs/performance.md, "Threads"
        from .fast.pool import products_on_pool
        with products_on_pool():
            return int(module.run(args) or 0)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
