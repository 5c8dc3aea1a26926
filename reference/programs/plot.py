"""`python -m reference plot out/log.jsonl [more.jsonl ...] -o curve.png`: loss curves to PNG.

Reads the JSON-lines logs written by `reference.programs.train` (records with "event": "train", "eval" and
"diverged") and draws, per log, the training loss of every logged step (a solid line), the evaluated
train loss (circles, the same colour) and the val loss (squares, another colour), both as markers
alone (evaluations are sparse: a line between them would read as measured), and marks a run that
diverged (a red dotted line and cross at the step, named in the legend). matplotlib is imported only here, lazily, with the Agg backend (no display needed); when it
is missing the command says how to install it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .atomic import os_error_line

__all__ = ["read_log", "plot_curves", "add_arguments", "run"]


def read_log(path) -> dict[str, list[dict]]:
    """{"start": [...], "train": [...], "eval": [...], "diverged": [...]} records of a log; blank lines
    skipped, bad lines refused by number."""
    out: dict[str, list[dict]] = {"start": [], "train": [], "eval": [], "diverged": []}
    path = Path(path)
    if path.is_dir():                                          # a run directory, as `train --resume DIR`
        if not (path / "log.jsonl").is_file():
            raise ValueError(f"{path} is a directory without a log.jsonl; expected a log.jsonl written by `train`")
        path = path / "log.jsonl"
    if not path.exists():
        raise ValueError(f"no log at {path}; expected a log.jsonl written by `train`")
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not a JSON line: {e}") from None
                if isinstance(rec, dict) and rec.get("event") in out:
                    out[rec["event"]].append(rec)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (is it a log.jsonl from `train`?)") from None
    if not out["train"] and not out["eval"]:
        raise ValueError(f"{path}: no training or evaluation records (is it a log.jsonl from `train`?)")
    return out


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib, which is not installed; "
                          "install it with: pip install matplotlib  (or pip install -e '.[train]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def diverged_at(log: dict) -> int | None:
    """The step at which a run diverged: its "diverged" record, or its first non-finite (null) train loss."""
    steps = [r["step"] for r in log.get("diverged", []) if isinstance(r.get("step"), int)]
    steps += [r["step"] for r in log["train"] if r.get("loss") is None and isinstance(r.get("step"), int)]
    return min(steps) if steps else None


DEFAULT_NAME = "loss_curve.png"

# What each objective's logged loss is (reference/programs/training/settings.py's --objective): the language
# model's (and SFT's) mean cross-entropy over target tokens; DPO's mean over pairs of -log sigmoid(margin).
LOSS_NAMES = {"lm": "cross-entropy (nats/token)", "dpo": "DPO: -log sigmoid(margin), mean over pairs"}


def loss_label(runs: list[tuple[str, dict]]) -> str:
    """The y axis' name for the runs' objectives, read from each log's "start" records (none: "lm")."""
    objectives = []
    for _, log in runs:
        for rec in log.get("start", []) or [{}]:
            config = rec.get("train_config")
            objective = config.get("objective", "lm") if isinstance(config, dict) else "lm"
            if objective not in objectives:
                objectives.append(objective)
    if objectives == ["dpo"]:
        return "DPO loss: -log sigmoid(margin), mean over pairs"
    if len(objectives) > 1:                                   # LOSS_NAMES' order, then any other objective
        ordered = [o for o in LOSS_NAMES if o in objectives] + [o for o in objectives if o not in LOSS_NAMES]
        return "loss: " + "; ".join(LOSS_NAMES.get(o, str(o)) for o in ordered)
    return "cross-entropy loss (nats/token)"


def png_path(path) -> Path:
    """The file actually written: `path`, with ".png" added when it has no suffix (as matplotlib does);
    an existing directory gets DEFAULT_NAME inside it (as `cp FILE DIR` writes into DIR)."""
    path = Path(path)
    if path.is_dir():
        return path / DEFAULT_NAME
    return path if path.suffix else path.with_name(path.name + ".png")


def plot_curves(runs: list[tuple[str, dict]], out_path, *, title: str | None = None, diff: bool = False) -> Path:
    """Draw [(label, read_log(...)), ...] on one chart and save it as PNG; returns the path.

    With `diff` and exactly two runs, a lower panel shows |loss_1 - loss_2| at every step both logged
    (log scale): how far apart two runs of the same recipe are, e.g. the reference and its twin.
    """
    plt = _pyplot()
    two = diff and len(runs) == 2
    if two:
        fig, (ax, ax_d) = plt.subplots(2, 1, figsize=(8, 7), dpi=120, sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1.3]})
    else:
        fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, log) in enumerate(runs):
        c_train, c_val = colors[(2 * i) % len(colors)], colors[(2 * i + 1) % len(colors)]   # train != val colour
        hollow = dict(mfc="none", mew=1.4) if i % 2 else {}          # overlapping curves stay visible
        tr = [r for r in log["train"] if r.get("loss") is not None]
        if tr:
            ax.plot([r["step"] for r in tr], [r["loss"] for r in tr], color=c_train, alpha=0.7, lw=1.1,
                    ls="-" if i % 2 == 0 else ":", label=f"{label}: train loss (per step)")
        ev = [r for r in log["eval"] if r.get("val_loss") is not None]
        if ev:
            steps = [r["step"] for r in ev]
            # markers only: evaluations are sparse, and a line between two of them would read as a measured curve
            ax.plot(steps, [r["train_loss"] for r in ev], color=c_train, ls="none", marker="o", ms=4 + 3 * (i % 2),
                    label=f"{label}: train loss (eval)", **hollow)
            ax.plot(steps, [r["val_loss"] for r in ev], color=c_val, ls="none",
                    marker="s", ms=5 + 4 * (i % 2), label=f"{label}: val loss (final {ev[-1]['val_loss']:.4f})",
                    **hollow)
        step = diverged_at(log)
        if step is not None:
            ax.axvline(step, color="red", ls=":", lw=1.5)
            last = tr[-1]["loss"] if tr else (ev[-1]["val_loss"] if ev else None)
            if last is not None:
                ax.plot([step], [last], color="red", marker="X", ms=10, ls="none",
                        label=f"{label}: diverged at step {step}")
    ax.set_ylabel(loss_label(runs))
    ax.set_title(title or "loss curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if two:
        (la, a), (lb, b) = runs
        for kind, key, style in (("train", "loss", dict(ls="none", marker=".", ms=2, alpha=0.6)),
                                 ("eval", "val_loss", dict(marker="s", ls="none", color=colors[1]))):
            xa = {r["step"]: r[key] for r in a[kind] if r.get(key) is not None}
            xb = {r["step"]: r[key] for r in b[kind] if r.get(key) is not None}
            steps = sorted(set(xa) & set(xb))
            if steps:
                d = [abs(xa[s] - xb[s]) for s in steps]
                nz = [(s, v) for s, v in zip(steps, d) if v > 0]        # exact agreement has no place on a log scale
                what = "per-step train loss" if kind == "train" else "val loss (eval)"
                ax_d.plot([s for s, _ in nz], [v for _, v in nz], **style,
                          label=f"{what}: max {max(d):.1e}, identical at {len(d) - len(nz)} of {len(d)} steps")
        ax_d.set_yscale("log")
        ax_d.set_ylabel("|loss difference|")
        ax_d.set_title(f"{la} vs {lb}", fontsize=9)
        ax_d.grid(alpha=0.3)
        ax_d.legend(fontsize=8)
        ax_d.set_xlabel("step")
    else:
        ax.set_xlabel("step")
    fig.tight_layout()
    out_path = png_path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("logs", nargs="+", help="log.jsonl file(s) written by `train`, or their run directories")
    parser.add_argument("-o", "--out", default=DEFAULT_NAME,
                        help=f"PNG to write; .png is added to a name without a suffix; an existing directory "
                             f"gets {DEFAULT_NAME} inside it")
    parser.add_argument("--labels", nargs="+", help="one legend label per log (default: the run directory names)")
    parser.add_argument("--title", default=None, help="chart title (default: 'loss curves')")
    parser.add_argument("--diff", action="store_true", help="with two logs: add a panel of their loss differences")


def run(args: argparse.Namespace) -> int:
    labels = args.labels or [Path(p).resolve().name if Path(p).is_dir() else str(Path(p).parent.name or Path(p).name)
                             for p in args.logs]
    if len(labels) != len(args.logs):
        print(f"error: {len(labels)} labels for {len(args.logs)} logs", file=sys.stderr)
        return 2
    try:
        runs = [(label, read_log(p)) for label, p in zip(labels, args.logs)]
        path = plot_curves(runs, args.out, title=args.title, diff=args.diff)
    except OSError as e:
        print(f"error: {os_error_line(e, 'choose a writable -o')}", file=sys.stderr)
        return 2
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
