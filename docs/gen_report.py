"""Run a real tiny study at build time and publish its HTML report's figures in the site (mkdocs-gen-files).

``mkdocs build`` runs this script (``plugins: gen-files`` in ``mkdocs.yml``). It runs, in a temporary
folder, the study that ``RECIPE`` below describes (timm's ``test_resnet``, the built-in synthetic
scenes at 32 px, a few steps per trial) with the command line a user types::

    fusionsearch run --recipe docs-report.yaml --quiet --study docs --report report.html

then splits the report into one page per figure. It takes about 30 to 60 s on 2 CPU cores, and
nothing at all when the code and this script are unchanged: the files are cached under
``.cache/docs-report/`` at the repository root, keyed by a hash of ``fusionsearch/``, this
script and the installed plotly's version (delete the folder to rerun). Set
``FUSIONSEARCH_DOCS_REPORT=skip`` to leave the study out (a quick preview): each figure's page
then says that it was not generated.

The files it adds to the site, under ``report/`` (``docs/report/`` as a page sees it):

- ``report/report.html``: the whole report, as ``fusionsearch report`` writes it;
- ``report/header.html``: the report's head: study name, trial counts, Delta-m convention, verdict;
- ``report/<figure>.html``: one figure each, a page of its own, for ``<figure>`` in
  ``confirmation``, ``optimization-history``, ``parameter-importances``, ``pareto-front``,
  ``parallel-coordinates``, ``placement-map``, ``fusion-weights``, ``task-weights``,
  ``data-starved`` (``FIGURES``; a figure the study cannot draw says why, as in the report);
- ``report/plotly.min.js``: plotly.js from the installed plotly package, which every page above
  loads (no CDN: the site works offline);
- ``report/recipe.yaml``: the recipe the study ran.

A page embeds a figure with an iframe (``docs/reading-a-report.md`` is served as
``reading-a-report/``, hence the ``../``)::

    <iframe src="../report/placement-map.html" width="100%" height="500" style="border:0" loading="lazy"></iframe>
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "docs-report"
FIGURES = (
    "confirmation",
    "optimization-history",
    "parameter-importances",
    "pareto-front",
    "parallel-coordinates",
    "placement-map",
    "fusion-weights",
    "task-weights",
    "data-starved",
)  # the ids of fusionsearch.report.html.FIGURES' sections
FILES = ("report.html", "header.html", *(f"{f}.html" for f in FIGURES), "plotly.min.js", "recipe.yaml")

# 10 sampled trials, none pruned: the fewest that the parameter importances draw
RECIPE = """\
about: The documentation's example study, about half a minute on a CPU.
reproduces: "none (the example report of the docs)"
backbone: test_resnet
tasks: [seg, normal]
data: {name: synthetic, size: 32, train_length: 16, val_length: 8}
train: {steps: 8, batch_size: 4, base_lr: 0.002, optimizer: adamw, eval_every: 2}
plan: {at: boundaries, unit: nddr, unit_args: {init: [0.9, 0.1]}}
search:
  points: boundaries
  column_init: single
  finetune_steps: 4
  finetune_lr_mult: 0.1
  units: [none, nddr, cross_stitch, sluice]
  shortcut: [false, true]
  shared_prefix: true
  init_alpha: [0.8, 1.0]
  lr_scale: [0.1, 10.0]
  fusion_weight_decay: [1.0e-6, 1.0e-2]
  loss_weights: {normal: [1.0, 20.0]}
study: {trials: 10, sampler: tpe, pruner: none, objectives: [delta_m], seed: 0}
confirm: {top: 1, seeds: 2}
delta_m: {average: tasks, metrics: all}
"""
COMMAND = ["run", "--recipe", "docs-report.yaml", "--quiet", "--study", "docs", "--report", "report.html"]
PAGE = (
    "<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
    "<style>body{{font-family:sans-serif;margin:{margin}}} .missing{{color:#888}}{style}</style>"
    "<script src='plotly.min.js'></script></head><body>{body}</body></html>"
)

FRAMED = {"margin": "0", "style": " html,body{height:100%}"}  # a figure fills its iframe


def source_key() -> str:
    """A hash of what the report depends on: the package's code and recipes, this script, plotly."""
    import plotly

    h = hashlib.sha256(Path(__file__).read_bytes() + plotly.__version__.encode())
    for p in sorted((ROOT / "fusionsearch").rglob("*")):
        if p.suffix in (".py", ".yaml"):
            h.update(str(p.relative_to(ROOT)).encode() + p.read_bytes())
    return h.hexdigest()


def run_study(folder: Path) -> str:
    """Run the tiny study in ``folder`` and return its report's HTML."""
    (folder / "docs-report.yaml").write_text(RECIPE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "fusionsearch.cli", *COMMAND, "--storage", f"sqlite:///{folder / 'docs.db'}"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the docs' example study failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return (folder / "report.html").read_text()


def without_inline_plotly(text: str) -> str:
    """``text`` with plotly.js's inline copy (the one script over 100 kB) replaced by nothing: the
    pages load ``plotly.min.js`` once, in their head."""
    out, at = [], 0
    while (start := text.find("<script", at)) >= 0:
        end = text.find("</script>", start) + len("</script>")
        out.append(text[at:start])
        if end - start < 100_000:
            out.append(text[start:end])
        at = end
    return "".join(out) + text[at:]


def split_report(report: str) -> dict[str, str]:
    """The published files' text, from the report's HTML (see the module docstring)."""
    import plotly.offline

    report = without_inline_plotly(report)
    body = report[report.index("<body>") + len("<body>") : report.rindex("</body>")]
    files = {
        "report.html": PAGE.format(title="fusionsearch report", body=body, margin="2em", style=""),
        "header.html": PAGE.format(title="fusionsearch report", body=body[: body.index("<section")], **FRAMED),
        "plotly.min.js": plotly.offline.get_plotlyjs(),
        "recipe.yaml": RECIPE,
    }
    sections = dict(re.findall(r'<section id="([^"]+)"><h2>.*?</h2>(.*?)</section>', body, re.S))
    for name in FIGURES:
        files[f"{name}.html"] = PAGE.format(title=name, body=sections[name], **FRAMED)
    return files


def placeholders() -> dict[str, str]:
    """The files when the study is left out (``FUSIONSEARCH_DOCS_REPORT=skip``)."""
    missing = "<p class='missing'>Not generated in this build (FUSIONSEARCH_DOCS_REPORT=skip).</p>"
    pages = {name: PAGE.format(title=html.escape(name), body=missing, **FRAMED) for name in FILES}
    return pages | {"plotly.min.js": "", "recipe.yaml": RECIPE}


def report_files() -> dict[str, str]:
    """The published files, from the cache when the sources are unchanged, else from a new study."""
    if os.environ.get("FUSIONSEARCH_DOCS_REPORT") == "skip":
        return placeholders()
    key = source_key()
    if (CACHE / "key").is_file() and (CACHE / "key").read_text() == key:
        return {name: (CACHE / name).read_text() for name in FILES}
    with tempfile.TemporaryDirectory() as d:
        files = split_report(run_study(Path(d)))
    shutil.rmtree(CACHE, ignore_errors=True)
    CACHE.mkdir(parents=True)
    for name, text in files.items():
        (CACHE / name).write_text(text)
    (CACHE / "key").write_text(key)
    return files


def publish(files: dict[str, str]) -> None:
    """Add the files to the site being built, under ``report/``."""
    import mkdocs_gen_files

    for name, text in files.items():
        with mkdocs_gen_files.open(f"report/{name}", "w") as f:
            f.write(text)


if __name__ == "<run_path>":  # run by mkdocs-gen-files during a build
    publish(report_files())
elif __name__ == "__main__":  # by hand: fill the cache and say where it is
    report_files()
    print(CACHE)
