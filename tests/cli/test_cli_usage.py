"""The option parser's errors are one ``error:`` line naming ``--help`` with exit 2, like every
other error a user can cause; ``--leaf`` per column."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from fusionsearch.cli import app

runner = CliRunner()

USAGE_ERRORS = [
    (["worker", "--worker-index", "abc"], "Invalid value for '--worker-index'", "worker --help"),
    (["run", "--deterministic", "false"], "unexpected extra argument", "run --help"),
    (["run", "--trials"], "'--trials' requires an argument", "--help"),
    (["run", "--trials", "many"], "Invalid value for '--trials'", "run --help"),
    (["build"], "Missing option '--backbone'", "build --help"),
    (["data", "check"], "Missing argument 'path'", "data check --help"),
    (["nosuch"], "No such command 'nosuch'", "--help"),
    (["--bogus"], "No such option: --bogus", "--help"),
]


@pytest.mark.parametrize("args, says, hint", USAGE_ERRORS)
def test_a_usage_error_is_one_error_line_and_exit_2(args, says, hint):
    result = runner.invoke(app, args, terminal_width=60)  # narrow: click's box wrapped its message
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and says in lines[0] and lines[0].endswith(f"{hint})"), lines[0]


def test_help_is_still_help():
    assert runner.invoke(app, ["run", "--help"]).exit_code == 0
    result = runner.invoke(app, [])  # a group named alone prints its help, as before
    assert "Usage:" in result.output and "error:" not in result.output


def test_leaf_per_column(tmp_path):
    out = tmp_path / "n.pt"
    build = ["build", "-b", "test_resnet", "--tasks", "seg:3,normal:3", "--at", "layer2", "--input-size", "3,32,32"]
    result = runner.invoke(app, [*build, "--out", str(out), "--leaf", "BasicBlock", "--leaf", "seg=layer1.0"])
    assert result.exit_code == 0, result.output
    saved = torch.load(out, weights_only=True)["leaf"]
    assert saved == {"seg": ["BasicBlock", "layer1.0"], "normal": ["BasicBlock"]}
    result = runner.invoke(app, [*build, "--out", str(out), "--leaf", "BasicBlock"])  # the plain form: every column
    assert result.exit_code == 0 and torch.load(out, weights_only=True)["leaf"] == ["BasicBlock"]
    for args, says in (
        ([*build, "--out", str(out), "--leaf", "depth=layer1"], "names column 'depth', but the columns are"),
        (["inspect", "-b", "test_resnet", "--leaf", "seg=layer1"], "but one backbone has no columns"),
        (["inspect", "-b", "test_resnet", "--leaf", "=layer1"], "--leaf takes a module class or path, or TASK=NAME"),
    ):
        result = runner.invoke(app, args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and says in lines[0], result.stderr
