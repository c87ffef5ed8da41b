"""What a person sees in the report: the confirmation figure's axis title whole, the reason a
figure is missing in words, and no Optuna log lines on stderr for a study without complete trials."""

from __future__ import annotations

import re
import subprocess
import sys

import optuna
import pytest
import yaml
from helpers import tiny_recipe

from fusionsearch.report.figures import confirmation_figure
from fusionsearch.search import StudySettings, prepare_study
from fusionsearch.search.confirm import Confirmation, ConfirmedPlan, Interval
from fusionsearch.tasks.delta import DeltaM

LONG = DeltaM(metrics="all", average="tasks").describe()  # a sentence: 100 characters or so


def test_the_confirmation_figure_keeps_its_axis_title_whole():
    study = optuna.create_study()
    study.set_user_attr("delta_m_convention", LONG)
    plans = [
        ConfirmedPlan(
            "trial 5", False, {"at": ["layer2"]}, {0: 1.0, 1: 2.0}, {0: 7, 1: 8}, interval=Interval(1.5, 0.2, 2.8, 2)
        ),
        ConfirmedPlan("single", True, None, {0: 0.0, 1: 0.0}, {0: 9, 1: 10}, interval=Interval(0.0, 0.0, 0.0, 2)),
    ]
    fig = confirmation_figure(study, Confirmation(plans=plans, best_baseline="single"))
    y = fig.layout.yaxis
    # a vertical title longer than the plot (450 px high, about 8 px a character) is cut at both ends
    assert y.title.text == "Delta-m (%)" and y.automargin and y.title.standoff
    assert fig.layout.title.subtitle.text == LONG  # the convention is still said, where it has room
    assert fig.layout.margin.t >= 100


def _no_optuna_lines(stderr: str) -> None:
    assert not re.search(r"^\[[WI] \d{4}-", stderr, re.M), stderr  # Optuna's logger: [W 2026-...] ...


def test_notes_say_what_is_missing_and_optuna_keeps_quiet(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    prepare_study(tiny_recipe(), StudySettings(study="s", storage=url, trials=2, pruner="none"))
    out = tmp_path / "r.html"
    cmd = [sys.executable, "-m", "fusionsearch.cli", "report", "--study", "s", "--storage", url, "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    notes = re.findall(r"Not drawn: ([^<]*)", out.read_text())
    assert not [n for n in notes if re.match(r"\w+(Error|Exception)\b", n)], notes  # words, not a class name
    assert "the study ran no confirmation (or none finished): nothing to draw" in notes
    assert "no complete trial of the search yet" in notes and "no complete sampled trial yet" in notes
    _no_optuna_lines(done.stderr)


@pytest.mark.slow
def test_run_with_no_trials_keeps_optuna_quiet(tmp_path):
    recipe = tiny_recipe(steps=2).to_dict()
    recipe["name"], recipe["study"] = "tiny", {"pruner": "none"}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "fusionsearch.cli", "run", "--recipe", "tiny.yaml", "--trials", "0", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _no_optuna_lines(done.stderr)
    assert (
        "Not drawn: no complete sampled trial yet" in (tmp_path / "tiny-test_resnet-seg-normal-report.html").read_text()
    )
