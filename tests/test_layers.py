"""The package's shape (issue 21): every documented name imports, the README's Python runs, no
import cycle (lazy ones included), no private name crosses a subpackage, a layer imports only the
layers above it, and ``python cli.py`` runs from a clone; each package exports a short list,
written once and loaded on first use (issue 35)."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "fusionsearch"
LAYERS = [
    *("errors", "interrupts", "registry", "validation", "paths", "plugins"),
    *("graph", "tasks", "data", "nets", "train", "experiment", "search", "report", "cli"),
]
SUBPACKAGES = ["graph", "tasks", "data", "nets", "train", "experiment", "search", "report"]


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _typing_only(tree: ast.AST) -> set[int]:
    """The ids of the nodes under ``if TYPE_CHECKING:``: imports that never run."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def _imports(name: str, path: Path, runtime: bool = False) -> list[tuple[str, str]]:
    """(module imported, name imported) for every import in the file, in functions too; ``runtime``:
    only those that run (not a package's ``if TYPE_CHECKING:`` list of exports)."""
    out = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skip = _typing_only(tree) if runtime else set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            out += [(base, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names]
    return [(m, n) for m, n in out if m.startswith("fusionsearch")]


def _exports(package: str) -> dict[str, str]:
    """A package's exported names -> their modules, read from its ``if TYPE_CHECKING:`` block as a
    reader (and mypy) reads it, independently of ``registry.lazy_exports``."""
    path = _modules()[package]
    tree = ast.parse(path.read_text())
    skip = _typing_only(tree)
    return {
        a.asname or a.name: node.module or ""
        for node in ast.walk(tree)
        if id(node) in skip and isinstance(node, ast.ImportFrom)
        for a in node.names
    }


def _edges() -> dict[str, set[str]]:
    """Module -> the modules its imports run. A package's exports load on first use (PEP 562), so
    importing an exported name from a package runs the package's own imports and the name's
    module, not the rest of its list."""
    mods = _modules()
    exports = {m: _exports(m) for m, p in mods.items() if p.name == "__init__.py"}
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for target, name in _imports(m, p, runtime=True):
            full = f"{target}.{name}"
            edges[m].add(full if full in mods else target)
            if name in exports.get(target, {}):
                edges[m].add(exports[target][name])
    return {m: {t for t in ts if t in mods and t != m} for m, ts in edges.items()}


def _documentation() -> list[Path]:
    """The README and every page of the docs site."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_the_architecture_table_names_every_module():
    # docs/architecture.md's table of layers is kept current: a module added is a module described
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = "\n".join(line for line in text.splitlines() if line.startswith("|"))
    missing = [
        str(p.relative_to(PKG))
        for p in sorted(PKG.rglob("*.py"))
        if p.name not in ("__init__.py", "__main__.py") and f"`{p.name}`" not in table
    ]
    assert not missing, f"docs/architecture.md's table does not name {missing}"


def test_every_documented_name_imports():
    import fusionsearch as fs

    for name in fs.__all__:
        assert getattr(fs, name) is not None, name
    for sub in SUBPACKAGES:
        mod = importlib.import_module(f"fusionsearch.{sub}")
        for name in mod.__all__:
            assert getattr(mod, name) is not None, f"fusionsearch.{sub}.{name}"
    # and every dotted name the README and the docs show in code, `fusionsearch.train.item_seed` or a module
    text = "\n".join(p.read_text() for p in _documentation())
    assert "from fusionsearch.search import" in text
    flat = re.sub(r"\s+", " ", text)
    for module, names in re.findall(r"`from (fusionsearch[\w.]*) import ([\w, ]+)`", flat):
        mod = importlib.import_module(module)
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(mod, name), f"README or docs: from {module} import {name}"
    files = ("db", "json", "lock", "md", "py", "pt", "toml", "yaml")  # `fusionsearch.db` is a file, not a name
    shown = {d for d in re.findall(r"`(fusionsearch(?:\.\w+)+)`", text) if d.rpartition(".")[2] not in files}
    for dotted in sorted(shown):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):  # the longest prefix that is a module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attr in parts[cut:]:
                assert hasattr(obj, attr), f"README or docs name {dotted}, which does not exist"
                obj = getattr(obj, attr)
            break


def test_each_package_exports_a_short_list_written_once():
    # issue 35: a package's surface is its TYPE_CHECKING block, what mypy reads; `__all__` and
    # `dir()` say the same at run time, every name is its module's object, and the list is short
    for package, path in sorted(_modules().items()):
        if path.name != "__init__.py":
            continue
        listed = _exports(package)
        mod = importlib.import_module(package)
        assert sorted(mod.__all__) == sorted(listed), package
        assert [n for n in dir(mod) if not n.startswith("_")] == sorted(listed), package
        for name, home in listed.items():
            assert getattr(mod, name) is getattr(importlib.import_module(home), name), f"{package}.{name}"
            assert f"{package}.{name}" not in _modules(), f"{package}.{name} is also a module, which hides it"
        assert 0 < len(listed) <= (30 if package == "fusionsearch" else 20), f"{package}: {len(listed)} names"
        assert len(path.read_text().splitlines()) < 80, f"{path} is over 80 lines"
    assert len(_exports("fusionsearch.search")) <= 15


def test_lazy_exports_loads_each_name_on_first_use(tmp_path, monkeypatch):
    pkg = tmp_path / "lazypkg"
    pkg.mkdir()
    (pkg / "heavy.py").write_text("VALUE = 1\n\n\ndef helper():\n    return 2\n")
    (pkg / "other.py").write_text("")
    init = (
        "from typing import TYPE_CHECKING\n\nfrom fusionsearch.registry import lazy_exports\n\n"
        "if TYPE_CHECKING:\n    from lazypkg.heavy import VALUE\n    from .heavy import helper as run\n"
        "else:\n    __getattr__, __dir__, __all__ = lazy_exports(__name__)\n"
    )
    (pkg / "__init__.py").write_text(init)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("lazypkg", "lazypkg.heavy", "lazypkg.other"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    lazy = importlib.import_module("lazypkg")
    assert lazy.__all__ == ["VALUE", "run"] and [n for n in dir(lazy) if not n.startswith("_")] == ["VALUE", "run"]
    assert "lazypkg.heavy" not in sys.modules  # nothing loads before a name is used
    assert lazy.VALUE == 1 and lazy.run() == 2 and "VALUE" in vars(lazy)  # then kept
    assert lazy.other is sys.modules["lazypkg.other"]  # a submodule on first use, as an eager package had it
    assert not hasattr(lazy, "missing") and not hasattr(lazy, "no.such")
    (pkg / "__init__.py").write_text(init.replace("    from .heavy import helper as run\n", "    import os\n"))
    monkeypatch.delitem(sys.modules, "lazypkg")
    with pytest.raises(ImportError, match="holds only 'from M import name' lines"):
        importlib.import_module("lazypkg")


def test_importing_one_module_imports_only_what_it_needs():
    # the reason the exports load on first use: `fusionsearch list` reads recipes without Optuna,
    # SQLAlchemy or plotly, and `import fusionsearch` (the command line's first step) without torch
    code = (
        "import sys, importlib; importlib.import_module(sys.argv[1]);"
        " print(' '.join(m for m in sys.argv[2:] if m in sys.modules))"
    )
    for module, absent in [
        ("fusionsearch.experiment.recipe", ["optuna", "sqlalchemy", "plotly"]),
        ("fusionsearch", ["torch", "timm", "optuna"]),
        ("fusionsearch.cli", ["optuna", "plotly"]),
    ]:
        out = subprocess.run([sys.executable, "-c", code, module, *absent], capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0 and out.stdout.split() == [], (module, out.stdout, out.stderr)


def test_the_readmes_python_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 1
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for block in blocks:  # in order: later blocks use the names of earlier ones, as a reader would
        exec(compile(block, "README.md", "exec"), scope)
    assert (tmp_path / "net.pt").is_file()


def test_no_import_cycle_not_even_a_lazy_one():
    edges = _edges()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for t in sorted(edges[m]):
            if seen.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(t) :], t]))
            if t not in seen:
                visit(t, [*path, t])
        seen[m] = 2

    for m in sorted(edges):
        if m not in seen:
            visit(m, [m])


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else len(LAYERS)


def test_a_layer_imports_only_the_layers_above_it_and_no_private_name_crosses():
    mods = _modules()
    upward, private = [], []
    for m, p in mods.items():
        if m == "fusionsearch":
            continue
        for target, name in _imports(m, p):
            if (target == "fusionsearch" and not m.startswith("fusionsearch.cli")) or (
                target != "fusionsearch" and _layer(target) > _layer(m)
            ):
                if m.split(".")[1] == "search" and target.startswith("fusionsearch.report.leaderboard"):
                    continue  # run_workers' live view, the one allowed reach below (docs/architecture.md)
                upward.append(f"{m} imports {target}")
            crosses = target.split(".")[:2] != m.split(".")[:2]
            if name.startswith("_") and not name.startswith("__") and f"{target}.{name}" not in mods and crosses:
                private.append(f"{m} imports {target}.{name}")
    assert not upward and not private, upward + private


def test_cli_py_runs_the_command_line_from_a_clone():
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--version"], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0 and out.stdout.startswith("fusionsearch "), out.stderr


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_one_job_per_file_no_module_over_450_lines_no_function_over_60():
    long_modules, long_functions = [], []
    for m, p in sorted(_modules().items()):
        text = p.read_text()
        if len(text.splitlines()) > 450:
            long_modules.append(f"{m}: {len(text.splitlines())} lines")
        for f in _functions(ast.parse(text)):
            n = f.end_lineno - f.lineno + 1  # the signature and docstring count, decorators do not
            if n > 60:
                long_functions.append(f"{m}:{f.lineno} {f.name}: {n} lines")
    assert not long_modules and not long_functions, long_modules + long_functions


def test_each_command_body_is_at_most_40_lines():
    # parse, call one library function, print: the rules live in the library (issue 21)
    long = []
    for p in sorted((PKG / "cli").glob("*_commands.py")):
        for f in _functions(ast.parse(p.read_text())):
            if not any("command" in ast.unparse(d) for d in f.decorator_list):
                continue
            body = f.body[1:] if ast.get_docstring(f) else f.body
            n = f.end_lineno - body[0].lineno + 1
            if n > 40:
                long.append(f"{p.name}:{f.lineno} {f.name}: {n} lines")
    assert len(long) == 0, long
    assert len([f for p in (PKG / "cli").glob("*_commands.py") for f in _functions(ast.parse(p.read_text()))]) >= 12


def test_the_tests_mirror_the_subpackages():
    tests = ROOT / "tests"
    for sub in [*SUBPACKAGES, "cli"]:
        assert list((tests / sub).glob("test_*.py")), f"tests/{sub}/ has no test file"
    names = [p.name for p in tests.rglob("test_*.py")]
    assert len(names) == len(set(names)), "two test files share a name (pytest imports them by base name)"
    for module in ("queueing", "recovery"):  # the queue and the failure classes have direct tests
        assert (tests / "search" / f"test_{module}.py").is_file()
