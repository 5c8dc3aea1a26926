"""The README's example commands run as written, one after another, and print no warning.

The commands are parsed from the README (the bash block after `<!-- readme-commands -->`) and run in a
fresh directory with this checkout importable. Each gets a few flags appended that make it tiny (a
small model, a local corpus instead of the download, a few sampled tokens) and its schedule is
shrunk in proportion: max_iters becomes 2 and lr_decay_iters and warmup_iters keep their ratio to it,
so a README schedule that decays past the run, or warms up longer than it, still warns here. The
README's own flags are kept, so a README command that fails, or trips one of the project's warnings
(min_lr above learning_rate, a schedule cut short), fails this test; the planted variants at the end
show that it does."""

from __future__ import annotations

import shlex

from doc_commands import CORPUS, REPO, commands_after, make_tiny, run_tiny

MARKER = "<!-- readme-commands -->"
TINY_MODEL = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "8"]
TINY_RUN = ["--batch_size", "2", "--eval_iters", "2", "--eval_interval", "1", "--no-progress"]


def readme_commands() -> list[list[str]]:
    return commands_after(REPO / "README.md", MARKER)


def tiny(argv: list[str]) -> list[str]:
    """argv made runnable here: this interpreter, prepare.py from this checkout, the tiny flags."""
    return make_tiny(argv, prepare=["--from", "corpus.txt", "--out", "data/shakespeare_char"],
                     model=TINY_MODEL, run=TINY_RUN)


def run_quietly(argv: list[str], cwd) -> list[str]:
    """Run the README command argv (made tiny); assert it succeeds; return the lines that warn."""
    return run_tiny(argv, cwd, tiny)


def without(argv: list[str], name: str) -> list[str]:
    i = argv.index(name)
    return argv[:i] + argv[i + 2:]


def test_readme_commands_run_without_warnings(tmp_path):
    commands = readme_commands()
    assert [c[1] if c[1] != "-m" else c[3] for c in commands] == \
        ["data/prepare.py", "train", "sample", "plot", "export", "train"], commands
    (tmp_path / "corpus.txt").write_text(CORPUS)
    for argv in commands:
        warned = run_quietly(argv, tmp_path)
        assert not warned, f"{shlex.join(argv)} warned:\n" + "\n".join(warned)
    assert (tmp_path / "loss.png").is_file() and (tmp_path / "out-hf" / "config.json").is_file()
    assert (tmp_path / "out-finetune" / "ckpt.safetensors").is_file()

    # Planted: the fine-tune as it would be without --min_lr (the default 1e-4 is above 3e-5) or without
    # --lr_decay_iters (the default 2000 is ten times the run): each is caught.
    finetune = commands[-1]
    for name, words in (("--min_lr", "min_lr=0.0001 is above learning_rate=3e-05"),
                        ("--lr_decay_iters", "the learning-rate schedule decays over lr_decay_iters=20 steps")):
        warned = run_quietly(without(finetune, name) + ["--out_dir", f"out-planted{name}"], tmp_path)
        assert any(words in line for line in warned), (name, warned)
