"""``train`` stopped by Ctrl-C says what it left (issue 34, 13): no study, no trial queued again."""

from __future__ import annotations

from typer.testing import CliRunner

from fusionsearch.cli import app

runner = CliRunner()
ARGS = ["train", "--backbone", "test_resnet", "--size", "32", "--train-images", "8", "--val-images", "4"]
ARGS += ["--batch-size", "2", "--steps", "4", "--eval-every", "2"]


def test_a_train_stopped_by_ctrl_c_says_what_was_saved(tmp_path, monkeypatch):
    import fusionsearch.train.trainer as trainer

    real, steps = trainer._train_on, []

    def step(run, batch, n):
        steps.append(n)
        if n == 3:  # after the checkpoint of step 2
            raise KeyboardInterrupt
        return real(run, batch, n)

    monkeypatch.setattr(trainer, "_train_on", step)
    result = runner.invoke(app, ARGS)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 130, result.output
    assert lines == ["interrupted: nothing was saved; give --checkpoint FILE to make a run resumable"]
    ck = tmp_path / "ck.pt"
    result = runner.invoke(app, [*ARGS, "--checkpoint", str(ck)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 130 and ck.is_file(), result.output
    assert lines == [f"interrupted: run the same command to resume from the last step saved in {ck}"]
    steps.clear()
    assert runner.invoke(app, [*ARGS, "--checkpoint", str(ck)]).exit_code == 130  # it resumed, at step 2
    assert steps == [2, 3]
