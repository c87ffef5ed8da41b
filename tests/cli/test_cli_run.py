"""fusionsearch run from the command line, end to end."""

from __future__ import annotations

import pytest
from helpers import tiny_recipe
from typer.testing import CliRunner

import fusionsearch as fs
from fusionsearch.cli import app
from fusionsearch.search import load_study

runner = CliRunner()


@pytest.mark.slow
def test_run_command_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "tiny.yaml"
    d = tiny_recipe().to_dict()
    d["name"] = "tiny"
    d["study"] = {"trials": 2, "pruner": "none"}
    d["confirm"] = {"top": 1, "seeds": 2}
    recipe.write_text(__import__("yaml").safe_dump(d))
    args = ["run", "--recipe", str(recipe), "--quiet", "--report", "r.html"]
    result = runner.invoke(app, args, terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "baseline:single" in result.output and "confirmation: 8 trials queued" in result.output
    assert "Delta-m mean ± 95% CI" in result.output and "LibMTL's Delta_p" in result.output
    assert "beats the" in result.output or "no searched plan beats" in result.output
    # which fusion learning rates and BatchNorm start the plans got (the recipe trains with AdamW)
    said = " ".join(result.output.split())  # rich wraps long lines
    assert "translated for adamw (nddr x1, cross_stitch x100" in said and "train.bn_init: auto" in said
    assert (tmp_path / "r.html").is_file() and (tmp_path / "fusionsearch.db").is_file()
    confirmation = (tmp_path / "r.html").read_text().split('id="confirmation"')[1].split("</section>")[0]
    assert "Plotly.newPlot" in confirmation and "Not drawn" not in confirmation
    again = runner.invoke(app, args, terminal_width=250)
    assert again.exit_code == 0, again.output
    assert "started" not in again.output  # nothing left to run: resumed, not restarted
    st, _, _ = load_study("tiny-test_resnet-seg-normal", "sqlite:///fusionsearch.db")
    assert len(st.get_trials()) == 14  # warm start, 3 baselines, 2 slots, (3 baselines + 1 winner) x 2 seeds
    assert st.metric_names == ["Delta-m (%)"]
    # the confirmed best is what `best` exports; sampled trials kept no network
    kept = [t for t in st.get_trials() if "model_artifact" in t.user_attrs]
    assert all("slot" not in t.user_attrs for t in kept)
    exported = runner.invoke(app, ["best", "--study", st.study_name, "--out", "best.pt"], terminal_width=250)
    assert exported.exit_code == 0, exported.output
    assert "confirmed Delta-m" in exported.output and fs.load("best.pt").tasks
