from __future__ import annotations

import json

from typer.testing import CliRunner

from fusionsearch.cli import app

runner = CliRunner()


def test_inspect_table_lists_boundaries():
    result = runner.invoke(app, ["inspect", "--backbone", "resnet18", "--input-size", "3,64,64"])
    assert result.exit_code == 0, result.output
    for name in ("act1", "layer1", "layer2", "layer3", "layer4"):
        assert name in result.output
    assert "maxpool" in result.output  # first cut after the stem's downsampling


def test_inspect_json_for_scripts():
    result = runner.invoke(app, ["inspect", "--backbone", "test_resnet", "--json", "--all-cuts"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["name"] == "test_resnet"
    assert [b["reduction"] for b in data["boundaries"]] == sorted(b["reduction"] for b in data["boundaries"])
    assert len(data["cut_points"]) >= len(data["boundaries"])


def test_unknown_backbone_is_one_line_error():
    result = runner.invoke(app, ["inspect", "--backbone", "resnet1O1"])
    assert result.exit_code == 2
    assert "unknown backbone 'resnet1O1'" in result.output and "resnet101" in result.output
    assert "Traceback" not in result.output


def test_bad_input_size():
    result = runner.invoke(app, ["inspect", "--backbone", "test_resnet", "--input-size", "224"])
    assert result.exit_code != 0
    assert "C,H,W" in result.output


def test_build_then_inspect_model(tmp_path):
    out = tmp_path / "net.pt"
    result = runner.invoke(
        app,
        [
            "build",
            "--backbone",
            "test_resnet",
            "--tasks",
            "seg:40,normal:3",
            "--unit",
            "nddr",
            "--at",
            "layer1,layer2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert out.is_file()
    result = runner.invoke(app, ["inspect", "--model", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [p["name"] for p in data["points"] if p["unit"] == "nddr"] == ["layer1", "layer2"]
    # sum over tasks of K * C^2 (1x1 weights) + 2 * C per task (BatchNorm), K = 2, C = 32 and 48
    assert data["params"]["fusion"] == sum(2 * 2 * c * c + 2 * 2 * c for c in (32, 48))
    result = runner.invoke(app, ["inspect", "--model", str(out)])
    assert "fusion adds" in result.output


def test_build_errors_are_one_line(tmp_path):
    result = runner.invoke(
        app,
        [
            "build",
            "--backbone",
            "test_resnet",
            "--tasks",
            "seg:4,normal:3",
            "--unit",
            "nddx",
            "--out",
            str(tmp_path / "x.pt"),
        ],
    )
    assert result.exit_code == 2
    assert "unknown fusion unit 'nddx'" in result.output
    result = runner.invoke(app, ["units"])
    assert all(name in result.output for name in ("nddr", "cross_stitch", "sluice"))


def test_train_prints_the_metrics_table(tmp_path):
    args = [
        "train",
        "--backbone",
        "test_resnet",
        "--steps",
        "4",
        "--size",
        "48",
        "--train-images",
        "8",
        "--val-images",
        "4",
        "--batch-size",
        "2",
        "--eval-every",
        "2",
        "--loss-weight",
        "normal=20",
        "--checkpoint",
        str(tmp_path / "ck.pt"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for metric in ("miou", "pixel_acc", "mean", "median", "within_11.25", "within_22.5", "within_30"):
        assert metric in result.output
    assert (tmp_path / "ck.pt").is_file()
    result = runner.invoke(app, ["train", "--backbone", "test_resnet", "--tasks", "seg,age", "--steps", "1"])
    assert result.exit_code == 2 and "'age'" in result.output


def test_train_shows_delta_m_against_single_task_metrics(tmp_path):
    common = [
        "train",
        "--backbone",
        "test_resnet",
        "--steps",
        "2",
        "--size",
        "32",
        "--train-images",
        "4",
        "--val-images",
        "2",
        "--batch-size",
        "2",
        "--eval-every",
        "2",
    ]
    single = tmp_path / "single.json"
    result = runner.invoke(app, [*common, "--plan", "single", "--save-metrics", str(single)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(single.read_text())
    assert set(metrics) == {"seg", "normal"} and "miou" in metrics["seg"]
    result = runner.invoke(app, [*common, "--unit", "cross_stitch", "--baseline", str(single)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Delta-m vs single-task:" in result.output and "single-task" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"seg": {"miou": 1.0}}))
    result = runner.invoke(app, [*common, "--baseline", str(bad)])
    assert result.exit_code == 2 and "lacks seg/pixel_acc" in result.output


def test_version_and_help_exit_0():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("fusionsearch ")
    assert runner.invoke(app, ["run", "--help"]).exit_code == 0


def test_inspect_memory_prints_the_plan_by_part():
    args = ["inspect", "--backbone", "test_resnet", "--tasks", "seg,normal", "--memory", "--plan", "nddr_default"]
    one = runner.invoke(app, [*args, "--batch-size", "2", "--input-size", "3,32,32", "--optimizer", "sgd"])
    assert one.exit_code == 0, one.output
    for part in ("parameters", "gradients", "optimiser state (sgd)", "activations", "units", "largest tensor"):
        assert part in one.output
    assert "peak (predicted)" in one.output and "note:" in one.output
    bad = runner.invoke(app, [*args, "--input-size", "1,32,32"])
    assert bad.exit_code != 0 and "3 channels" in bad.output
    ck = runner.invoke(app, [*args, "--batch-size", "2", "--input-size", "3,32,32", "--checkpoint-segments"])
    assert ck.exit_code == 0 and "checkpoint recompute" in ck.output and "segment inputs" in ck.output
