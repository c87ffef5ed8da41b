"""The docs site (``docs/``, ``mkdocs.yml``) checked: every Python block of every page runs, every
shell block of the pages a new user follows runs on timm's tiny models, the site builds with
``mkdocs build --strict`` (no broken link, no missing reference), the API reference lists each
package's exports, and every command's ``--help`` ends with the address of a page that exists.

A block directly under ``<!-- skip: long -->`` is not run (a study at full size). Each page runs
in a process of its own, in an empty temporary folder, its blocks in order: a later block may use
the files and, for Python, the names of an earlier one. A ``bash`` block runs whole under
``bash -e``; of a ``console`` block, the lines that start with ``$ `` run. ``fusionsearch`` in them
is this checkout's command line (``python -m fusionsearch.cli``).

Run as a script (``python tests/test_docs.py PAGE.md``), it runs one page's blocks in the current
folder, as the tests do.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SHELL_PAGES = ("getting-started.md", "your-own-data.md")  # their shell blocks run too
SKIP = "<!-- skip: long -->"
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
PAGE_TIMEOUT = 600


def blocks(text: str, shell: bool) -> list[dict]:
    """The blocks of a page that run, in order: ``{"kind": "python"|"bash", "code", "line"}``.
    ``shell``: the page's ``bash`` and ``console`` blocks run too (a console block's ``$ `` lines)."""
    out = []
    for m in FENCE.finditer(text):
        lang, line = m["lang"], text.count("\n", 0, m.start()) + 1
        above = text[: m.start()].rstrip().rsplit("\n", 1)[-1].strip()
        if above == SKIP:
            continue
        # a block fenced inside a list or an admonition: its lines without the fence's indent
        code = "\n".join(s[len(m["indent"]) :] if s.startswith(m["indent"]) else s for s in m["body"].splitlines())
        if lang == "python":
            out.append({"kind": "python", "code": code, "line": line})
        elif shell and lang in ("bash", "sh", "shell"):
            out.append({"kind": "bash", "code": code, "line": line})
        elif shell and lang == "console":
            commands = _console_commands(code)
            if commands:
                out.append({"kind": "bash", "code": "\n".join(commands), "line": line})
    return out


def _console_commands(code: str) -> list[str]:
    """A console block's commands: the lines after ``$ ``, with their ``\\`` continuation lines."""
    commands: list[str] = []
    going = False
    for s in code.splitlines():
        if s.startswith("$ "):
            commands.append(s[2:])
        elif going:
            commands[-1] += "\n" + s
        else:
            continue
        going = s.endswith("\\")
    return commands


def page_blocks(path: Path) -> list[dict]:
    return blocks(path.read_text(), shell=path.name in SHELL_PAGES)


BASH_PRELUDE = 'fusionsearch() { "$FUSIONSEARCH_PYTHON" -m fusionsearch.cli "$@"; }\nset -e -o pipefail\n'


def run_blocks(steps: list[dict], where: str) -> None:
    """Run ``steps`` here, in order (Python in one shared scope); raise naming the first that fails."""
    scope: dict = {"__name__": "__main__"}
    env = {**os.environ, "FUSIONSEARCH_PYTHON": sys.executable}
    for step in steps:
        label = f"{where}:{step['line']}"
        if step["kind"] == "python":
            exec(compile(step["code"], label, "exec"), scope)
            continue
        done = subprocess.run(["bash", "-c", BASH_PRELUDE + step["code"]], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(
                f"{label}: the shell block exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )


def run_page(
    steps: list[dict], where: str, folder: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a page's blocks in a process of its own (registries and torch's state stay its own)."""
    (folder / ".blocks.json").write_text(json.dumps({"where": where, "steps": steps}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update(MPLBACKEND="Agg", FUSIONSEARCH_DEBUG="1", **(extra_env or {}))
    return subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--steps", str(folder / ".blocks.json")],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT,
    )


def _pages() -> list:
    """The pages with blocks to run; those that run commands are ``slow`` (``-m "not slow"`` skips them)."""
    pages = sorted(p for p in DOCS.glob("*.md") if page_blocks(p))
    slow = [pytest.mark.slow]
    return [pytest.param(p, id=p.name, marks=slow if p.name in SHELL_PAGES else []) for p in pages]


@pytest.fixture(scope="module")
def page_runs(request, tmp_path_factory):
    """The selected pages' runs, started at once, one per core (each process on one thread: tiny
    models gain nothing from more), so the pages take the time of the longest, not of the sum."""
    test = "test_the_blocks_of_each_page_run"
    pages = [i.callspec.params["page"] for i in request.session.items if getattr(i, "originalname", "") == test]
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    one_thread = {"OMP_NUM_THREADS": "1"}
    runs: dict[str, Future] = {}
    for page in pages:
        folder = tmp_path_factory.mktemp(page.stem)
        runs[page.name] = pool.submit(run_page, page_blocks(page), f"docs/{page.name}", folder, one_thread)
    yield runs
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("page", _pages())
def test_the_blocks_of_each_page_run(page, page_runs):
    result = page_runs[page.name].result()
    assert result.returncode == 0, f"docs/{page.name}:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"


SAMPLE = """# A sample page

```python
import fusionsearch as fs
names = [b.name for b in fs.trace("test_resnet", (3, 32, 32)).boundaries]
```

Then, in a list:

1. Step one:

    ```python
    assert names[-1] == "layer4", names
    open("made-by-python.txt", "w").write("x")
    ```

<!-- skip: long -->
```python
raise SystemExit("a block under the skip marker ran")
```

```bash
test -f made-by-python.txt
fusionsearch --version > version.txt
grep -q "^fusionsearch " version.txt
```

```console
$ fusionsearch list \\
    recipes > recipes.txt
 name    about
$ grep -q positive_control recipes.txt
```

<!-- skip: long -->
```bash
fusionsearch run --backbone resnet18 --tasks seg,normal
```

```text
fusionsearch this is output, never run
```
"""


def test_the_runner_on_a_sample_page(tmp_path):
    steps = blocks(SAMPLE, shell=True)
    assert [s["kind"] for s in steps] == ["python", "python", "bash", "bash"]
    listing = "fusionsearch list \\\n    recipes > recipes.txt"
    assert steps[3]["code"] == f"{listing}\ngrep -q positive_control recipes.txt"
    assert [s["kind"] for s in blocks(SAMPLE, shell=False)] == ["python", "python"]  # not a shell page
    result = run_page(steps, "sample.md", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "recipes.txt").is_file()
    # a failing block fails the page, named by its line; a shell block stops at its first failure
    bad = [{"kind": "python", "code": "x = 1\nassert x == 2", "line": 3}]
    result = run_page(bad, "sample.md", tmp_path)
    assert result.returncode != 0 and 'File "sample.md:3", line 2' in result.stderr, result.stderr
    bad = [{"kind": "bash", "code": "false\ntouch after-false.txt", "line": 9}]
    result = run_page(bad, "sample.md", tmp_path)
    assert result.returncode != 0 and "sample.md:9: the shell block exited 1" in result.stderr, result.stderr
    assert not (tmp_path / "after-false.txt").exists()


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    pytest.importorskip("mkdocs_gen_files")
    # the example study of reading-a-report is left out here: `.ci/run` builds the site in full
    # (docs/gen_report.py, cached), and this test checks links, anchors and references quickly
    env = {**os.environ, "FUSIONSEARCH_DOCS_REPORT": "skip", "NO_MKDOCS_2_WARNING": "1"}
    env.update(DISABLE_MKDOCS_2_WARNING="true", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-6000:]
    assert (tmp_path / "site" / "reference" / "nets" / "index.html").is_file()
    assert (tmp_path / "site" / "report" / "placement-map.html").is_file()


def _exports(package: str) -> set[str]:
    init = ROOT.joinpath(*package.split(".")) / "__init__.py"
    tree = ast.parse(init.read_text())
    return {
        a.asname or a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for stmt in node.body
        if isinstance(stmt, ast.ImportFrom)
        for a in stmt.names
    }


@pytest.mark.parametrize(
    "package", ["graph", "tasks", "data", "nets", "nets.fusion", "train", "experiment", "search", "report"]
)
def test_the_reference_shows_every_export(package):
    page = DOCS / "reference" / f"{package.split('.')[0]}.md"
    shown = set(re.findall(rf"^::: fusionsearch\.{re.escape(package)}\.(\w+)$", page.read_text(), re.M))
    shown -= {"fusion"}  # the subpackage nets.fusion, shown on the same page
    assert shown == _exports(f"fusionsearch.{package}"), page


def test_the_reference_of_the_top_package_links_every_export():
    text = (DOCS / "reference" / "fusionsearch.md").read_text()
    assert set(re.findall(r"\{#fusionsearch\.(\w+)\}", text)) == _exports("fusionsearch")


def test_every_help_ends_with_its_page_of_the_docs():
    from typer.main import get_command
    from typer.testing import CliRunner

    from fusionsearch.cli import app
    from fusionsearch.cli.core import DOCS_URL

    nav = (ROOT / "mkdocs.yml").read_text()
    root = get_command(app)
    paths = [[]] + [[name] for name in root.commands]  # type: ignore[attr-defined]
    paths += [["data", name] for name in root.commands["data"].commands]  # type: ignore[attr-defined]
    for path in paths:
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
        assert result.exit_code == 0, path
        last = result.output.strip().splitlines()[-1].strip()
        assert last.startswith(f"Docs: {DOCS_URL}"), (path, last)
        page = last.removeprefix(f"Docs: {DOCS_URL}").strip("/") or "index"
        assert (DOCS / f"{page}.md").is_file() and f"{page}.md" in nav, (path, page)


def test_the_report_generator_splits_a_report():
    sys.path.insert(0, str(DOCS))
    try:
        gen = importlib.import_module("gen_report")
    finally:
        sys.path.remove(str(DOCS))
    big = "<script>" + "x" * 200_000 + "</script>"
    sections = "".join(f'<section id="{f}"><h2>{f}</h2><p>figure {f}</p></section>' for f in gen.FIGURES)
    report = f"<html><body><h1>study</h1><p>verdict</p>{big}{sections}</body></html>"
    files = gen.split_report(report)
    assert sorted(files) == sorted(gen.FILES)
    assert "x" * 1000 not in files["report.html"] and "<p>figure placement-map</p>" in files["report.html"]
    assert "<p>figure placement-map</p>" in files["placement-map.html"] and "verdict" in files["header.html"]
    assert "plotly.min.js" in files["confirmation.html"] and files["plotly.min.js"].startswith("/**")
    assert sorted(gen.placeholders()) == sorted(gen.FILES)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--steps"]:
        spec = json.loads(Path(sys.argv[2]).read_text())
        run_blocks(spec["steps"], spec["where"])
    else:
        for name in sys.argv[1:]:
            run_blocks(page_blocks(Path(name)), name)


def test_the_readme_is_short_and_starts_with_the_set_up():
    """At most 250 lines, no commit hash (7 to 40 hex characters with a letter and a digit), and
    its first code block is the two set-up commands: install and run the first study, then the
    check CI runs."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    hashes = [h for h in re.findall(r"\b[0-9a-f]{7,40}\b", text) if re.search(r"[a-f]", h) and re.search(r"\d", h)]
    assert not hashes, hashes
    first = re.search(r"```\w*\n(.*?)```", text, re.S)
    assert first is not None
    lines = [ln for ln in first.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(lines) == 2 and "pip install" in lines[0] and "fusionsearch run" in lines[0], lines
    assert "pytest" in lines[1], lines
