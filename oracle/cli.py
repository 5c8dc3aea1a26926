"""The whole command line: `python -m oracle <command>`, installed as the `numpy-gpt` console script.

`verify` and `bench` need PyTorch and live here, in the oracle (oracle/verify.py, oracle/bench.py);
`train`, `sample`, `plot` and `export` are the model's own commands, served by reference/cli.py
(imported only when one of them runs, so `train` never imports torch). Each command's module
provides `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import sys

from reference import cli as reference_cli

COMMANDS = {
    "verify": ("oracle.verify", "prove every layer and the whole model against PyTorch (needs torch)"),
    "train": reference_cli.COMMANDS["train"],
    "sample": reference_cli.COMMANDS["sample"],
    "bench": ("oracle.bench", "time training steps of both paths against the PyTorch twin (needs torch)"),
    "plot": reference_cli.COMMANDS["plot"],
    "export": reference_cli.COMMANDS["export"],
}
PROG = "numpy-gpt"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in reference_cli.COMMANDS:
        return reference_cli.main(argv, prog=PROG)
    reference_cli.utf8_output()
    parser = argparse.ArgumentParser(prog=PROG, description="A GPT in pure NumPy, proved against PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.print_help() if not argv else parser.parse_args(argv)
        return 2
    module = reference_cli._load(COMMANDS[argv[0]][0])         # a clear line when torch is missing
    if module is None:
        return 2
    cmd = reference_cli.command_parser(argv[0], module, prog=PROG, commands=COMMANDS)
    return reference_cli.run_command(argv, module, cmd, PROG)


if __name__ == "__main__":
    sys.exit(main())
