"""benchmarks/gpu_check.py on the CPU as CI runs it: every section gives rows and none fails, the
deterministic reruns repeat exactly, and a section that raises is a FAILED row and exit 1 while
the others still run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusionsearch.tasks.weighting import WEIGHTINGS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
SECTIONS = ["study", "step_time", "loader", "memory", "rerun", "weightings"]


def gpu_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, **(env or {})})


def rows_of(result: dict, section: str) -> dict[str, dict]:
    return {row["name"]: row for row in result["sections"][section]["rows"]}


@pytest.mark.slow
def test_every_section_runs_on_the_cpu(tmp_path):
    out = tmp_path / "r.json"
    run = gpu_check("--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "FAILED" not in run.stdout
    assert "| amp_dtype " in run.stdout and "total wall time:" in run.stdout
    result = json.loads(out.read_text())
    assert list(result["sections"]) == SECTIONS and result["failed"] == 0
    for name, section in result["sections"].items():
        assert section["rows"], name
        assert all(row["status"] == "ok" for row in section["rows"]), section["rows"]
        assert f"| {name} " in run.stdout  # the Markdown table has its rows
    study = rows_of(result, "study")["2 workers on cpu,cpu"]["data"]
    assert study["rc"] == 0 and study["trials"]["failed"] == 0
    assert study["trials"]["complete"] >= 6  # warm start, 3 baselines, 2 sampled trials
    step = rows_of(result, "step_time")
    assert set(step) == {"fp32, NCHW", "fp32, channels_last", "AMP bf16, NCHW", "AMP bf16, channels_last"}
    assert all(row["data"]["step_s"] > 0 for row in step.values())
    loader = rows_of(result, "loader")
    assert loader["2 workers"]["data"]["same_batches"] and loader["num_workers=None (auto)"]["data"]["workers"] == 0
    memory = rows_of(result, "memory")
    assert len(memory) == 7 and all(row["result"] == "n/a (cpu)" for row in memory.values())
    assert all(row["data"]["predicted_mib"] > 0 for row in memory.values())  # the memory plan beside it
    rerun = rows_of(result, "rerun")
    for mode in ("deterministic=False", "deterministic=True"):  # the CPU's kernels repeat exactly
        assert rerun[mode]["data"]["loss_std"] == 0 and rerun[mode]["data"]["angle_std"] == 0
    assert len(rerun[mode]["data"]["losses"]) == 3
    assert [name.split()[0] for name in rows_of(result, "weightings")] == sorted(WEIGHTINGS)


@pytest.mark.slow
def test_a_failing_section_is_a_failed_row_and_exit_1(tmp_path):
    out = tmp_path / "r.json"
    run = gpu_check("--sections", "step_time,loader", "--out", str(out), env={"GPU_CHECK_FAIL": "step_time"})
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAILED: RuntimeError: failure injected by GPU_CHECK_FAIL=step_time" in run.stdout
    result = json.loads(out.read_text())
    assert list(result["sections"]) == ["step_time", "loader"] and result["failed"] == 1
    assert [row["status"] for row in result["sections"]["step_time"]["rows"]] == ["FAILED"]
    loader = rows_of(result, "loader")  # the next section still ran, without the step time to compare with
    assert {row["status"] for row in loader.values()} == {"ok"}
    assert "no step time measured" in loader["0 workers"]["detail"]


@pytest.fixture(scope="module")
def gpu_check_module():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return gpu_check


@pytest.fixture
def sections_run(gpu_check_module, monkeypatch):
    """The sections replaced by a record of which ran: the checks below come before any work."""
    ran = []

    def run_section(check, name):
        ran.append(name)
        return {"wall_s": 0.0, "budget_s": 1.0, "rows": []}

    monkeypatch.setattr(gpu_check_module, "run_section", run_section)
    return ran


def test_an_unknown_section_is_a_usage_error(gpu_check_module, capsys):
    with pytest.raises(SystemExit) as stop:  # exit 2 before anything runs, not a failed check
        gpu_check_module.main(["--device", "cpu", "--sections", "rerun,bogus"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "unknown section(s) ['bogus']" in err and "step_time" in err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--help" in err


@pytest.mark.parametrize(
    "device, says",
    [
        ("cuda:0", "no CUDA device" if not torch.cuda.is_available() else None),
        ("cuda:7", "'cuda:7' asked for, but this machine has"),
        ("bogus", "unknown device 'bogus': use auto, cpu or cuda[:N]"),
    ],
)
def test_a_device_this_machine_lacks_is_one_error_line_before_any_work(
    gpu_check_module, sections_run, capsys, device, says
):
    if says is None:
        pytest.skip("this machine has a GPU")
    assert gpu_check_module.main(["--device", device, "--tiny"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
    assert out == "" and sections_run == []  # not even the header


def test_a_bad_out_is_one_error_line_before_any_work(gpu_check_module, sections_run, capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    for out, says in ((tmp_path, "is a folder"), (tmp_path / "file" / "r.json", "is not a folder this user can")):
        assert gpu_check_module.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 2
        stdout, err = capsys.readouterr()
        assert err.startswith("error: --out ") and err.count("\n") == 1 and says in err, err
        assert stdout == "" and sections_run == []
    out = tmp_path / "new" / "folder" / "r.json"  # folders still to be made are made, at the end
    assert gpu_check_module.main(["--device", "cpu", "--tiny", "--sections", "rerun", "--out", str(out)]) == 0
    assert sections_run == ["rerun"] and json.loads(out.read_text())["sections"]["rerun"]["rows"] == []
