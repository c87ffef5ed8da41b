"""A full disk is an accident, not the plan's verdict (issue 34, root cause 4): the write it refused
leaves no part file, its trial is queued again, the command stops with one line, and the same
command completes the study once there is space, however often the disk stopped it before.

The full disk is a file-size limit (``RLIMIT_FSIZE``) on the command's process: every write past it
fails with EFBIG, as writes to a full disk fail with ENOSPC (torch's writer reports both alike)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import optuna
import pytest
import torch
import yaml
from helpers import tiny_recipe
from optuna.trial import TrialState

import fusionsearch as fs
from fusionsearch.search.recovery import DISK, MAX_RETRY, PLAN

LIMIT = 1_000_000  # bytes: the database fits, a trained test_resnet pair (about 1.6 MB) does not


def _limited(limit: int | None):
    def apply() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _run(tmp_path, limit: int | None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fusionsearch.cli", "run", "--recipe", "tiny.yaml", "--quiet", "--devices", "cpu"]
    env = {**os.environ, "FUSIONSEARCH_HEARTBEAT": "1"}
    return subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600, preexec_fn=_limited(limit)
    )


@pytest.mark.slow
def test_a_study_stopped_by_a_full_disk_completes_once_there_is_space(tmp_path):
    d = tiny_recipe(steps=2).to_dict()
    d.update(name="tiny", study={"trials": 1, "pruner": "none"}, confirm={"seeds": 0})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(d))
    for _ in range(MAX_RETRY + 1):  # more stops than an accident has retries: a full disk uses none
        full = _run(tmp_path, LIMIT)
        lines = [line for line in full.stderr.splitlines() if line.strip()]
        assert full.returncode == 2, full.stderr
        assert len(lines) == 1 and lines[0].startswith("error: warmstart: a file cannot be written"), lines
        assert "the disk is full or not writable" in lines[0] and "run the same command to resume" in lines[0]
        assert [p.name for p in tmp_path.rglob("*.part")] == []  # no half-written network left behind
    done = _run(tmp_path, None)  # space freed: the same command
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "fusionsearch.db",
        "tiny-test_resnet-seg-normal-report.html",
        "tiny.yaml",
    ]  # no part file, and no lock file beside the database (issue 34, item 14)
    study = optuna.load_study(study_name="tiny-test_resnet-seg-normal", storage=f"sqlite:///{tmp_path}/fusionsearch.db")
    trials = study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.user_attrs["fail_kind"] for t in failed] == [DISK] * (MAX_RETRY + 1)
    assert not any(t.user_attrs.get("fail_kind") == PLAN for t in trials)  # no plan failed for the disk
    finished = [t for t in trials if t.state.is_finished()]
    jobs = sorted(t.user_attrs.get("baseline") or f"slot{t.user_attrs['slot']}" for t in finished)
    assert [j for j in jobs if j != "warmstart"] == ["nddr_default", "shared", "single", "slot0"]
    assert {t.state for t in trials if t.user_attrs.get("baseline") != "warmstart"} == {TrialState.COMPLETE}


def _save_under_limit(path, limit: int) -> str:
    script = (
        "import resource, sys, torch\n"
        "import fusionsearch as fs\n"
        "net = fs.build('test_resnet', {'seg': 3, 'normal': 3}, fs.StitchPlan(at=['layer1']), input_size=(3, 32, 32))\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "try:\n    fs.save(net, sys.argv[1])\n"
        "except BaseException as e:\n"
        "    print(type(e).__name__, getattr(e, 'errno', None), getattr(e, 'filename', None))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("existing", [False, True])
def test_a_network_the_disk_refused_is_an_os_error_naming_it_and_leaves_nothing(tmp_path, existing):
    """torch.save under a full disk raised RuntimeError("unexpected pos ...") and left the
    truncated file; an older file at the path is kept whole."""
    path = tmp_path / "net.pt"
    if existing:
        path.write_bytes(b"the previous network")
    said = _save_under_limit(path, 200_000)
    assert said == f"OSError 27 {path}"  # EFBIG, the file-size limit's errno
    assert sorted(p.name for p in tmp_path.iterdir()) == (["net.pt"] if existing else [])
    if existing:
        assert path.read_bytes() == b"the previous network"


def test_the_artefact_store_writes_whole_files(tmp_path):
    """Optuna's FileSystemArtifactStore wrote straight to the artefact's file: a full disk left it truncated."""
    import io

    from fusionsearch.search.storage import artifact_store

    store = artifact_store("sqlite:///unused.db", tmp_path / "a")
    store.write("x", io.BytesIO(b"12345"))
    assert (tmp_path / "a" / "x").read_bytes() == b"12345"

    class Failing(io.BytesIO):
        def read(self, *a):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as e:
        store.write("y", Failing())
    assert e.value.errno == 28 and e.value.filename == str(tmp_path / "a" / "y")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x"]
    assert torch is not None and fs is not None
