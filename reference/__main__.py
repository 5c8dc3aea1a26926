"""`python -m reference COMMAND`: the command line, which lives in reference/programs/cli.py.

The one module of the top level that reaches the programs: it is the entry point, never imported by
the model (docs/architecture.md)."""

import sys

from .programs.cli import main

sys.exit(main())
