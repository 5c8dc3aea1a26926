"""Run the example commands of a page (the README, docs/fine-tuning.md) as a test: parse the bash block
after a marker, make each command tiny, run it, and collect the lines that warn."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable

from reference.programs.training.settings import PRESETS, TrainConfig

REPO = Path(__file__).resolve().parent.parent
CORPUS = "ROMEO:\nBut soft, what light through yonder window breaks?\nJULIET:\nO Romeo, Romeo!\n" * 20
STEPS = 2


def commands_after(page: Path, marker: str) -> list[list[str]]:
    """The argv of each command in `page`'s bash block after `marker` (continuations joined, comments dropped)."""
    text = page.read_text(encoding="utf-8")
    assert marker in text, f"{page.relative_to(REPO)} has no {marker} marker before its commands"
    block = re.search(r"```bash\n(.*?)```", text[text.index(marker):], re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def flag(argv: list[str], name: str):
    return argv[argv.index(name) + 1] if name in argv else None


def shrunk_schedule(argv: list[str]) -> list[str]:
    """max_iters -> STEPS, lr_decay_iters and warmup_iters scaled alike (rounded up): the page's settings
    (flags over preset over defaults), in proportion."""
    settings = dataclasses.asdict(TrainConfig())
    settings.update(PRESETS.get(flag(argv, "--preset"), {}))
    settings.update({k: int(flag(argv, f"--{k}")) for k in ("max_iters", "lr_decay_iters", "warmup_iters")
                     if flag(argv, f"--{k}") is not None})
    scale = STEPS / settings["max_iters"]
    return ["--max_iters", str(STEPS), "--lr_decay_iters", str(math.ceil(settings["lr_decay_iters"] * scale)),
            "--warmup_iters", str(math.ceil(settings["warmup_iters"] * scale))]


def make_tiny(argv: list[str], *, prepare: list[str], model: list[str], run: list[str]) -> list[str]:
    """A page's `python ...` argv made runnable here and tiny: this interpreter; prepare.py from this checkout
    with `prepare` appended; train with its schedule shrunk, `run` and (unless it starts from a
    directory) `model` appended; sample with 5 new tokens."""
    assert argv[0] == "python", argv
    if argv[1] == "data/prepare.py":
        return [sys.executable, str(REPO / "data" / "prepare.py"), *argv[2:], *prepare]
    command = [sys.executable, *argv[1:]]
    if argv[3] == "train":
        return command + shrunk_schedule(argv) + run + ([] if "--init-from" in argv else model)
    if argv[3] == "sample":
        return command + ["--max-new-tokens", "5"]
    return command


def run_tiny(argv: list[str], cwd: Path, tiny: Callable[[list[str]], list[str]]) -> list[str]:
    """Run the page's command argv made tiny by `tiny`; assert it succeeds; return the lines that warn."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "NUMPY_GPT_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    out = subprocess.run(tiny(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    said = out.stdout + out.stderr
    assert out.returncode == 0, f"{shlex.join(argv)} failed:\n{said}"
    return [line for line in said.splitlines() if "warning" in line.lower()]
