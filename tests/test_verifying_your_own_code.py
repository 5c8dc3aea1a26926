"""docs/verifying-your-own-code.md runs: its python blocks, in order, as one script, each printing what
the page pastes after it; its glue (every layer, a block, the model and the loss of
tests/outside_style_gpt.py) stays within 30 lines, the count the page states."""

import contextlib
import io
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "verifying-your-own-code.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
ROW = re.compile(r"^  (ok|FAIL) +(.+?) +err +(\S+)")


def fenced() -> list[tuple[str, str]]:
    return FENCE.findall(PAGE.read_text(encoding="utf-8"))


def same_output(printed: str, pasted: str) -> None:
    """Line by line; in a report row only the mark, the name and (for a failure) the error: round-off digits
    depend on the machine's BLAS."""
    now, then = printed.rstrip("\n").splitlines(), pasted.rstrip("\n").splitlines()
    assert len(now) == len(then), f"regenerate the pasted output:\n{printed}"
    for a, b in zip(now, then):
        ra, rb = ROW.match(a), ROW.match(b)
        if ra and rb:
            assert ra.groups()[:2] == rb.groups()[:2], f"regenerate the pasted output:\n{printed}"
            if ra.group(1) == "FAIL":
                assert ra.group(3) == rb.group(3), f"{ra.group(2)}: the page says err {rb.group(3)}, the harness {ra.group(3)}"
        else:
            assert a == b, f"regenerate the pasted output:\n{printed}"


def test_the_page_runs_as_one_script():
    namespace = {"__name__": "docs_verifying_your_own_code"}
    state = np.random.get_state()
    blocks = fenced()
    for i, (lang, source) in enumerate(blocks):
        if lang != "python":
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(source, f"docs/verifying-your-own-code.md (block {i})", "exec"), namespace)
        pasted = blocks[i + 1][1] if i + 1 < len(blocks) and blocks[i + 1][0] == "text" else None
        assert (pasted is None) == (not out.getvalue()), f"block {i}: what it prints and what the page pastes differ"
        if pasted is not None:
            same_output(out.getvalue(), pasted)
    assert np.array_equal(np.random.get_state()[1], state[1])             # the replay leaves np.random as it was
    assert all(r.passed for r in namespace["reports"].values())


def code_lines(source: str) -> list[str]:
    """Lines that are not blank, comments or imports."""
    return [ln for ln in source.splitlines()
            if ln.strip() and not ln.lstrip().startswith(("#", "import ", "from "))]


def test_the_glue_is_at_most_30_lines():
    """The glue block checks every layer, a block, the model and the loss; the page states its count and
    the reference's."""
    python = [body for lang, body in fenced() if lang == "python"]
    glue = code_lines(next(b for b in python if "def verify(" in b))
    reference = code_lines(next(b for b in python if "class GPT(nn.Module)" in b))
    assert len(glue) <= 30, len(glue)
    text = PAGE.read_text(encoding="utf-8")
    assert f"in {len(glue)} lines of glue" in text and f"{len(glue)} lines that are not blank" in text, len(glue)
    assert f"The\nreference above is {len(reference)} more" in text, len(reference)
    for layer in ("ours.Linear(", "ours.LayerNorm(", "ours.GELU(", "ours.Embedding(", "ours.Dropout(",
                  "ours.Attention(C, H, 0.0", "ours.Attention(C, H, p", "ours.FeedForward(", "ours.Block(",
                  "ours.GPT(", "ours.cross_entropy"):
        assert any(layer in ln for ln in glue), f"the glue no longer checks {layer}"
