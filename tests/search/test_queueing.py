"""The queue of trials inside an Optuna storage (``search.queueing``): the order a worker takes
queued trials in, claiming one exactly once (also from several processes, also from a stale
snapshot), finding a dependency, the heartbeat and the reaping of a dead worker's trial, queueing
accidents again (bounded), and the storage lock every claim is taken under.

Plain Optuna studies on SQLite files in ``tmp_path``: no recipe, no net is trained; the two tests
with other processes are marked slow (each process imports torch)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from fusionsearch.search.context import Reference
from fusionsearch.search.jobs import Baseline, Job, WarmStartJob, is_reference
from fusionsearch.search.queueing import (
    Heartbeat,
    find,
    heartbeat_interval,
    pop,
    reap_stale,
    requeue_failed,
    single_metrics,
    stale_possible,
)
from fusionsearch.search.recovery import DEPENDENCY, DEVICE, INFRASTRUCTURE, INTERRUPTED, MAX_RETRY, PLAN
from fusionsearch.search.requeue import retry
from fusionsearch.search.storage import open_storage, queue_lock

ROOT = Path(__file__).resolve().parents[2]
optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/q.db"


def _study(url: str, heartbeat: bool = False) -> optuna.Study:
    storage = open_storage(url, heartbeat=heartbeat, on_stale=retry)  # as a study's (``study.load_study``)
    return optuna.create_study(study_name="q", storage=storage, load_if_exists=True)


def _queue(study: optuna.Study, *jobs: dict) -> None:
    for attrs in jobs:
        study.enqueue_trial({}, user_attrs=attrs)


def _job(t: optuna.trial.FrozenTrial | optuna.Trial) -> str:
    a = t.user_attrs
    if "confirm" in a:
        return f"confirm {a['confirm']} seed {a['seed']}"
    return a.get("baseline") or f"slot{a['slot']}"


def _done(study: optuna.Study, attrs: dict, value: float = 0.0) -> None:
    study.add_trial(optuna.create_trial(value=value, user_attrs=attrs))


def _states(study: optuna.Study) -> list[tuple[str, str]]:
    return [(_job(t), t.state.name) for t in study.get_trials()]


# ---- claiming ------------------------------------------------------------------------------------


def test_pop_takes_the_warm_start_then_the_references_baselines_slots_and_confirmations(url):
    study = _study(url)
    _queue(
        study,
        {"confirm": "nddr", "seed": 1, "source": 0},
        {"slot": 1},
        {"confirm": "single", "seed": 1},
        {"baseline": "shared"},
        {"slot": 0},
        {"baseline": "single"},
        {"baseline": "warmstart"},
    )
    order = []
    while (trial := pop(study)) is not None:
        assert isinstance(trial, optuna.Trial)
        assert study.get_trials()[trial.number].state == TrialState.RUNNING  # claimed in the storage
        order.append(_job(trial))
    assert order == [
        "warmstart",
        "single",
        "shared",
        "slot1",  # slots in the order they were queued (trial number), not by slot
        "slot0",
        "confirm single seed 1",  # each seed's reference before its plans
        "confirm nddr seed 1",
    ]
    assert {state for _, state in _states(study)} == {"RUNNING"}
    assert pop(study) is None  # nothing WAITING is left: running trials are never taken twice


def test_pop_with_a_match_takes_only_what_it_picks_and_leaves_the_rest_waiting(url):
    study = _study(url)
    _queue(study, {"baseline": "warmstart"}, {"slot": 0}, {"slot": 1})
    trial = pop(study, lambda t: t.user_attrs.get("slot") == 1)
    assert trial is not None and _job(trial) == "slot1"
    assert pop(study, lambda t: t.user_attrs.get("slot") == 1) is None
    assert _states(study) == [("warmstart", "WAITING"), ("slot0", "WAITING"), ("slot1", "RUNNING")]


def test_pop_never_takes_a_finished_trial_and_skips_one_claimed_after_its_snapshot(url, monkeypatch):
    """Between reading the WAITING trials and claiming one, another worker (one not under the lock)
    may take or finish it: that trial is skipped and the next one claimed."""
    study = _study(url)
    _queue(study, {"baseline": "warmstart"}, {"baseline": "single"}, {"slot": 0})
    other = _study(url)  # a second worker on the same storage
    storage = study._storage
    read = storage.get_all_trials

    def snapshot_then_others_act(*args, **kwargs):
        trials = read(*args, **kwargs)
        if kwargs.get("states") == (TrialState.WAITING,):
            first, second = sorted(trials, key=lambda t: t.number)[:2]
            other._storage.set_trial_state_values(first._trial_id, TrialState.RUNNING)
            other._storage.set_trial_state_values(first._trial_id, TrialState.COMPLETE, [0.0])  # finished
            other._storage.set_trial_state_values(second._trial_id, TrialState.RUNNING)  # taken
        return trials

    monkeypatch.setattr(storage, "get_all_trials", snapshot_then_others_act)
    trial = pop(study)
    assert trial is not None and _job(trial) == "slot0"
    monkeypatch.undo()
    assert _states(study) == [("warmstart", "COMPLETE"), ("single", "RUNNING"), ("slot0", "RUNNING")]


_POPPER = """
import json, sys, time
from pathlib import Path
import optuna
from fusionsearch.search.queueing import pop
from fusionsearch.search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.ERROR)
url, ready, go = sys.argv[1:4]
study = optuna.load_study(study_name="q", storage=open_storage(url, heartbeat=False))
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.01)
got = []
while (trial := pop(study)) is not None:
    got.append(trial.number)
    study.tell(trial, 0.0)
print(json.dumps(got))
"""


@pytest.mark.slow
def test_workers_in_several_processes_claim_every_queued_trial_exactly_once(url, tmp_path):
    study = _study(url)
    _queue(study, *({"slot": i} for i in range(24)))
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _POPPER, url, str(tmp_path / f"ready{i}"), str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):  # both imported and connected
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.stderr for p in procs]
        time.sleep(0.05)
    go.touch()  # start together: they contend for the same trials
    claimed = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        claimed.append(json.loads(out))
    assert sorted(claimed[0] + claimed[1]) == list(range(24))  # every trial, none twice
    assert {t.state for t in study.get_trials()} == {TrialState.COMPLETE}
    assert len(study.get_trials()) == 24  # and no trial was created by a claim


# ---- the lock ------------------------------------------------------------------------------------

_HOLDER = """
import sys, time
from pathlib import Path
from fusionsearch.search.requeue import retry
from fusionsearch.search.storage import open_storage, queue_lock

url, held, released, hold_s = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
storage = open_storage(url, heartbeat=False)
with queue_lock(storage):
    held.touch()
    time.sleep(hold_s)
    released.write_text(repr(time.time()))
"""


@pytest.mark.slow
def test_a_claim_waits_while_another_process_holds_the_queue_lock(url, tmp_path):
    study = _study(url)
    _queue(study, {"slot": 0})
    held, released = tmp_path / "held", tmp_path / "released"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, url, str(held), str(released), "1.5"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not held.exists():
        assert time.monotonic() < deadline and holder.poll() is None, holder.stderr
        time.sleep(0.02)
    trial = pop(study)
    returned = time.time()
    assert released.exists(), "pop claimed a trial while another process held the lock"
    assert float(released.read_text()) <= returned
    assert trial is not None and _job(trial) == "slot0"
    assert holder.wait(timeout=60) == 0


def test_the_queue_lock_is_reentrant_within_a_process(url):
    """What runs under the lock (failing a trial, then queueing its copy) may claim under it again."""
    study = _study(url)
    _queue(study, {"slot": 0})
    finished = threading.Event()

    def claim_under_the_lock() -> None:
        with queue_lock(study._storage), queue_lock(study._storage):
            assert pop(study) is not None
        finished.set()

    thread = threading.Thread(target=claim_under_the_lock, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert finished.is_set(), "pop under queue_lock deadlocked"
    assert _states(study) == [("slot0", "RUNNING")]


# ---- finding what a trial needs ------------------------------------------------------------------


def test_find_returns_the_first_complete_match_or_the_newest_and_whether_one_may_come(url):
    study = _study(url)
    warm = lambda t: isinstance(Job.of(t), WarmStartJob)
    assert find(study, warm) == (None, False)  # nothing of it: nothing can come
    _queue(study, {"baseline": "warmstart"})
    assert find(study, warm) == (None, True)  # queued
    trial = pop(study)
    assert trial is not None
    assert find(study, warm) == (None, True)  # running
    study.tell(trial, state=TrialState.FAIL)
    assert find(study, warm) == (None, False)  # failed: nothing comes unless it is queued again
    _done(study, {"baseline": "warmstart", "n": 1})
    _done(study, {"baseline": "warmstart", "n": 2})
    first, pending = find(study, warm)
    assert (first.user_attrs["n"], pending) == (1, False)
    newest, pending = find(study, warm, newest=True)  # a warm start trained again stands in for the old one
    assert (newest.user_attrs["n"], pending) == (2, False)
    _queue(study, {"baseline": "warmstart"})  # a complete one wins over one still queued
    assert find(study, warm, newest=True)[0].user_attrs["n"] == 2


def test_the_reference_of_the_search_and_of_each_confirmation_seed(url):
    study = _study(url)
    assert single_metrics(study) == (None, False)
    _queue(study, {"baseline": "single"})
    assert single_metrics(study) == (None, True)
    _done(study, {"confirm": "single", "seed": 7, "metrics": {"a": {"acc": 0.5}}})
    ref, pending = single_metrics(study, confirm=True, seed=7)
    assert ref == {"metrics": {"a": {"acc": 0.5}}, "evals": []} and not pending
    assert single_metrics(study, confirm=True, seed=8) == (None, False)  # another seed's is not it
    assert single_metrics(study) == (None, True)  # nor the search's
    evals = [{"step": 2, "metrics": {"a": {"acc": 0.25}}}]
    _done(study, {"baseline": "single", "metrics": {"a": {"acc": 0.75}}, "evals": evals})
    assert single_metrics(study) == ({"metrics": {"a": {"acc": 0.75}}, "evals": evals}, False)
    frozen = study.get_trials()
    assert [is_reference(Reference())(t) for t in frozen] == [True, False, True]  # in any state
    assert [is_reference(Reference(confirm=True, seed=7))(t) for t in frozen] == [False, True, False]
    assert [Job.of(t) == Baseline("single") for t in frozen] == [True, False, True]


# ---- heartbeats and dead workers -----------------------------------------------------------------


def test_a_beating_trial_is_never_reaped_and_a_silent_one_is_failed_and_copied(url, monkeypatch):
    monkeypatch.setenv("FUSIONSEARCH_HEARTBEAT", "1")
    monkeypatch.setenv("FUSIONSEARCH_GRACE", "1")
    study = _study(url, heartbeat=True)
    assert heartbeat_interval(study._storage) == 1 and stale_possible(study)
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params={"x": 0.5},
            distributions={"x": FloatDistribution(0, 1)},
            user_attrs={"slot": 3},
        )
    )
    trial = pop(study)
    assert trial is not None
    with Heartbeat(study._storage, trial._trial_id) as beat:
        assert beat.thread is not None and beat.thread.is_alive()
        time.sleep(2.5)  # longer than the grace period: only the beats keep it alive
        reap_stale(study)
        assert _states(study) == [("slot3", "RUNNING")]
    assert not beat.thread.is_alive()  # stopped with the trial
    time.sleep(1.5)  # the worker is silent now, as a killed one is
    reap_stale(study)
    dead, copy = study.get_trials()
    assert dead.state == TrialState.FAIL and copy.state == TrialState.WAITING
    assert copy.user_attrs == {"slot": 3} and copy.params == {"x": 0.5}
    assert copy.system_attrs["failed_trial"] == dead.number and copy.system_attrs["retry_history"] == [dead.number]
    reap_stale(study)
    assert len(study.get_trials()) == 2  # reaped once
    assert requeue_failed(study) == 0  # the heartbeat's copy stands in for it: never a second one


def test_a_claimed_trial_without_a_heartbeat_is_never_taken_for_a_dead_workers(url, monkeypatch):
    monkeypatch.setenv("FUSIONSEARCH_HEARTBEAT", "1")
    monkeypatch.setenv("FUSIONSEARCH_GRACE", "1")
    study = _study(url, heartbeat=True)
    _queue(study, {"slot": 0})
    assert pop(study) is not None
    time.sleep(1.5)
    reap_stale(study)  # Optuna reaps trials whose last beat is old, not trials that never beat
    assert _states(study) == [("slot0", "RUNNING")]


def test_without_heartbeats_nothing_beats_and_nothing_is_reaped(url):
    study = _study(url, heartbeat=False)
    assert heartbeat_interval(study._storage) is None and not stale_possible(study)
    _queue(study, {"slot": 0})
    trial = pop(study)
    assert trial is not None
    with Heartbeat(study._storage, trial._trial_id) as beat:
        assert beat.thread is None
    reap_stale(study)
    assert _states(study) == [("slot0", "RUNNING")]


class _FlakyStorage:
    """A storage whose heartbeat writes fail now and then (a locked database, a dropped link)."""

    def __init__(self) -> None:
        self.beats: list[int] = []
        self.calls = 0

    def get_heartbeat_interval(self) -> float:
        return 0.02

    def record_heartbeat(self, trial_id: int) -> None:
        self.calls += 1
        if self.calls in (2, 3):
            raise OSError("database is locked")
        self.beats.append(trial_id)


def test_a_missed_beat_is_retried_on_the_next_tick_and_beats_stop_with_the_trial():
    storage = _FlakyStorage()
    with Heartbeat(storage, 7) as beat:
        deadline = time.monotonic() + 30
        while len(storage.beats) < 4:
            assert time.monotonic() < deadline and beat.thread is not None and beat.thread.is_alive()
            time.sleep(0.01)
    calls = storage.calls
    time.sleep(0.1)
    assert storage.calls == calls  # no beat after the trial ended
    assert set(storage.beats) == {7} and calls >= 6  # the two failed writes did not stop the thread


# ---- accidents queued again ----------------------------------------------------------------------


def _failed(study: optuna.Study, kind: str | None, **attrs) -> None:
    user_attrs = {**attrs, "fail_reason": "boom", "metrics": {"a": {"acc": 0.1}}, "step": 2}
    if kind is not None:
        user_attrs["fail_kind"] = kind
    study.add_trial(
        optuna.create_trial(
            state=TrialState.FAIL,
            params={"x": 0.25},
            distributions={"x": FloatDistribution(0, 1)},
            user_attrs=user_attrs,
        )
    )


def test_requeue_failed_copies_each_accident_once_with_its_identity_and_never_a_plan_failure(url):
    study = _study(url)
    _failed(study, INTERRUPTED, slot=0)
    _failed(study, PLAN, slot=1)
    _failed(study, DEPENDENCY, baseline="single")
    _failed(study, DEVICE, confirm="nddr", seed=3, source=5)
    _failed(study, INFRASTRUCTURE, slot=2, keep_net=True)
    _failed(study, None, slot=4)  # no kind recorded (e.g. failed by Optuna itself): not an accident we know
    _done(study, {"slot": 5})
    study.add_trial(optuna.create_trial(state=TrialState.PRUNED, user_attrs={"slot": 6}))
    assert requeue_failed(study) == 4
    assert requeue_failed(study) == 0  # each accident has its copy now
    copies = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert [t.user_attrs for t in copies] == [
        {"slot": 0},
        {"baseline": "single"},
        {"confirm": "nddr", "seed": 3, "source": 5},
        {"slot": 2, "keep_net": True},
    ]  # what the run wrote (reason, kind, metrics, step) is not copied
    assert [t.system_attrs["failed_trial"] for t in copies] == [0, 2, 3, 4]
    assert [t.system_attrs["retry_history"] for t in copies] == [[0], [2], [3], [4]]
    assert all(t.params == {"x": 0.25} for t in copies)  # the same plan


def test_an_accident_comes_back_at_most_max_retry_times(url):
    study = _study(url)
    _failed(study, INTERRUPTED, slot=0)
    for _ in range(MAX_RETRY):
        assert requeue_failed(study) == 1
        copy = pop(study)
        assert copy is not None and copy.user_attrs == {"slot": 0}
        copy.set_user_attr("fail_kind", INTERRUPTED)
        study.tell(copy, state=TrialState.FAIL)
    assert requeue_failed(study) == 0  # out of retries: failed for good
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * (MAX_RETRY + 1)
    assert trials[-1].system_attrs["retry_history"] == list(range(MAX_RETRY))
    assert pop(study) is None
