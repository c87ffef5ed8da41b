"""Files a user names are read only if they are regular files under a bound, and an id file is kept
by its content, not its path (issue 34, root causes 7 and 8)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
import yaml
from helpers import tiny_recipe
from typer.testing import CliRunner

from fusionsearch.cli import app
from fusionsearch.data import partial
from fusionsearch.errors import DataError
from fusionsearch.experiment.recipe import load_recipe
from fusionsearch.search import StudySettings, prepare_study, run_worker


def _bounded_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # /dev/zero read by mistake: a MemoryError


def _cli(tmp_path, *args: str, own_process: bool = True) -> tuple[int, str]:
    """Exit code and stderr; in its own process, with bounded memory, where a regression would
    hang or fill the memory (a FIFO, a device), so that it stops that process, not the test run."""
    if not own_process:
        result = CliRunner().invoke(app, list(args))
        return result.exit_code, result.stderr
    cmd = [sys.executable, "-m", "fusionsearch.cli", *args]
    with open(tmp_path / "stderr.txt", "w+") as err:
        quiet = {"stdout": subprocess.DEVNULL, "stderr": err}
        done = subprocess.run(cmd, cwd=tmp_path, timeout=120, preexec_fn=_bounded_memory, **quiet)
        err.seek(0)
        return done.returncode, err.read(1 << 16)


def _input(tmp_path, kind: str) -> str:
    if kind == "fifo":
        os.mkfifo(tmp_path / "ids.fifo")  # reading it blocked for ever
        return str(tmp_path / "ids.fifo")
    if kind == "device":
        return "/dev/zero"  # reading it grew the process to 22 GB
    if kind == "folder":
        (tmp_path / "ids").mkdir()
        return str(tmp_path / "ids")
    with open(tmp_path / "huge.txt", "wb") as f:  # the bound is lowered below: nothing big is read by mistake
        f.truncate(1001)
    return str(tmp_path / "huge.txt")


PROBLEM = {
    "fifo": "not a regular file (a FIFO, socket or device)",
    "device": "not a regular file (a FIFO, socket or device)",
    "folder": "a folder, not a file",
    "huge": "1,001 bytes, over the limit of 1,000",
}


@pytest.mark.parametrize("kind", list(PROBLEM))
def test_an_id_file_that_is_no_regular_file_or_too_big_is_one_line_at_once(tmp_path, kind, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(partial, "MAX_ID_FILE_BYTES", 1000, raising=False)
    if kind == "device" and not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    d = tiny_recipe().to_dict()
    d["name"] = "tiny"
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(d))
    path = _input(tmp_path, kind)
    args = ("run", "--recipe", "tiny.yaml", "--devices", "cpu", "--labelled", f"seg={path}")
    code, err = _cli(tmp_path, *args, own_process=kind in ("fifo", "device"))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0] == f"error: data.labelled.seg: the id file {path!r}: {PROBLEM[kind]}"
    assert not (tmp_path / "fusionsearch.db").exists()  # refused before any study existed


def test_every_user_input_file_goes_through_the_same_check(tmp_path):
    """The recipe, an id file and ``--baseline``'s metrics file: one helper, the same words."""
    os.mkfifo(tmp_path / "f")
    fifo = str(tmp_path / "f")
    with pytest.raises(Exception, match=f"recipe {fifo!r}: not a regular file"):
        load_recipe(fifo)
    code, err = _cli(tmp_path, "train", "--backbone", "test_resnet", "--size", "32", "--steps", "1", "--baseline", fifo)
    assert code == 2 and f"--baseline {fifo!r}: not a regular file" in err, err


def _labelled_study(tmp_path, ids: str):
    (tmp_path / "ids.txt").write_text(ids)
    recipe = tiny_recipe().with_overrides(
        data={"name": "synthetic", "size": 32, "train_length": 16, "val_length": 4, "labelled": {"seg": "ids.txt"}}
    )
    settings = StudySettings(study="ids", storage=f"sqlite:///{tmp_path}/ids.db", trials=1, baselines=["single"])
    return recipe, settings


def test_an_id_file_changed_between_a_stop_and_the_resume_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe, settings = _labelled_study(tmp_path, "0\n1\n2\n")
    study = prepare_study(recipe, settings)
    prepare_study(recipe, settings)  # the same file: the study resumes
    (tmp_path / "ids.txt").write_text("0\n1\n3\n")  # another labelling under the same name
    said = "the id file 'ids.txt' \\(data.labelled.seg\\) has changed since study 'ids' began"
    with pytest.raises(DataError, match=said):
        prepare_study(recipe, settings)
    with pytest.raises(DataError, match=said):  # a worker started on its own reads the file too
        run_worker("ids", settings.storage, device="cpu")
    assert all(t.state.name == "WAITING" for t in study.get_trials())  # nothing trained on the new ids
    (tmp_path / "ids.txt").write_text("0\n1\n2\n")  # the file put back: the study goes on
    prepare_study(recipe, settings)
    assert run_worker("ids", settings.storage, device="cpu", max_trials=1) == 1
