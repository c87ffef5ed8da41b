"""Storages: credentials, and every storage kind behind one contract."""

from __future__ import annotations

import time

import pytest
from helpers import jobs, tiny_recipe
from optuna.trial import TrialState

from fusionsearch.search import StudySettings, prepare_study
from fusionsearch.search.storage import redact


def test_passwords_are_never_printed():
    assert redact("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"


STORAGE_MODES = ["sqlite", "journal", "postgresql"]  # as Optuna's tests' STORAGE_MODES


@pytest.fixture(params=STORAGE_MODES)
def storage_url(request, tmp_path, monkeypatch):
    """Every storage kind fusionsearch supports, behind one URL."""
    monkeypatch.chdir(tmp_path)  # artefacts of server storages go to ./fusionsearch-artifacts
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    if request.param == "journal":
        return f"journal:{tmp_path}/s.log"
    return request.getfixturevalue("postgres")


def test_every_storage_queues_once_pops_in_order_and_requeues_accidents(storage_url):
    from fusionsearch.search.queueing import pop, requeue_failed
    from fusionsearch.search.recovery import INTERRUPTED

    settings = StudySettings(study="st", storage=storage_url, trials=2)
    study = prepare_study(tiny_recipe(), settings)
    prepare_study(tiny_recipe(), settings)  # the same command again adds nothing
    assert sorted(jobs(study.get_trials())) == ["nddr_default", "shared", "single", "slot0", "slot1", "warmstart"]
    order = []
    while (trial := pop(study)) is not None:
        order.append(trial.user_attrs.get("baseline") or f"slot{trial.user_attrs['slot']}")
        if order[-1] == "slot1":
            trial.set_user_attr("fail_kind", INTERRUPTED)
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, 0.0)
    assert order[:2] == ["warmstart", "single"] and order[-2:] == ["slot0", "slot1"]
    assert requeue_failed(study) == 1 and requeue_failed(study) == 0  # one copy, once
    copy = pop(study)
    assert copy is not None and copy.user_attrs["slot"] == 1 and "fail_kind" not in copy.user_attrs
    assert redact(storage_url) == storage_url  # no password in these URLs: nothing to hide


# ---- issue 34: the same driver check on every command, driver errors masked, no lock file left ----

MYSQL = "mysql+pymysql://u:pw@127.0.0.1:1/db"
STORAGE_COMMANDS = [
    ["run", "--backbone", "test_resnet", "--size", "32", "--devices", "cpu"],
    ["compare", "--devices", "cpu"],
    ["trials", "--study", "x"],
    ["worker", "--study", "x", "--device", "cpu"],
    ["report", "--study", "x"],
    ["best", "--study", "x"],
    ["dashboard"],
]


@pytest.mark.parametrize("args", STORAGE_COMMANDS, ids=lambda a: a[0])
def test_every_command_names_a_missing_database_driver_in_one_line(args, tmp_path, monkeypatch):
    """``run`` and ``compare`` met the missing driver inside SQLAlchemy: ModuleNotFoundError, exit 1."""
    import importlib.util

    from typer.testing import CliRunner

    from fusionsearch.cli import app

    if importlib.util.find_spec("pymysql") is not None:
        pytest.skip("pymysql is installed here")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [*args, "--storage", MYSQL])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0] == (
        "error: storage mysql+pymysql://u:***@127.0.0.1:1/db: its database driver is not installed (No module"
        " named 'pymysql'); install it (PostgreSQL: pip install 'fusionsearch[postgres]') or name an installed"
        " one in the URL"
    )
    assert list(tmp_path.iterdir()) == []  # no database, lock or artefact folder for a URL that cannot work


def test_a_drivers_error_never_shows_a_piece_of_the_password():
    """An unescaped @ in the password: psycopg took ``TER2pw@127.0.0.1`` for the host and said so."""
    import importlib.util

    from typer.testing import CliRunner

    from fusionsearch.cli import app

    url = "postgresql+psycopg://u:HUN@TER2pw@127.0.0.1:1/db"
    if importlib.util.find_spec("psycopg") is not None:  # the driver's own words
        result = CliRunner().invoke(app, ["trials", "--study", "x", "--storage", url])
        assert result.exit_code == 2, result.output
        assert "TER2pw" not in result.output and "HUN" not in result.output, result.output
        assert "u:***@" in result.output  # the URL is still named
    from fusionsearch.search.credentials import mask

    driver = "failed to resolve host 'TER2pw@127.0.0.1': [Errno -2] Name or service not known (HUN@TER2pw)"
    assert mask(driver, url) == "failed to resolve host '***@127.0.0.1': [Errno -2] Name or service not known (***)"
    assert mask("password p%40ss is wrong", "postgresql://u:p%40ss@h/db") == "password *** is wrong"
    assert mask("reached p@ss at host", "postgresql://u:p%40ss@h/db") == "reached *** at host"  # as decoded
    assert mask("sslpassword: k3yfile!", "postgresql://h/db?sslpassword=k3yfile!") == "sslpassword: ***"


def _count(url: str, counter: str, rounds: int) -> None:
    from fusionsearch.search.storage import study_lock

    for _ in range(rounds):
        with study_lock(url):
            with open(counter) as f:
                n = int(f.read())
            time.sleep(0.001)  # a window for another process to read the same n
            with open(counter, "w") as f:
                f.write(str(n + 1))


def test_the_lock_file_is_gone_when_the_last_holder_leaves_and_still_excludes(tmp_path):
    """Every study left an empty FILE.db.fusionsearch-lock beside the user's database. The holder
    now removes it; processes that waited on the removed file take the lock again on the new one,
    so four processes adding one under the lock 200 times each still count to 800."""
    import multiprocessing

    url = f"sqlite:///{tmp_path}/s.db"
    prepare_study(tiny_recipe(), StudySettings(study="st", storage=url, trials=1))
    assert not (tmp_path / "s.db.fusionsearch-lock").exists()
    counter = tmp_path / "n.txt"
    counter.write_text("0")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_count, args=(url, str(counter), 200)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * 4
    assert counter.read_text() == "800"
    assert not (tmp_path / "s.db.fusionsearch-lock").exists()


def test_a_failed_trials_stored_reason_never_shows_a_piece_of_the_password(tmp_path):
    """The reason a trial failed is kept in the study and shown by ``trials`` on any machine: a
    driver's error in it is masked when it is stored and again when it is read."""
    import optuna

    from fusionsearch.report.leaderboard import trial_rows
    from fusionsearch.search.credentials import remember
    from fusionsearch.search.recovery import INFRASTRUCTURE
    from fusionsearch.search.worker import _fail

    remember("postgresql+psycopg://u:HUN@TER2pw@127.0.0.1:1/db")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    _fail(study, study.ask(), "could not reach 'TER2pw@127.0.0.1'", INFRASTRUCTURE)
    raw = study.ask()
    raw.set_user_attr("fail_reason", "an old reason: HUN@TER2pw")  # stored before reasons were masked
    study.tell(raw, state=optuna.trial.TrialState.FAIL)
    stored = [t.user_attrs["fail_reason"] for t in study.get_trials()]
    assert stored[0] == "could not reach '***@127.0.0.1'"
    assert [r["reason"] for r in trial_rows(study)] == ["could not reach '***@127.0.0.1'", "an old reason: ***"]


def test_a_journal_storage_is_locked_like_a_database_file(tmp_path):
    """``queue_lock`` on a journal storage holds the journal's lock file (it used to lock nothing:
    the file was looked for one wrapper too deep, so re-queueing there was unlocked)."""
    from fusionsearch.search.storage import open_storage, queue_lock, storage_url

    log = tmp_path / "study.log"
    storage = open_storage(f"journal:{log}")
    assert storage_url(storage) == f"journal:{log}"
    with queue_lock(storage):
        assert (tmp_path / "study.log.fusionsearch-lock").exists()
    assert not (tmp_path / "study.log.fusionsearch-lock").exists()
