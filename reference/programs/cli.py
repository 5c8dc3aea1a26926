"""The command line of the model: `python -m reference train|sample|plot|export`.

Each command lives in its own module, which provides `add_arguments(parser)` and `run(args) -> int`;
modules are imported only when their command runs, so `train` never imports matplotlib. The commands
that need PyTorch (`verify`, `bench`) live in the oracle: `python -m oracle verify|bench`, also
installed as `numpy-gpt` (oracle/cli.py), which serves these commands too. `reference/` never
imports the oracle.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "train": ("reference.programs.train", "train a model on prepared data (see data/prepare.py)"),
    "sample": ("reference.programs.sample", "generate text from a checkpoint"),
    "plot": ("reference.programs.plot", "draw the loss curves of a training log to PNG (needs matplotlib)"),
    "export": ("reference.programs.export", "write a checkpoint as a Hugging Face model directory (needs the hf extra)"),
    "attention": ("reference.programs.attention_map",
                  "draw each layer's attention probabilities for a prompt to PNG (needs matplotlib)"),
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


def main(argv: list[str] | None = None, prog: str = "python -m reference") -> int:
    argv = sys.argv[1:] if argv is None else argv
    utf8_output()
    if argv and argv[0] in ORACLE_COMMANDS:
        print(f"error: '{argv[0]}' is a command of the oracle: run `python -m oracle {argv[0]}` "
              f"(or `numpy-gpt {argv[0]}`)", file=sys.stderr)
        return 2
    return dispatch(argv, COMMANDS, prog)


def dispatch(argv: list[str], commands: dict[str, tuple[str, str]], prog: str) -> int:
    """Run the command argv[0] of `commands` ({name: (module, help)}), its module imported only now;
    with no command or an unknown one, the list of commands and exit 2. Shared by `python -m reference`
    and `python -m oracle` / `numpy-gpt` (oracle/cli.py), which adds verify and bench."""
    parser = argparse.ArgumentParser(prog=prog, description="A GPT in pure NumPy, proved against PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (_, help_text) in commands.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in commands:
        parser.print_help() if not argv else parser.parse_args(argv)
        return 2
    module = _load(commands[argv[0]][0])                       # a clear line when torch etc. is missing
    if module is None:
        return 2
    return run_command(argv, module, command_parser(argv[0], module, prog=prog, commands=commands), prog)


def run_command(argv: list[str], module, cmd: argparse.ArgumentParser, prog: str) -> int:
    """Parse the command's flags and run it: on the fast path with the products on the pool (docs/
    performance.md, "Threads"); Ctrl-C outside a command's own handling is one line and exit 130; a closed
    stdout (`sample | head`) ends it quietly with exit 141."""
    args = cmd.parse_args(argv[1:])
    try:
        if getattr(args, "kernels", None) == "fast":           # train, sample
            from ..fast.pool import products_on_pool
            with products_on_pool():
                return int(module.run(args) or 0)
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"interrupted: {prog} {argv[0]} stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:                                    # `sample | head`: the reader has gone
        devnull = os.open(os.devnull, os.O_WRONLY)             # Python's recipe (docs: signal, "Note on SIGPIPE"):
        os.dup2(devnull, sys.stdout.fileno())                  # no second error when stdout is flushed at exit
        return 141                                             # 128 + SIGPIPE, as a shell reports it


def command_parser(name: str, module=None, prog: str = "numpy-gpt", commands: dict | None = None
                   ) -> argparse.ArgumentParser:
    """The parser of one command; every option's help shows its default (ArgumentDefaultsHelpFormatter)."""
    commands = COMMANDS if commands is None else commands
    module = module or importlib.import_module(commands[name][0])
    cmd = argparse.ArgumentParser(prog=f"{prog} {name}", description=commands[name][1],
                                  formatter_class=HelpFormatter)
    module.add_arguments(cmd)
    return cmd


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown for every option (unless its help already says "default"); descriptions as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower():
            return text
        if action.required:                                    # a required option has no default to show
            return f"{text} (required)"
        return super()._get_help_string(action)


if __name__ == "__main__":
    sys.exit(main())
