"""docs/verifying-your-own-code.md runs: its python blocks, in order, as one script; its glue stays
within 30 lines; and the report it pastes is what the harness prints for its planted bug."""

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "verifying-your-own-code.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(PAGE.read_text(encoding="utf-8")) if kind == lang]


def test_the_page_runs_as_one_script(capsys):
    namespace = {"__name__": "docs_verifying_your_own_code"}
    state = np.random.get_state()
    for i, source in enumerate(blocks("python")):
        exec(compile(source, f"docs/verifying-your-own-code.md (python block {i})", "exec"), namespace)
    assert np.array_equal(np.random.get_state()[1], state[1])             # the replay leaves np.random as it was
    printed = capsys.readouterr().out
    pasted = blocks("text")[0]
    line = re.compile(r"^  (ok|FAIL) +(.+?) +err +(\S+)", re.M)
    now, then = line.findall(printed), line.findall(pasted)
    assert [(m, n) for m, n, _ in now] == [(m, n) for m, n, _ in then], "regenerate the pasted report"
    for (mark, name, err_now), (_, _, err_then) in zip(now, then):
        if mark == "FAIL":
            assert err_now == err_then, f"{name}: the page says err {err_then}, the harness prints {err_now}"
    assert "first failure in forward order: input grad" in printed


def test_the_glue_is_at_most_30_lines():
    """The check itself (the block under 'The glue, and the check'), blank lines and asserts excluded."""
    glue = [b for b in blocks("python") if "check(" in b and "NumpyRandomReplay" in b][0]
    lines = [ln for ln in glue.splitlines() if ln.strip() and not ln.lstrip().startswith(("assert", "print", "#"))]
    assert len(lines) <= 30, len(lines)
