"""docs/fine-tuning.md's commands run as written, one after another, and print no warning.

As tests/test_readme_commands.py does for the README (both through tests/doc_commands.py): the bash block after `<!-- fine-tuning-commands -->`
is parsed and run in a fresh directory (with docs/examples copied in), each command made tiny: the
local corpus instead of the download, a one-layer model, a batch of 2, the schedule shrunk in
proportion to 2 steps, a checkpoint at every evaluation, 5 sampled tokens. The page's own flags are
kept, so a page command that fails or warns fails this test; the planted variant at the end (the SFT
run without --lora_rank) shows that it does."""

from __future__ import annotations

import json
import shlex
import shutil

from doc_commands import CORPUS, REPO, commands_after, make_tiny, run_tiny

MARKER = "<!-- fine-tuning-commands -->"
TINY_MODEL = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16"]        # the preset's context, 64, is kept
TINY_RUN = ["--batch_size", "2", "--eval_iters", "2", "--eval_interval", "1", "--always_save_checkpoint",
            "--no-progress"]


def page_commands() -> list[list[str]]:
    return commands_after(REPO / "docs" / "fine-tuning.md", MARKER)


def tiny(argv: list[str]) -> list[str]:
    """The page's argv made runnable here and tiny: this interpreter, prepare.py from this checkout."""
    corpus = [] if "--sft" in argv or "--dpo" in argv else ["--from", "corpus.txt", "--out", "data/shakespeare_byte"]
    return make_tiny(argv, prepare=corpus, model=TINY_MODEL, run=TINY_RUN)


def run(argv: list[str], cwd) -> list[str]:
    """Run the page's command argv (made tiny); assert it succeeds; return the lines that warn."""
    return run_tiny(argv, cwd, tiny)


def test_fine_tuning_page_commands_run_without_warnings(tmp_path):
    commands = page_commands()
    steps = [c[1] if c[1] != "-m" else c[3] for c in commands]
    assert steps == ["data/prepare.py", "train", "export", "sample", "data/prepare.py", "train", "sample", "export",
                     "data/prepare.py", "train", "sample"], steps
    (tmp_path / "corpus.txt").write_text(CORPUS)
    shutil.copytree(REPO / "docs" / "examples", tmp_path / "docs" / "examples")
    for argv in commands:
        warned = run(argv, tmp_path)
        assert not warned, f"{shlex.join(argv)} warned:\n" + "\n".join(warned)
    for run_dir, base in (("out-sft", "out-base"), ("out-dpo", "out-sft-merged")):
        config = json.loads((tmp_path / run_dir / "adapter" / "adapter_config.json").read_text())
        assert (config["r"], config["base_model_name_or_path"]) == (8, base)
    assert (tmp_path / "out-sft-merged" / "config.json").is_file()

    # Planted: the SFT run without --lora_rank: its other LoRA flags are refused, and this test says so.
    sft = next(c for c in commands if "--lora_rank" in c and "dpo" not in " ".join(c))
    i = sft.index("--lora_rank")
    try:
        run(sft[:i] + sft[i + 2:] + ["--out_dir", "out-planted"], tmp_path)
    except AssertionError as e:
        assert "--lora_alpha and --lora_targets are settings of LoRA adapters, but this run has no --lora_rank" in str(e)
    else:
        raise AssertionError("the SFT command without --lora_rank ran")
