"""The import arrows of docs/architecture.md, enforced.

Every module of reference/ and oracle/ belongs to one layer, and a layer may import only the layers
its arrow allows:

    model     reference/*.py (the textbook)        -> model
    fast      reference/fast/                      -> model, fast
    programs  reference/programs/                  -> model, fast, programs
    entry     reference/__main__.py                -> programs            (`python -m reference`)
    core      oracle/core/                         -> core               (checks anyone's code)
    bridge    oracle/ (the rest)                   -> core, bridge, model, fast, programs

Every way in counts: `import a.b`, `from a import b`, relative imports at any level, imports inside
functions (lazy), `importlib.import_module` / `__import__` / `find_spec` / `run_module` with a literal
name, and "package.module:function" strings that a child process imports. A dynamic import whose name
is not a literal is refused unless it is listed in DYNAMIC with the reason it stays inside its layer.
The same graph, lazy imports included, must have no cycle. Outside libraries: the model and the fast
path import numpy and the standard library only; the programs add safetensors (a core dependency)
at module level and the optional extras lazily, inside the function that needs them.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("reference", "oracle")

ALLOWED = {
    "model": {"model"},
    "fast": {"model", "fast"},
    "programs": {"model", "fast", "programs"},
    "entry": {"programs"},
    "core": {"core"},
    "bridge": {"core", "bridge", "model", "fast", "programs"},
}
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
LIBRARIES = {
    "model": {"numpy"},
    "fast": {"numpy"},
    "programs": {"numpy", "safetensors"},
    "entry": set(),
}
LAZY_LIBRARIES = {"programs": {"tqdm", "matplotlib", "tokenizers", "mpi4py", "jinja2"}}
FRAMEWORKS = {"torch", "jax", "tensorflow", "cupy", "mlx", "transformers", "peft"}

# Dynamic imports whose target is computed: (module, source of the call) -> why it stays in its layer.
DYNAMIC = {
    ("reference.programs.cli", "importlib.import_module(module_name)"):
        "a command's module, named in the COMMANDS table of the caller (checked below as strings)",
    ("reference.programs.cli", "importlib.import_module(commands[name][0])"):
        "the same table",
    ("oracle.bridge.verify", "importlib.import_module(spec)"):
        "the user's own module of cases (`verify --cases MODULE`), outside this tree",
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "reference":
        if len(parts) > 1 and parts[1] == "fast":
            return "fast"
        if len(parts) > 1 and parts[1] == "programs":
            return "programs"
        if len(parts) > 1 and parts[1] == "__main__":
            return "entry"
        return "model"
    if len(parts) > 1 and parts[1] == "core":
        return "core"
    return "bridge"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = project_modules()


@dataclass(frozen=True)
class Import:
    target: str          # the dotted module name imported (or the library's top-level name)
    how: str             # the source text that imports it
    lazy: bool           # inside a function or class body


def resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of a relative import `from {'.' * level}{name} import ...` in `module`."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def expand(target: str, names: list[str]) -> list[str]:
    """`from pkg import a, b`: the submodules pkg.a, pkg.b where they exist, else pkg itself."""
    subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
    return subs + ([target] if len(subs) < len(names) else [])


def literal_module(text: str) -> str | None:
    """"pkg.mod:func" or "pkg.mod" naming a project module, as a child process would import it."""
    head = text.split(":")[0].strip()
    if head.split(".")[0] in PACKAGES and all(p.isidentifier() for p in head.split(".")):
        while head and head not in MODULES:
            head = head.rpartition(".")[0]
        return head or None
    return None


def table_lookup(arg: ast.AST, tables: dict[str, list[str]]) -> str | None:
    """The table's name when `arg` is f".{TABLE[key]}" over a module-level table of module names."""
    if isinstance(arg, ast.JoinedStr) and len(arg.values) == 2:
        head, value = arg.values
        if (isinstance(head, ast.Constant) and head.value == "." and isinstance(value, ast.FormattedValue)
                and isinstance(value.value, ast.Subscript) and isinstance(value.value.value, ast.Name)
                and value.value.value.id in tables):
            return value.value.value.id
    return None


def imports_of(module: str, source: str, is_package: bool) -> tuple[list[Import], list[str]]:
    """Every import of `module` (its source given), and the dynamic imports it could not resolve."""
    tree = ast.parse(source)
    found, unresolved = [], []
    tables = {t.id: [v.value for v in node.value.values]             # module-level {name: "module"} tables
              for node in tree.body if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
              and all(isinstance(v, ast.Constant) and isinstance(v.value, str) for v in node.value.values)
              for t in node.targets if isinstance(t, ast.Name)}
    scopes = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for child in ast.walk(node):
                if child is not node:
                    scopes[id(child)] = True
    for node in ast.walk(tree):
        lazy = id(node) in scopes
        how = ast.unparse(node) if isinstance(node, (ast.Import, ast.ImportFrom, ast.Call)) else ""
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(alias.name, how, lazy))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = resolve(module, is_package, node.level, node.module)
            else:
                target = node.module or ""
            for t in expand(target, [a.name for a in node.names]):
                found.append(Import(t, how, lazy))
        elif isinstance(node, ast.Call):
            func = node.func
            name = getattr(func, "attr", getattr(func, "id", ""))
            if name in ("import_module", "__import__", "find_spec", "run_module"):
                arg = node.args[0] if node.args else None
                package = node.args[1] if len(node.args) > 1 else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    target = arg.value
                    if target.startswith("."):
                        level = len(target) - len(target.lstrip("."))
                        target = resolve(module, is_package, level, target.lstrip(".") or None)
                    found.append(Import(target, how, True))
                elif table_lookup(arg, tables):                 # f".{_EXPORTS[name]}": every value of the table
                    for value in tables[table_lookup(arg, tables)]:
                        found.append(Import(resolve(module, is_package, 1, value), how, True))
                else:
                    unresolved.append(how)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for code in re.findall(r"^\s*(?:from|import)\s+((?:reference|oracle)(?:\.\w+)*)", node.value, re.M):
                found.append(Import(code, repr(node.value)[:60], True))  # code a child runs: `python -c "..."`
            target = literal_module(node.value)
            if target and ":" in node.value:
                found.append(Import(target, repr(node.value), True))
            elif target and target != module and target.count(".") >= 1 and " " not in node.value:
                found.append(Import(target, repr(node.value), True))
    return found, unresolved


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """What `module` imports against the arrows, one line each."""
    layer = layer_of(module)
    found, unresolved = imports_of(module, source, is_package)
    bad = []
    for imp in found:
        top = imp.target.split(".")[0]
        if top in PACKAGES:
            target_layer = layer_of(imp.target)
            if target_layer not in ALLOWED[layer]:
                bad.append(f"{module} ({layer}) imports {imp.target} ({target_layer}): {imp.how}")
        elif layer in LIBRARIES:
            if top in FRAMEWORKS:
                bad.append(f"{module} ({layer}) imports the framework {top}: {imp.how}")
            elif top in STDLIB or top in LIBRARIES[layer]:
                continue
            elif imp.lazy and top in LAZY_LIBRARIES.get(layer, set()):
                continue
            else:
                where = "lazily" if imp.lazy else "at module level"
                bad.append(f"{module} ({layer}) imports {top} {where}: {imp.how}")
    for how in unresolved:
        if (module, how) not in DYNAMIC:
            bad.append(f"{module} ({layer}) imports dynamically, target unknown: {how}")
    return bad


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        found, _ = imports_of(module, path.read_text(), path.name == "__init__.py")
        graph[module] = {i.target for i in found if i.target in MODULES and i.target != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# ------------------------------------------------------------------------------------------ the tree


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_arrows(module):
    path = MODULES[module]
    assert not violations(module, path.read_text(), path.name == "__init__.py")


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_layers_exist():
    """The arrows are about real modules: each layer has some (a renamed folder fails here)."""
    layers = {layer_of(m) for m in MODULES}
    assert {"model", "fast", "programs", "entry", "core", "bridge"} <= layers, layers


def test_the_command_table_names_programs_only():
    """The CLI's dynamic imports take their names from its table: each is a module of the programs."""
    from reference.programs.cli import COMMANDS

    for name, (module, _) in COMMANDS.items():
        assert module in MODULES and layer_of(module) == "programs", (name, module)


# ------------------------------------------------------------------------------------------ planted


@pytest.mark.parametrize("module, source, expected", [
    ("reference.model", "from .fast import use_kernels", "imports reference.fast (fast)"),
    ("reference.model", "from . import fast", "imports reference.fast (fast)"),
    ("reference.layers", "def f():\n    from reference.programs import train", "imports reference.programs.train"),
    ("reference.layers", "import importlib\nm = importlib.import_module('reference.fast.pool')",
     "imports reference.fast.pool (fast)"),
    ("reference.model", "import importlib\nm = importlib.import_module('.fast', 'reference')",
     "imports reference.fast (fast)"),
    ("reference.model", "import importlib\nm = importlib.import_module(f'.{name}', __name__)", "target unknown"),
    ("reference.model", "m = __import__(name)", "target unknown"),
    ("reference.attention", "import torch", "imports the framework torch"),
    ("reference.attention", "import scipy", "imports scipy at module level"),
    ("reference.fast.layers", "from ..programs import data", "imports reference.programs.data (programs)"),
    ("reference.fast.pool", "import oracle", "imports oracle (bridge)"),
    ("reference.programs.train", "import tqdm", "imports tqdm at module level"),
    ("reference.programs.train", "import oracle.core.check", "imports oracle.core.check (core)"),
    ("reference.programs.sample", "x = 'oracle.bridge.bench:profile_child'", "(bridge)"),
    ("reference.programs.train", "code = 'import json\\nfrom oracle.bridge.bench import f'", "(bridge)"),
    ("oracle.core.check", "from reference.model import GPT", "imports reference.model (model)"),
    ("oracle.core.check", "def f():\n    from ..bridge import twins", "imports oracle.bridge"),
    ("reference.__main__", "from .model import GPT", "imports reference.model (model)"),
    ("reference.model", "import importlib\n_EXPORTS = {'a': 'layers', 'b': 'programs.train'}\n"
     "def f(name):\n    return importlib.import_module(f'.{_EXPORTS[name]}', 'reference')",
     "imports reference.programs.train (programs)"),
])
def test_a_planted_violation_is_reported(module, source, expected):
    """A check that cannot fail is a defect: each way in, planted, is reported."""
    found = violations(module, source)
    assert any(expected in line for line in found), found


def test_allowed_imports_are_not_reported():
    assert violations("reference.fast.layers", "from .. import layers\nfrom .pool import empty") == []
    assert violations("reference.programs.plot", "def f():\n    import matplotlib") == []
    assert violations("oracle.cli", "from reference.programs import cli") == []


def test_a_planted_cycle_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
