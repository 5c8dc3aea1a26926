"""The plot command: reading logs (blank lines, foreign records, bad lines, empty logs), the chart it
draws (per-step and evaluated losses, the difference panel of two runs), the PNG it writes, the CLI's
labels and errors, and the message when matplotlib is missing. Hand-written logs: fast and exact."""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import pytest

from reference.programs import plot

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_log(path: Path, train: dict[int, float], evals: dict[int, tuple[float, float]], extra=()) -> Path:
    """A log.jsonl as `train` writes it: start, train records {step: loss}, eval records {step: (train, val)}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"event": "start", "step": 0})]
    for step in sorted(set(train) | set(evals)):
        if step in evals:
            lines.append(json.dumps({"event": "eval", "step": step, "train_loss": evals[step][0],
                                     "val_loss": evals[step][1]}))
        if step in train:
            lines.append(json.dumps({"event": "train", "step": step, "loss": train[step]}))
    lines += list(extra)
    lines.append(json.dumps({"event": "end", "step": max(train, default=0)}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


A_TRAIN = {0: 3.0, 1: 2.5, 2: 2.0, 3: 1.75, 4: 1.5}
B_TRAIN = {0: 3.0, 1: 2.0, 2: 2.0, 3: 1.5, 4: 1.5}          # equal to A at steps 0, 2, 4
A_EVAL = {0: (3.0, 3.25), 4: (1.5, 2.0)}
B_EVAL = {0: (3.0, 3.25), 2: (2.0, 2.5), 4: (1.5, 2.25)}    # common with A at 0 (equal) and 4


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", "not a PNG file"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def figures(monkeypatch):
    """Keep the figures plot_curves draws (instead of closing them) to look at what is on them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kept, real_close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig: kept.append(fig))
    yield kept
    for fig in kept:
        real_close(fig)


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


# ------------------------------------------------------------------------------------ read_log


def test_read_log_keeps_train_and_eval_records_only(tmp_path):
    path = write_log(tmp_path / "log.jsonl", {0: 3.0, 1: 2.5}, {0: (3.0, 3.1)},
                     extra=["", "   ", "[1, 2]", '"text"', json.dumps({"event": "diverged", "step": 2})])
    log = plot.read_log(path)
    assert [r["step"] for r in log["train"]] == [0, 1] and [r["loss"] for r in log["train"]] == [3.0, 2.5]
    assert log["eval"] == [{"event": "eval", "step": 0, "train_loss": 3.0, "val_loss": 3.1}]


def test_read_log_refuses_bad_lines_and_logs_without_records(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"event": "train", "step": 0, "loss": 1.0}) + "\n\n{oops\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:3: not a JSON line: "):     # numbered from 1, blanks count
        plot.read_log(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n" + json.dumps({"event": "start", "step": 0}) + "\n")
    with pytest.raises(ValueError, match=r"empty.jsonl: no training or evaluation records \(is it a log.jsonl "
                                         r"from `train`\?\)$"):
        plot.read_log(empty)


# ------------------------------------------------------------------------------------ plot_curves


def test_one_chart_per_step_and_evaluated_losses(tmp_path, figures):
    runs = [("a", plot.read_log(write_log(tmp_path / "a.jsonl", A_TRAIN, A_EVAL))),
            ("b", plot.read_log(write_log(tmp_path / "b.jsonl", B_TRAIN, B_EVAL)))]
    out = plot.plot_curves(runs, tmp_path / "deep" / "dir" / "curve.png", title="two runs")
    assert out == tmp_path / "deep" / "dir" / "curve.png"           # parent folders created
    assert png_size(out) == (960, 600)                               # 8 x 5 inches at 120 dpi
    (fig,) = figures
    (ax,) = fig.axes
    assert ax.get_title() == "two runs" and ax.get_xlabel() == "step"
    assert legend_texts(ax) == ["a: train loss (per step)", "a: train loss (eval)", "a: val loss (final 2.0000)",
                                "b: train loss (per step)", "b: train loss (eval)", "b: val loss (final 2.2500)"]
    lines = ax.get_lines()
    assert list(lines[0].get_xdata()) == list(A_TRAIN) and list(lines[0].get_ydata()) == list(A_TRAIN.values())
    assert list(lines[5].get_xdata()) == list(B_EVAL) and list(lines[5].get_ydata()) == [3.25, 2.5, 2.25]


def test_a_log_with_only_evaluations_or_only_steps(tmp_path, figures):
    only_eval = write_log(tmp_path / "e.jsonl", {}, {0: (3.0, 3.5), 5: (2.0, 2.5)})
    only_train = write_log(tmp_path / "t.jsonl", {0: 3.0, 1: 2.0}, {},
                           extra=[json.dumps({"event": "train", "step": 2, "loss": None})])    # a non-finite loss
    out = plot.plot_curves([("e", plot.read_log(only_eval)), ("t", plot.read_log(only_train))], tmp_path / "c.png")
    assert png_size(out) == (960, 600)
    (ax,) = figures[0].axes
    assert ax.get_title() == "loss curves"                           # the default title
    assert legend_texts(ax) == ["e: train loss (eval)", "e: val loss (final 2.5000)", "t: train loss (per step)",
                                "t: diverged at step 2"]                  # a null (non-finite) loss marks divergence
    assert list(ax.get_lines()[2].get_xdata()) == [0, 1]             # the null loss is not drawn


def test_difference_panel_of_two_runs(tmp_path, figures):
    runs = [("numpy", plot.read_log(write_log(tmp_path / "a.jsonl", A_TRAIN, A_EVAL))),
            ("torch", plot.read_log(write_log(tmp_path / "b.jsonl", B_TRAIN, B_EVAL)))]
    out = plot.plot_curves(runs, tmp_path / "diff.png", diff=True)
    assert png_size(out) == (960, 840)                               # 8 x 7 inches: the extra panel
    (fig,) = figures
    ax, ax_d = fig.axes
    assert ax.get_xlabel() == "" and ax_d.get_xlabel() == "step"     # shared x axis, labelled once
    assert ax_d.get_yscale() == "log" and ax_d.get_title() == "numpy vs torch"
    assert legend_texts(ax_d) == ["per-step train loss: max 5.0e-01, identical at 3 of 5 steps",
                                  "val loss (eval): max 2.5e-01, identical at 1 of 2 steps"]
    per_step, evals = ax_d.get_lines()
    # only the steps where the runs differ: exact agreement (0) has no place on a log scale
    assert list(per_step.get_xdata()) == [1, 3] and list(per_step.get_ydata()) == [0.5, 0.25]
    assert list(evals.get_xdata()) == [4] and list(evals.get_ydata()) == [0.25]


def test_difference_of_identical_runs_says_so(tmp_path, figures):
    log = plot.read_log(write_log(tmp_path / "a.jsonl", A_TRAIN, A_EVAL))
    plot.plot_curves([("x", log), ("y", log)], tmp_path / "same.png", diff=True)
    ax_d = figures[0].axes[1]
    assert legend_texts(ax_d) == ["per-step train loss: max 0.0e+00, identical at 5 of 5 steps",
                                  "val loss (eval): max 0.0e+00, identical at 2 of 2 steps"]
    assert all(len(line.get_xdata()) == 0 for line in ax_d.get_lines())


def test_diff_needs_exactly_two_runs(tmp_path, figures):
    log = plot.read_log(write_log(tmp_path / "a.jsonl", A_TRAIN, A_EVAL))
    out = plot.plot_curves([("x", log), ("y", log), ("z", log)], tmp_path / "three.png", diff=True)
    assert png_size(out) == (960, 600) and len(figures[0].axes) == 1
    out = plot.plot_curves([("x", log)], tmp_path / "one.png", diff=True)
    assert png_size(out) == (960, 600) and len(figures[1].axes) == 1


def test_missing_matplotlib_is_named_with_the_install_command(tmp_path, monkeypatch):
    log = plot.read_log(write_log(tmp_path / "a.jsonl", A_TRAIN, A_EVAL))
    monkeypatch.setitem(sys.modules, "matplotlib", None)            # `import matplotlib` raises ImportError
    with pytest.raises(ImportError, match=r"^plotting needs matplotlib, which is not installed; install it with: "
                                          r"pip install matplotlib  \(or pip install -e '\.\[train\]'\)$"):
        plot.plot_curves([("a", log)], tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


# ------------------------------------------------------------------------------------ CLI


def parse(*argv) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    plot.add_arguments(p)
    return p.parse_args([str(a) for a in argv])


def test_cli_defaults_and_labels(tmp_path, capsys, figures, monkeypatch):
    a = write_log(tmp_path / "run-a" / "log.jsonl", A_TRAIN, A_EVAL)
    monkeypatch.chdir(tmp_path)
    write_log(tmp_path / "log.jsonl", B_TRAIN, B_EVAL)
    args = parse(a, "log.jsonl")
    assert (args.out, args.labels, args.title, args.diff) == ("loss_curve.png", None, None, False)
    assert plot.run(args) == 0
    assert capsys.readouterr().out == "wrote loss_curve.png\n"
    assert png_size(tmp_path / "loss_curve.png") == (960, 600)
    # default labels: the run's folder, or the file name when it has none
    assert [t for t in legend_texts(figures[0].axes[0]) if "per step" in t] == \
        ["run-a: train loss (per step)", "log.jsonl: train loss (per step)"]

    out = tmp_path / "img" / "d.png"
    assert plot.run(parse(a, "log.jsonl", "-o", out, "--labels", "ref", "twin", "--title", "T", "--diff")) == 0
    assert capsys.readouterr().out == f"wrote {out}\n" and png_size(out) == (960, 840)
    fig = figures[1]
    assert fig.axes[0].get_title() == "T" and fig.axes[1].get_title() == "ref vs twin"


@pytest.mark.parametrize("argv, message", [
    (["{a}", "{a}", "--labels", "one"], r"^error: 1 labels for 2 logs\n$"),
    (["{a}", "--labels", "one", "two"], r"^error: 2 labels for 1 logs\n$"),
    (["{missing}"], r"^error: no log at .*nope.jsonl; expected a log.jsonl written by `train`\n$"),
    (["{empty}"], r"^error: .*empty.jsonl: no training or evaluation records"),
    # before: "'utf-8' codec can't decode byte ..." without the file, and "[Errno 21] Is a directory"
    (["{binary}"], r"^error: .*ckpt.safetensors: not a text file \(is it a log.jsonl from `train`\?\)\n$"),
    (["{bare_dir}"], r"^error: .*bare is a directory without a log.jsonl; expected a log.jsonl written by `train`\n$"),
])
def test_cli_errors_are_clear_and_write_nothing(tmp_path, capsys, argv, message):
    names = {"a": write_log(tmp_path / "a.jsonl", A_TRAIN, A_EVAL), "missing": tmp_path / "nope.jsonl",
             "empty": tmp_path / "empty.jsonl", "binary": tmp_path / "ckpt.safetensors", "bare_dir": tmp_path / "bare"}
    names["empty"].write_text("")
    names["binary"].write_bytes(b"\x10\x00\xb3\xff" * 8)
    names["bare_dir"].mkdir()
    out = tmp_path / "c.png"
    assert plot.run(parse(*[x.format(**names) for x in argv], "-o", out)) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and __import__("re").search(message, captured.err), captured.err
    assert not out.exists()


def test_cli_without_matplotlib(tmp_path, capsys, monkeypatch):
    a = write_log(tmp_path / "a.jsonl", A_TRAIN, A_EVAL)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert plot.run(parse(a, "-o", tmp_path / "c.png")) == 2
    assert capsys.readouterr().err.startswith("error: plotting needs matplotlib, which is not installed; "
                                              "install it with: pip install matplotlib")


def test_difference_panel_leaves_out_what_the_runs_do_not_share(tmp_path, figures):
    a = plot.read_log(write_log(tmp_path / "a.jsonl", A_TRAIN, A_EVAL))
    b = plot.read_log(write_log(tmp_path / "b.jsonl", {k: v + 0.5 for k, v in A_TRAIN.items()}, {}))   # no evals
    plot.plot_curves([("a", a), ("b", b)], tmp_path / "d.png", diff=True)
    ax_d = figures[0].axes[1]
    assert legend_texts(ax_d) == ["per-step train loss: max 5.0e-01, identical at 0 of 5 steps"]
    assert len(ax_d.get_lines()) == 1


# ------------------------------------------------------------------------------------ readable at a glance


def test_per_step_line_is_visible_and_train_and_val_differ_in_colour(tmp_path, figures):
    runs = [("a", plot.read_log(write_log(tmp_path / "a.jsonl", A_TRAIN, A_EVAL))),
            ("b", plot.read_log(write_log(tmp_path / "b.jsonl", B_TRAIN, B_EVAL)))]
    plot.plot_curves(runs, tmp_path / "c.png")
    (ax,) = figures[0].axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    colours = set()
    for run in ("a", "b"):
        per_step = lines[f"{run}: train loss (per step)"]
        assert per_step.get_alpha() >= 0.6 and per_step.get_linewidth() >= 1.0       # not a faint hairline
        train = lines[f"{run}: train loss (eval)"].get_color()
        (val,) = [line.get_color() for label, line in lines.items() if label.startswith(f"{run}: val loss")]
        assert per_step.get_color() == train != val
        colours |= {train, val}
    assert len(colours) == 4                                                           # no two curves share one


def test_a_diverged_run_is_marked_at_its_step(tmp_path, figures):
    log = write_log(tmp_path / "d.jsonl", {0: 3.0, 1: 2.5, 2: 2.4}, {0: (3.0, 3.1)},
                    extra=[json.dumps({"event": "diverged", "step": 3, "message": "non-finite loss"})])
    plot.plot_curves([("d", plot.read_log(log))], tmp_path / "c.png")
    (ax,) = figures[0].axes
    assert "d: diverged at step 3" in legend_texts(ax)
    (marker,) = [line for line in ax.get_lines() if line.get_label() == "d: diverged at step 3"]
    assert list(marker.get_xdata()) == [3] and marker.get_color() == "red"
    vertical = [line for line in ax.get_lines() if list(line.get_xdata()) == [3, 3]]
    assert vertical                                                                    # the axvline at step 3
    assert plot.diverged_at(plot.read_log(write_log(tmp_path / "ok.jsonl", A_TRAIN, A_EVAL))) is None


def test_out_without_a_suffix_reports_the_file_it_writes(tmp_path, capsys, figures, monkeypatch):
    a = write_log(tmp_path / "log.jsonl", A_TRAIN, A_EVAL)
    monkeypatch.chdir(tmp_path)
    assert plot.run(parse(a, "-o", "noext")) == 0
    assert capsys.readouterr().out == "wrote noext.png\n"
    assert png_size(tmp_path / "noext.png") == (960, 600) and not (tmp_path / "noext").exists()


def test_a_run_directory_plots_its_log(tmp_path, capsys, figures):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_log(run_dir / "log.jsonl", A_TRAIN, A_EVAL)
    out = tmp_path / "c.png"
    assert plot.run(parse(str(run_dir), "-o", out)) == 0 and out.exists()
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert legend_texts(figures[0].axes[0])[0] == "run: train loss (per step)"     # labelled by the run's name


def dpo_log(path: Path, objective: str) -> Path:
    """A log whose start record names its objective in train_config, as `train` writes it."""
    write_log(path, A_TRAIN, A_EVAL)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[0] = json.dumps({"event": "start", "step": 0, "train_config": {"objective": objective, "beta": 0.1}})
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_the_axis_names_the_loss_each_objective_logs(tmp_path, figures):
    """A DPO run logs -log sigmoid(margin) averaged over pairs, not a cross-entropy per token: the axis says
    which loss it shows; language-model and SFT runs (objective lm) keep the cross-entropy's name."""
    lm, dpo = dpo_log(tmp_path / "lm.jsonl", "lm"), dpo_log(tmp_path / "dpo.jsonl", "dpo")
    for runs in ([lm], [dpo], [lm, dpo]):
        plot.plot_curves([(p.stem, plot.read_log(p)) for p in runs], tmp_path / "c.png")
    labels = [fig.axes[0].get_ylabel() for fig in figures]
    assert labels[0] == "cross-entropy loss (nats/token)"
    assert labels[1] == "DPO loss: -log sigmoid(margin), mean over pairs"
    assert labels[2] == "loss: cross-entropy (nats/token); DPO: -log sigmoid(margin), mean over pairs"
