"""What a training run reports as it goes: `out_dir/log.jsonl` and the progress shown on stderr.

Logs: one JSON object per line, each line one whole append (`LogFile`): `{"event": "train", "step", "loss",
"lr", "grad_norm", "dt_s", "tokens_per_s"}` for every log_interval-th step (tokens_per_s: the positions the
step fed through the model, rows x width with padded rows and both rows of a DPO pair, per second),
`{"event": "eval", "step", "train_loss", "val_loss", "lr", "best_val_loss", "saved"}` per evaluation, plus
"start", "end" and "diverged" records; a non-finite float is written as null. Progress (rank 0, unless
--no-progress): a tqdm bar with the loss, lr and tokens/s, each evaluation's line written above it; without
tqdm, a note and then the logged steps' lines and the evaluations' lines printed instead.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path


class LogFile:
    """log.jsonl opened O_APPEND: each `write(line)` is one os.write of the whole line, so lines from two
    writers never interleave inside a line (POSIX appends each write at the end, in one piece)."""

    def __init__(self, path: Path, *, append: bool):
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if append else os.O_TRUNC)
        self.fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o666)

    def write(self, line: str) -> None:
        data = line.encode("utf-8")
        written = os.write(self.fd, data)
        while written < len(data):                   # a short write (a full disk): finish it or raise ENOSPC
            written += os.write(self.fd, data[written:])

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def write_record(log: LogFile | None, record: dict) -> None:
    """One JSON line (a non-finite float as null) appended to `log`; nothing when `log` is None."""
    if log is not None:
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        log.write(json.dumps(record) + "\n")


def progress_bar(total: int, initial: int):
    """A tqdm bar of `total` steps from `initial`, or None (with a note on stderr) when tqdm is missing."""
    try:
        from tqdm import tqdm
    except ImportError:
        print("note: install tqdm for a progress bar (pip install tqdm); printing log lines instead",
              file=sys.stderr)
        return None
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


class RunLog:
    """One run's reporting: the log file at `path` (None: no file, as on ranks other than 0 or without an
    out_dir) and, with `progress`, the bar or the printed lines."""

    def __init__(self, path: Path | None, *, append: bool, progress: bool, total: int, initial: int):
        self.file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = LogFile(path, append=append)
        self.progress = progress
        self.bar = progress_bar(total, initial) if progress else None

    def record(self, record: dict) -> None:
        write_record(self.file, record)

    def step(self, rec: dict, tokens_per_s: float, ema: float, logged: bool) -> None:
        """A training step done: its record when `logged` (every log_interval-th step), the bar moved on."""
        if logged:
            self.record({"event": "train", **rec, "tokens_per_s": tokens_per_s})
            if self.bar is None and self.progress:
                print(f"step {rec['step']}: loss {rec['loss']:.4f}, lr {rec['lr']:.3e}, "
                      f"{ema:,.0f} tok/s", file=sys.stderr)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", tok_s=f"{ema:,.0f}",
                                 refresh=False)

    def evaluated(self, rec: dict, ckpt_path) -> None:
        """An evaluation's record, and its line (naming the checkpoint when it was saved)."""
        self.record(rec)
        if self.progress:
            line = (f"step {rec['step']}: train loss {rec['train_loss']:.4f}, val loss {rec['val_loss']:.4f}"
                    + (f" (saved {ckpt_path})" if rec["saved"] else ""))
            self.bar.write(line, file=sys.stderr) if self.bar is not None else print(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
