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


def utf8_output() -> None:
    """Write stdout and stderr as UTF-8 whatever the locale (a C locale, a cp1252 redirect on Windows):
    text the model generated, or a path with any character, can always be written; input files are read
    as UTF-8 too. (Python's own UTF-8 mode, PEP 540, does the same; streams that cannot be reconfigured,
    e.g. a test's capture, are left alone.)"""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and (stream.encoding or "").lower().replace("-", "") != "utf8":
            try:
                stream.flush()
                reconfigure(encoding="utf-8", errors="replace")
            except (ValueError, OSError):        # a closed or detached stream: leave it as it is
                pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    utf8_output()
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
    cmd = command_parser(argv[0], module)
    args = cmd.parse_args(argv[1:])
    try:
        if argv[0] in ("train", "sample"):                     # faster: docs/performance.md, "Threads"
            from .functional import products_on_pool
            with products_on_pool():
                return int(module.run(args) or 0)
        return int(module.run(args) or 0)
    except KeyboardInterrupt:                                  # Ctrl-C outside a command's own handling
        print(f"interrupted: numpy-gpt {argv[0]} stopped", file=sys.stderr)
        return 130


def command_parser(name: str, module=None) -> argparse.ArgumentParser:
    """The parser of one command; every option's help shows its default (ArgumentDefaultsHelpFormatter)."""
    module = module or importlib.import_module(COMMANDS[name][0])
    cmd = argparse.ArgumentParser(prog=f"numpy-gpt {name}", description=COMMANDS[name][1],
                                  formatter_class=HelpFormatter)
    module.add_arguments(cmd)
    return cmd


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown for every option (unless its help already says "default"); descriptions as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower():
            return text
        return super()._get_help_string(action)


if __name__ == "__main__":
    sys.exit(main())
