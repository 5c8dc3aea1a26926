"""The docs are part of the proof: these tests keep docs/ and the code from drifting apart.

(a) every ```python block of every docs/*.md page runs, each in a fresh namespace from the repo root;
(b) every component page follows docs/_FORMAT.md, and its "## Where" section names a code symbol
    that imports and a test function that exists (found by parsing the test file with ast);
(c) every registered oracle case maps to a page (CASE_PAGES below), and docs/verify.md lists the same map;
(d) every class under reference/ that defines `backward` has a docstring naming its docs/<page>.md;
(e) every relative link in docs/*.md and README.md resolves, #anchors included (GitHub's slugs);
(f) every snippet a page presents as the code (the backticked snippets after "In code") appears,
    whitespace-normalised, in the source of the textbook path's symbol the page names: its
    '- Code:' symbol's class or function, or a `reference/...py::Name` named in the same passage.

Checks are parametrized per page, per block, per case and per class, so a missing page fails on its
own and names itself.
"""

from __future__ import annotations

import ast
import importlib
import linecache
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Pages with a derivation (the format of docs/_FORMAT.md) and pages around them.
COMPONENT_PAGES = [
    "linear.md", "embedding.md", "layernorm.md", "rmsnorm.md", "gelu.md", "softmax.md", "attention.md",
    "rope.md", "alibi.md", "swiglu.md", "dropout.md", "mlp.md", "block.md", "model.md", "cross_entropy.md",
    "adam.md", "clipping.md", "lr_schedule.md", "sinusoidal.md", "sgd.md",
]
GUIDE_PAGES = ["index.md", "tolerance.md", "verify.md", "adding-a-layer.md", "performance.md", "checkpoints.md",
               "verifying-your-own-code.md", "huggingface.md", "sampling.md", "architecture.md", "checkpointing.md"]
# Pages whose python blocks build on each other: each block runs after the blocks before it, in one namespace.
CHAINED_PAGES = {"verifying-your-own-code.md"}
NOT_A_PAGE = {"_FORMAT.md"}                                    # for authors, not part of the docs

# Every registered case of oracle/bridge/cases.py and the page that derives it. A new case fails
# test_every_case_has_a_page until it is added here (and to the table in docs/verify.md).
CASE_PAGES = {
    "embedding": "embedding.md",
    "linear": "linear.md",
    "linear_nobias": "linear.md",
    "layernorm": "layernorm.md",
    "layernorm_nobias": "layernorm.md",
    "rmsnorm": "rmsnorm.md",
    "gelu": "gelu.md",
    "gelu_tanh": "gelu.md",
    "dropout": "dropout.md",
    "mlp": "mlp.md",
    "swiglu": "swiglu.md",
    "attention": "attention.md",
    "attention_gqa": "attention.md",
    "attention_mqa": "attention.md",
    "attention_rope": "rope.md",
    "attention_alibi": "alibi.md",
    "attention_dropout": "attention.md",
    "cross_entropy": "cross_entropy.md",
    "block": "block.md",
    "gpt": "model.md",
    "gpt_dropout": "model.md",
    "gpt_sinusoidal": "sinusoidal.md",
    "gpt_loss": "model.md",
}

FORMAT_SECTIONS = [
    "Forward", "Shapes", "What the forward caches, and why", "Backward, step by step",
    "Numerical stability", "Check it yourself", "Where",
]


# ---------------------------------------------------------------- reading Markdown

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


def existing_pages() -> list[str]:
    return sorted(p.name for p in DOCS.glob("*.md") if p.name not in NOT_A_PAGE)


def all_pages() -> list[str]:
    return sorted(set(existing_pages()) | set(COMPONENT_PAGES) | set(GUIDE_PAGES))


def component_pages() -> list[str]:
    """The listed ones, and any other page that has a '## Where' section."""
    extra = [p for p in existing_pages() if p not in COMPONENT_PAGES and p not in GUIDE_PAGES
             and "## Where" in prose(read(p))]
    return COMPONENT_PAGES + extra


def read(page: str) -> str:
    path = DOCS / page
    if not path.exists():
        pytest.fail(f"docs/{page} does not exist (yet): it is listed in tests/test_docs.py and linked from docs/index.md")
    return path.read_text(encoding="utf-8")


def split_fences(text: str):
    """Yield (kind, language, indent, lines): kind 'text' for prose, 'code' for a fenced block."""
    lines, i, buf = text.splitlines(), 0, []
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            buf.append(lines[i])
            i += 1
            continue
        if buf:
            yield "text", "", "", buf
            buf = []
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        body, i = [], i + 1
        while i < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        i += 1                                                  # the closing fence
        yield "code", lang, indent, body
    if buf:
        yield "text", "", "", buf


def prose(text: str) -> str:
    """The page without its fenced code blocks."""
    return "\n".join(line for kind, _, _, lines in split_fences(text) if kind == "text" for line in lines)


def python_blocks(text: str) -> list[str]:
    blocks = []
    for kind, lang, indent, lines in split_fences(text):
        if kind == "code" and lang in ("python", "py"):
            blocks.append("\n".join(line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines))
    return blocks


def headings(text: str) -> list[tuple[int, str]]:
    out = []
    for line in prose(text).splitlines():
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            out.append((len(m.group(1)), m.group(2)))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, h in headings(text):
        s = slug(h)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def links(text: str) -> list[str]:
    body = re.sub(r"`[^`\n]*`", "", prose(text))               # no links inside inline code
    return re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", body)


def section(text: str, title: str) -> str:
    """The prose of the '## title' section (up to the next '## ' heading)."""
    out, inside = [], False
    for line in prose(text).splitlines():
        if re.match(r"^##\s", line):
            inside = line[2:].strip() == title
            continue
        if inside:
            out.append(line)
    return "\n".join(out)


def where(page: str) -> dict[str, str]:
    found = {}
    for line in section(read(page), "Where").splitlines():
        m = re.match(r"^\s*[-*]\s+(Code|Test):\s+`([^`]+)`\s*$", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


# ---------------------------------------------------------------- resolving code and test names

def resolve_code(target: str):
    """`reference/layers.py::Linear.backward` -> the object; fails with a message naming what is missing."""
    path, _, qualname = target.partition("::")
    assert path.endswith(".py") and qualname, f"expected `path/to/file.py::Name[.attr]`, got `{target}`"
    assert (ROOT / path).exists(), f"{path} does not exist"
    obj = importlib.import_module(path[:-3].replace("/", "."))
    for part in qualname.split("."):
        assert hasattr(obj, part), f"{path} has no {qualname} ({getattr(obj, '__name__', obj)} has no attribute {part!r})"
        obj = getattr(obj, part)
    return obj


def functions_in(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def check_test_exists(target: str) -> None:
    path, _, name = target.partition("::")
    assert path.startswith("tests/") and path.endswith(".py") and name, f"expected `tests/file.py::test_name`, got `{target}`"
    assert (ROOT / path).exists(), f"{path} does not exist (yet), so {name} cannot be found"
    assert name in functions_in(path), f"{path} has no function {name} (renamed or removed?)"


# ---------------------------------------------------------------- (a) every python block runs

def _blocks():
    params = []
    for page in existing_pages():
        for i, src in enumerate(python_blocks((DOCS / page).read_text(encoding="utf-8"))):
            params.append(pytest.param(page, i, src, id=f"{page}#{i}"))
    return params


@pytest.mark.parametrize("page, index, source", _blocks())
def test_python_block_runs(page, index, source, monkeypatch):
    monkeypatch.chdir(ROOT)
    filename = f"docs/{page} (python block {index})"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)   # readable tracebacks
    code = compile(source, filename, "exec")
    namespace = {"__name__": f"docs_{page[:-3].replace('-', '_')}_{index}"}
    if page in CHAINED_PAGES:                                   # the blocks before this one, first
        for i, before in enumerate(python_blocks((DOCS / page).read_text(encoding="utf-8"))[:index]):
            exec(compile(before, f"docs/{page} (python block {i})", "exec"), namespace)
    exec(code, namespace)


# ---------------------------------------------------------------- pages exist, format, where

@pytest.mark.parametrize("page", sorted(set(COMPONENT_PAGES) | set(GUIDE_PAGES)))
def test_page_exists(page):
    read(page)


@pytest.mark.parametrize("page", component_pages())
def test_component_page_format(page):
    text = read(page)
    levels = headings(text)
    assert levels and levels[0][0] == 1, f"docs/{page} must start with '# <Component>'"
    h2 = [h for level, h in levels if level == 2]
    positions = [h2.index(s) if s in h2 else -1 for s in FORMAT_SECTIONS]
    missing = [s for s, p in zip(FORMAT_SECTIONS, positions) if p < 0]
    assert not missing, f"docs/{page} lacks the sections {missing} (docs/_FORMAT.md)"
    assert positions == sorted(positions), f"docs/{page}: sections out of order, expected {FORMAT_SECTIONS} (docs/_FORMAT.md)"
    assert h2[-1] == "Where", f"docs/{page}: '## Where' must be the last section"
    blocks = python_blocks("\n".join(text.split("## Check it yourself", 1)[1].split("\n## Where", 1)[:1]))
    assert blocks, f"docs/{page}: '## Check it yourself' needs at least one ```python block"
    assert any("assert" in b for b in blocks), f"docs/{page}: the checks must assert something"
    for b in python_blocks(text):
        assert not re.search(r"^\s*(import|from)\s+(torch|oracle)\b", b, re.M), \
            f"docs/{page}: checks use numpy and reference only (no torch, no oracle)"


@pytest.mark.parametrize("page", component_pages())
def test_where_code_resolves(page):
    target = where(page).get("Code")
    assert target, f"docs/{page}: '## Where' needs a line '- Code: `reference/<file>.py::<Class>.backward`'"
    assert target.startswith("reference/"), f"docs/{page}: the code symbol should be under reference/, got {target}"
    resolve_code(target)


@pytest.mark.parametrize("page", component_pages())
def test_where_code_points_back(page):
    """The code a page derives names the page: in its own, its class's or its module's docstring."""
    target = where(page).get("Code")
    assert target, f"docs/{page}: no '- Code:' line"
    path, _, qualname = target.partition("::")
    module = importlib.import_module(path[:-3].replace("/", "."))
    chain, obj = [module], module
    for part in qualname.split("."):
        obj = getattr(obj, part)
        chain.append(obj)
    docs = [getattr(o, "__doc__", None) or "" for o in chain]
    assert any(f"docs/{page}" in d for d in docs), (
        f"{target} does not point to its derivation: add 'Derived in docs/{page}.' to the docstring of "
        f"{qualname} (or of its class or module)")


@pytest.mark.parametrize("page", component_pages())
def test_where_test_exists(page):
    target = where(page).get("Test")
    assert target, f"docs/{page}: '## Where' needs a line '- Test: `tests/<file>.py::<test_function>`'"
    check_test_exists(target)


@pytest.mark.parametrize("page", all_pages())
def test_code_and_tests_named_in_prose_exist(page):
    """Every `tests/...py::name` and `reference|oracle/...py::Name` a page mentions still exists."""
    text = prose(read(page))
    for target in sorted(set(re.findall(r"`(tests/[\w/]+\.py::\w+)`", text))):
        check_test_exists(target)
    for target in sorted(set(re.findall(r"`((?:reference|oracle)/[\w/]+\.py::[\w.]+)`", text))):
        resolve_code(target)


# ---------------------------------------------------------------- (c) every case has a page

def _registered_by_project(case) -> bool:
    """Cases registered by the project itself; not the temporary ones a test or a docs example
    registers and unregisters (their builders live in a test_* or docs_* namespace)."""
    module = getattr(case.ref, "__module__", "") or ""
    return not module.split(".")[-1].startswith(("test_", "docs_", "conftest"))


def _case_names():
    try:
        from oracle import REGISTRY
    except Exception as e:                                      # pragma: no cover - oracle broken or torch missing
        return [pytest.param(None, id=f"oracle-import-error-{type(e).__name__}")]
    return sorted(name for name, case in REGISTRY.items() if _registered_by_project(case))


def page_problem(case: str) -> str | None:
    """Why `case` has no derivation page, or None when it has one."""
    page = CASE_PAGES.get(case)
    if page is None:
        return (f"registered case {case!r} has no derivation page: write docs/<name>.md (format: docs/_FORMAT.md) "
                f"or extend an existing one, then map {case!r} to it in CASE_PAGES in tests/test_docs.py and in "
                f"the 'Cases and their pages' table of docs/verify.md")
    if not (DOCS / page).exists():
        return f"case {case!r} maps to docs/{page}, which does not exist (yet)"
    return None


@pytest.mark.parametrize("case", _case_names())
def test_every_case_has_a_page(case):
    if case is None:
        import oracle  # noqa: F401  (re-raise the import error)
    problem = page_problem(case)
    assert problem is None, problem


def test_an_unmapped_case_fails():
    from oracle.bridge.registry import Case

    def ref(d, dtype, rng):                                     # as if written in a project module
        raise NotImplementedError
    ref.__module__ = "oracle.bridge.cases"
    new = Case("brand_new_layer", ref, twin=lambda d: None)
    assert _registered_by_project(new)
    assert "has no derivation page" in page_problem(new.name) and "CASE_PAGES" in page_problem(new.name)
    assert page_problem("linear") is None


def test_case_map_has_no_stale_entries():
    from oracle import REGISTRY
    stale = sorted(set(CASE_PAGES) - set(REGISTRY))
    assert not stale, f"CASE_PAGES in tests/test_docs.py maps cases that are no longer registered: {stale}"


def test_verify_page_lists_the_case_map():
    table = {}
    for line in section(read("verify.md"), "Cases and their pages").splitlines():
        m = re.match(r"^\|\s*`([\w]+)`\s*\|\s*\[[^\]]*\]\(([^)#]+)\)\s*\|", line)
        if m:
            table[m.group(1)] = m.group(2)
    assert table == CASE_PAGES, (
        "the 'Cases and their pages' table of docs/verify.md differs from CASE_PAGES in tests/test_docs.py: "
        f"only in the page {sorted(set(table.items()) - set(CASE_PAGES.items()))}, "
        f"only in the test {sorted(set(CASE_PAGES.items()) - set(table.items()))}")


# ---------------------------------------------------------------- (d) every backward has a page

def _backward_classes():
    """Classes under reference/ that define `backward`, found by parsing (importing is not needed:
    some modules import optional packages, such as matplotlib for plotting)."""
    found = []
    for path in sorted((ROOT / "reference").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name == "backward" for f in node.body):
                rel = path.relative_to(ROOT).as_posix()
                found.append(pytest.param(rel, node.name, ast.get_docstring(node) or "", id=f"{rel}::{node.name}"))
    return found


@pytest.mark.parametrize("path, name, docstring", _backward_classes())
def test_backward_class_names_its_page(path, name, docstring):
    pages = re.findall(r"docs/([\w\-]+\.md)", docstring)
    assert pages, (f"{path}::{name} defines backward, but its docstring does not say where it is derived: "
                   f"add 'Derived in docs/<page>.md.' to the class docstring")
    for page in pages:
        assert (DOCS / page).exists(), f"{path}::{name} points to docs/{page}, which does not exist (yet)"


# ---------------------------------------------------------------- (e) links resolve

def _linking_files():
    files = [f"docs/{p}" for p in existing_pages()]
    return files + (["README.md"] if (ROOT / "README.md").exists() else [])


@pytest.mark.parametrize("source", _linking_files())
def test_relative_links_resolve(source):
    path = ROOT / source
    text = path.read_text(encoding="utf-8")
    broken = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):      # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            broken.append(f"{target} (no heading with anchor #{anchor} in {dest.name})")
    assert not broken, f"{source}: broken links: {broken}"


@pytest.mark.parametrize("page", [p for p in all_pages() if p != "index.md"])
def test_index_links_every_page(page):
    targets = {t.partition("#")[0] for t in links(read("index.md"))}
    assert page in targets, f"docs/index.md does not link docs/{page}: add it to the contents"


@pytest.mark.parametrize("page", component_pages())
def test_index_names_the_code_each_page_derives(page):
    """The contents table of docs/index.md gives, for each page, the code its '## Where' names."""
    rows = [line for line in section(read("index.md"), "Contents").splitlines()
            if re.match(rf"^\|\s*\[[^\]]*\]\({re.escape(page)}\)\s*\|", line)]
    assert rows, f"docs/index.md's contents table has no row for docs/{page}"
    code = where(page).get("Code")
    assert code and f"`{code}`" in rows[0], (
        f"docs/index.md's row for docs/{page} should name `{code}` (the page's '- Code:' line), got: {rows[0]}")


def test_slug_follows_github():
    assert slug("Tied weights: why the gradients add") == "tied-weights-why-the-gradients-add"
    assert slug("float32: within 10x of torch's own float32 error, or 16 ulps") == \
        "float32-within-10x-of-torchs-own-float32-error-or-16-ulps"
    assert slug("The `ln_f` layer") == "the-ln_f-layer"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


# ---------------------------------------------------------------- (f) docs quote code that exists

QUOTE_START = re.compile(r"\b[Ii]n code\b|\b[Tt]he code (?:is|forms|uses)\b")
SYMBOL = re.compile(r"^reference/[\w/]+\.py::[\w.]+$")
FILE_PATH = re.compile(r"^[\w./-]+\.(py|md|json|toml|safetensors)$")         # a file named, not code quoted
LIST_ITEM = re.compile(r"^\s*(\d+\.|[-*])\s")


def code_quotes(text: str) -> list[tuple[str, list[str], str | None]]:
    """[(passage, quotes, the symbol the page last named before it)] for every "In code" passage of a page
    (also "in code", "the code is/forms/uses"): from there to the end of its paragraph or list item (and
    through the next paragraph when the passage ends with a colon). Quotes are its backticked snippets,
    all of them: a symbol (`reference/x.py::Name`) written inside the passage, as in "In code
    (`reference/x.py::f`): ...", is read as a quote, as the project's own check reads it, and so it is
    reported; a page names the symbol before "In code"."""
    passages, lines, named = [], prose(text).splitlines(), None
    for i, line in enumerate(lines):
        m = QUOTE_START.search(line)
        before = line[:m.start()] if m else line
        named = ([q for q in re.findall(r"`([^`]+)`", before) if SYMBOL.match(q)] or [named])[-1]
        if not m:
            continue
        body = [line[m.start():]]
        for nxt in lines[i + 1:]:
            if LIST_ITEM.match(nxt) or QUOTE_START.search(nxt):
                break
            if not nxt.strip():
                if body[-1].rstrip().endswith(":") and len(body) == len([b for b in body if b.strip()]):
                    body.append("")                           # "... is these calls:" then the calls
                    continue
                break
            body.append(nxt)
        passage = " ".join(body)
        snippets = re.findall(r"`([^`]+)`", passage)
        passages.append((passage, [q for q in snippets if not FILE_PATH.match(q)], named))
    return passages


def normalise(code: str) -> str:
    """Whitespace collapsed to single spaces, none just inside brackets (a quote may join wrapped lines)."""
    code = re.sub(r"\s+", " ", code).strip()
    return re.sub(r"\s*([)\]}])", r"\1", re.sub(r"([(\[{])\s*", r"\1", code))


def symbol_source(target: str) -> str:
    """The source of `reference/x.py::Name[.method]`'s top-level definition (a method's whole class),
    without comments, normalised. Only the textbook path counts: reference/fast/ is refused."""
    import io
    import tokenize

    path, _, qualname = target.partition("::")
    assert not path.startswith("reference/fast/"), f"{target}: docs quote the textbook path, not reference/fast/"
    source = (ROOT / path).read_text(encoding="utf-8")
    tree = ast.parse(source)
    top = qualname.split(".")[0]
    nodes = [n for n in tree.body if getattr(n, "name", None) == top]
    assert nodes, f"{path} has no top-level {top}"
    segment = ast.get_source_segment(source, nodes[0])
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(segment).readline) if t.type != tokenize.COMMENT]
    return normalise(tokenize.untokenize(tokens))


def missing_quotes(page: str, text: str) -> list[str]:
    """One line per quote of `text` (a page) not found in its symbol's source."""
    code = where_in(text).get("Code")
    problems = []
    for passage, quotes, named in code_quotes(text):
        # A passage reads as the symbol the page last named before it ("`reference/functional.py::gelu`
        # computes it. In code: ..."), else as the page's Code line: as a reader takes it.
        scope = [named] if named else ([code] if code else [])
        if quotes and not scope:
            problems.append(f"docs/{page}: no code symbol for the quotes in: {passage[:80]}")
            continue
        sources = [symbol_source(s) for s in scope]
        for quote in quotes:
            if not any(normalise(quote) in src for src in sources):
                problems.append(f"docs/{page}: `{quote}` is not in {' or '.join(scope)}")
    return problems


def where_in(text: str) -> dict[str, str]:
    found = {}
    for line in section(text, "Where").splitlines():
        m = re.match(r"^\s*[-*]\s+(Code|Test):\s+`([^`]+)`\s*$", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


@pytest.mark.parametrize("page", existing_pages())
def test_code_quotes_exist_in_the_textbook_path(page):
    """A formula edited in the code or on the page fails here until the other follows."""
    problems = missing_quotes(page, read(page))
    assert not problems, "\n".join(problems)


def test_quote_check_reports_a_wrong_quote():
    """The check can fail: a quote the code does not hold, or one from the fast path, is reported."""
    page = ("# Linear\n\nIn code: `y = x2 @ self.weight.data.T`, then `y += self.bias.data`.\n\n"
            "In code: `return dy @ self.weight.data.T` for the input.\n\n"
            "## Where\n\n- Code: `reference/layers.py::Linear.backward`\n")
    assert missing_quotes("fake.md", page) == [
        "docs/fake.md: `return dy @ self.weight.data.T` is not in reference/layers.py::Linear.backward"]
    assert [q for _, q, _ in code_quotes(page)] == [["y = x2 @ self.weight.data.T", "y += self.bias.data"],
                                                    ["return dy @ self.weight.data.T"]]
    fast = "`reference/fast/layers.py::Linear` runs it. In code: `np.matmul(x2[lo:hi], w.T, out=y[lo:hi])`.\n"
    with pytest.raises(AssertionError, match="docs quote the textbook path"):
        missing_quotes("fake.md", fast)
    comment_only = "In code: `the scores a query can see`.\n\n## Where\n\n- Code: `reference/attention.py::CausalSelfAttention`\n"
    assert missing_quotes("fake.md", comment_only)            # words in a comment are not code
    # A passage reads as the symbol the page last named before it, not the page's Code line:
    # gelu_grad's code quoted after naming gelu is reported.
    inherited = ("`reference/functional.py::gelu` computes it. In code: `x * normal_cdf(x)`.\n\n"
                 "In code: `return normal_cdf(x) + x * normal_pdf(x)`.\n\n"
                 "## Where\n\n- Code: `reference/functional.py::gelu_grad`\n")
    assert missing_quotes("fake.md", inherited) == [
        "docs/fake.md: `return normal_cdf(x) + x * normal_pdf(x)` is not in reference/functional.py::gelu"]
    # A symbol written inside the passage is a quote to the project's check (docs/gelu.md and softmax.md
    # wrote "In code (`reference/functional.py::gelu`): ..." and the project's check reported them).
    inside = "In code (`reference/functional.py::gelu`): `x * normal_cdf(x)`.\n"
    assert missing_quotes("fake.md", inside) == ["docs/fake.md: no code symbol for the quotes in: "
                                                 "In code (`reference/functional.py::gelu`): `x * normal_cdf(x)`."]
    inside_too = "`reference/functional.py::gelu` computes it. " + inside
    assert missing_quotes("fake.md", inside_too) == [
        "docs/fake.md: `reference/functional.py::gelu` is not in reference/functional.py::gelu"]


def test_pasted_verify_tables_have_verifys_columns():
    """Every pasted table whose first column is `component` has the columns `verify` prints today."""
    from oracle.bridge.verify import HEADER
    found = 0
    for page in [*(DOCS / p for p in existing_pages()), ROOT / "README.md"]:
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            cells = tuple(c.strip() for c in line.strip().strip("|").split("|"))
            if line.startswith("| component") and len(cells) > 3:          # a table, not a two-column legend
                found += 1
                assert cells == HEADER, f"{page.name}:{n}: columns {cells}, verify prints {HEADER}"
    assert found >= 3
