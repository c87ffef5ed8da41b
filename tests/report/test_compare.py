"""fusionsearch compare: the papers' tables beside ours."""

from __future__ import annotations

import pytest
from helpers import grid_recipe, tiny_recipe
from typer.testing import CliRunner

from fusionsearch.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_compare_prints_the_papers_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tiny_recipe().to_dict()
    d.update(
        name="tiny",
        paper={
            "table": "Tiny table",
            "rows": {
                "single_task": {"seg": {"miou": 30.0, "pixel_acc": 60.0}},
                "nddr": {"seg": {"miou": 33.0, "pixel_acc": 66.0}},
            },
        },
        compare={"search_trials": 1, "columns": {"seg": ["miou", "pixel_acc"], "normal": ["mean"]}},
        confirm={"top": 1, "seeds": 2},
    )
    (tmp_path / "tiny.yaml").write_text(__import__("yaml").safe_dump(d, sort_keys=False))
    result = runner.invoke(
        app, ["compare", "--recipe", str(tmp_path / "tiny.yaml"), "--quiet", "--out", "out"], terminal_width=250
    )
    assert result.exit_code == 0, result.output
    md = (tmp_path / "out" / "tiny-compare.md").read_text()
    for row in ("single_task", "multi_task_baseline", "cross_stitch", "sluice", "nddr", "search_best"):
        assert row in md and row in result.output
    assert "(33)" in md and "(66)" in md  # the paper's numbers beside ours
    assert "(+10.00)" in md  # the paper's own Delta-m of its NDDR row: (33/30 - 1 + 66/60 - 1) / 2
    assert "(2 seeds)" in md and "reference" in md  # every row confirmed over seeds, tested against the best
    csv_text = (tmp_path / "out" / "tiny-compare.csv").read_text().splitlines()
    assert csv_text[0].startswith("row,source,seg/miou,seg/pixel_acc,normal/mean,delta_m,delta_m_mean")
    assert sum(line.startswith("nddr,") for line in csv_text) == 2  # ours and the paper's


@pytest.mark.slow
def test_compare_on_an_ablation_grid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = grid_recipe(["layer1", "layer4"]).to_dict()
    d.update(
        name="grid",
        study={"sampler": "grid", "trials": "grid"},
        confirm={"seeds": 0},
        paper={"rows": {"init_1_0": {"seg": {"miou": 36.2}}, "init_0.9_0.1": {"seg": {"miou": 36.2}}}},
        compare={
            "columns": {"seg": ["miou"]},
            "grid_rows": {"init_1_0": {"init": "1,0"}, "init_0.9_0.1": {"init": "0.9,0.1"}},
        },
    )
    (tmp_path / "grid.yaml").write_text(__import__("yaml").safe_dump(d, sort_keys=False))
    result = runner.invoke(app, ["compare", "--recipe", "grid.yaml", "--quiet"], terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "+ 2 grid points" in result.output
    md = (tmp_path / "grid-compare.md").read_text()
    assert "init_1_0" in md and "init_0.9_0.1" in md and "(36.2)" in md and "not run" not in md


def test_compare_without_the_data_prints_the_papers_table_alone_and_says_so(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from fusionsearch.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["compare", "--recipe", "cs_nyuv2"])
    assert result.exit_code == 2, result.output
    assert "(34.1)" in result.output and "not run" in result.output  # Table 5 cross-stitch: mean angle, ours empty
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "the table above is the paper's alone" in last
    assert not (tmp_path / "fusionsearch.db").exists()
