"""The report, the dashboard and the exported best network."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import torch
from typer.testing import CliRunner

import fusionsearch as fs
from fusionsearch.cli import app
from fusionsearch.report.html import FIGURES, write_report
from fusionsearch.search import load_study
from fusionsearch.search.storage import artifact_dir, open_storage

runner = CliRunner()


def test_report_contains_every_figure(small_study, tmp_path):
    study, url, _ = small_study
    path = write_report(study, tmp_path / "r.html", url)
    html = path.read_text()
    sections = {name: html.split(f'id="{name.replace(" ", "-")}"')[1].split("</section>")[0] for name in FIGURES}
    # too few trials for importances and no confirmation: each says why instead of drawing noise
    assert "importances need at least 10" in sections["parameter importances"]
    assert "ran no confirmation" in sections["confirmation"]
    for name in set(FIGURES) - {"parameter importances", "confirmation"}:
        assert "Not drawn" not in sections[name], (name, sections[name][:300])
        assert "Plotly.newPlot" in sections[name], name
    assert "LibMTL&#x27;s Delta_p" in html and "no confirmation was run" in html
    from optuna_dashboard._custom_plot_data import list_graph_object_ids

    def stored() -> list[str]:
        st = load_study("s", url)[0]
        return sorted(list_graph_object_ids(st._storage.get_study_system_attrs(st._study_id)))

    assert stored() == []  # a plain report only reads the study
    # with to_dashboard (what `run` does) our figures reach optuna-dashboard, once each however
    # often the report is written
    write_report(study, tmp_path / "r.html", url, to_dashboard=True)
    write_report(study, tmp_path / "r.html", url, to_dashboard=True)
    assert stored() == ["fusionsearch-fusion-weights", "fusionsearch-placement-map"]


def test_the_report_command_never_writes_the_storage(small_study, tmp_path, monkeypatch):
    """``report`` is documented among the commands that only read: on a journal storage each call
    appended about 100 kB of figures, without bound. Only ``--to-dashboard`` writes."""
    import shutil

    study, url, _ = small_study
    journal = tmp_path / "j.log"
    optuna.copy_study(from_study_name="s", from_storage=url, to_storage=open_storage(f"journal:{journal}"))
    shutil.copytree(artifact_dir(url), artifact_dir(f"journal:{journal}"))
    monkeypatch.chdir(tmp_path)
    before, files = journal.read_bytes(), sorted(p.name for p in tmp_path.iterdir())
    for _ in range(2):
        result = runner.invoke(app, ["report", "--study", "s", "--storage", f"journal:{journal}", "--out", "r.html"])
        assert result.exit_code == 0, result.output
    assert journal.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*files, "r.html"])
    result = runner.invoke(
        app, ["report", "--study", "s", "--storage", f"journal:{journal}", "--out", "r.html", "--to-dashboard"]
    )
    assert result.exit_code == 0, result.output
    assert len(journal.read_bytes()) > len(before)


def test_dashboard_serves_the_study(small_study):
    _, url, _ = small_study
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusionsearch.cli", "dashboard", "--storage", url, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        data = None
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    data = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert data is not None, "optuna-dashboard did not answer"
        names = [s["study_name"] for s in data["study_summaries"]]
        assert names == ["s"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_best_network_is_exported_and_loads(small_study, tmp_path):
    study, url, _ = small_study
    out = tmp_path / "best.pt"
    result = runner.invoke(app, ["best", "--study", "s", "--storage", url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    net = fs.load(out)
    assert set(net.tasks) == {"seg", "normal"}
    assert net(torch.randn(1, 3, 32, 32))["seg"].shape == (1, 6, 32, 32)
