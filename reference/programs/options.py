"""Command-line options shared by the commands."""

from __future__ import annotations

import argparse

from ..fast import KERNELS


def add_kernels_argument(parser: argparse.ArgumentParser) -> None:
    """`--kernels {fast,textbook}` for train and sample (default fast)."""
    parser.add_argument("--kernels", choices=KERNELS, default="fast",
                        help="which implementation of the layers runs: fast (default) or textbook, the code the "
                             "docs derive (the same numbers to round-off; docs/performance.md)")
