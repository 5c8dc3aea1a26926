"""The whole command line: `python -m oracle <command>`, installed as the `numpy-gpt` console script.

`verify` and `bench` need PyTorch and live in the oracle (oracle/bridge/verify.py, oracle/bridge/bench.py);
`train`, `sample`, `plot` and `export` are the model's own commands, served by reference/programs/cli.py
(imported only when one of them runs, so `train` never imports torch). Each command's module
provides `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import sys

from reference.programs import cli as reference_cli

COMMANDS = {
    "verify": ("oracle.bridge.verify", "prove every layer and the whole model against PyTorch (needs torch)"),
    "train": reference_cli.COMMANDS["train"],
    "sample": reference_cli.COMMANDS["sample"],
    "bench": ("oracle.bridge.bench", "time training steps of both paths against the PyTorch twin (needs torch)"),
    "plot": reference_cli.COMMANDS["plot"],
    "export": reference_cli.COMMANDS["export"],
}
PROG = "numpy-gpt"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    reference_cli.utf8_output()
    return reference_cli.dispatch(argv, COMMANDS, PROG)


if __name__ == "__main__":
    sys.exit(main())
