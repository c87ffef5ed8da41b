"""Issue 34, root causes 1 and 2: a Ctrl-C is never swallowed (the study stops within one trial),
and a resumed study gives the answer an uninterrupted one gives (the samplers draw from the study
seed and the trial's job, not from the process)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from helpers import finished, jobs, tiny_recipe
from optuna.trial import TrialState

import fusionsearch as fs
from fusionsearch.search import StudySettings, prepare_study, run_worker
from fusionsearch.search.queueing import pop
from fusionsearch.search.requeue import retry
from fusionsearch.search.study import make_sampler

ROOT = Path(__file__).resolve().parents[2]


class _Finaliser:
    """Raises Ctrl-C's exception when collected: Python cannot propagate it from there."""

    def __del__(self):
        raise KeyboardInterrupt


def _settings(url, **kw):
    return StudySettings(**{"study": "r", "storage": url, "trials": 2, "baselines": ["single"], "pruner": "none", **kw})


# ---- root cause 1: an interrupt is acted on at the next safe point ---------------------------------


def test_ctrl_c_in_a_finaliser_after_a_trial_stops_the_study_before_the_next_one(tmp_path):
    """The review's case: SIGINT landed in a ``WeakKeyDictionary`` callback right after
    ``single: done``, and the study ran to its end."""
    url = f"sqlite:///{tmp_path}/f.db"
    study = prepare_study(tiny_recipe(), _settings(url))

    def log(line):
        if line.startswith("single: done"):
            _Finaliser()

    with pytest.raises(KeyboardInterrupt):
        run_worker("r", url, device="cpu", log=log)
    assert sorted(jobs(finished(study))) == ["single", "warmstart"]  # no slot started
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]


def test_ctrl_c_in_a_finaliser_during_training_stops_the_trial_at_the_next_step(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/g.db"
    study = prepare_study(tiny_recipe(steps=8), _settings(url))
    steps, original = [], fs.tasks.dense.Normals.loss

    def loss(self, pred, target):
        steps.append(1)
        if len(steps) == 2:  # the warm start's second step
            _Finaliser()
        return original(self, pred, target)

    monkeypatch.setattr(fs.tasks.dense.Normals, "loss", loss)
    with pytest.raises(KeyboardInterrupt):
        run_worker("r", url, device="cpu")
    assert len(steps) == 2  # no step after the interrupt
    (t,) = study.get_trials(states=(TrialState.FAIL,))
    assert (t.user_attrs["baseline"], t.user_attrs["fail_kind"]) == ("warmstart", "interrupted")
    assert "warmstart" in [c.user_attrs.get("baseline") for c in study.get_trials(states=(TrialState.WAITING,))]


def test_ctrl_c_while_a_trial_is_claimed_queues_it_again(tmp_path, monkeypatch, default_sigint):
    """SIGINT between the claim in the database and the code that fails a stopped trial left it
    RUNNING with no heartbeat: the next run waited for it for ever."""
    url = f"sqlite:///{tmp_path}/h.db"
    study = prepare_study(tiny_recipe(), _settings(url))
    real, fired = optuna.Trial.__init__, []

    def claimed(self, st, trial_id):
        if not fired:
            fired.append(trial_id)
            os.kill(os.getpid(), signal.SIGINT)
            signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a point where Python runs the handler
        real(self, st, trial_id)

    monkeypatch.setattr(optuna.Trial, "__init__", claimed)
    with pytest.raises(KeyboardInterrupt):
        run_worker("r", url, device="cpu")
    assert not study.get_trials(states=(TrialState.RUNNING,))
    (t,) = study.get_trials(states=(TrialState.FAIL,))
    assert (t.user_attrs["baseline"], t.user_attrs["fail_kind"]) == ("warmstart", "interrupted")


# ---- root cause 2: the samplers' state after a resume ------------------------------------------------


def _drive(url: str, settings: StudySettings, stop: tuple[int, str] | None = None) -> bool:
    """Run the queued slots of a toy study in one "process" (a fresh sampler, as ``load_study``
    makes); ``stop`` = (slot, after which parameter): Ctrl-C there, the trial queued again."""
    study = optuna.load_study(study_name="toy", storage=url, sampler=make_sampler(settings, tiny_recipe()))
    while (trial := pop(study)) is not None:
        slot = trial.user_attrs["slot"]
        x = trial.suggest_float("x", -2.0, 2.0)
        if stop == (slot, "x"):
            return _interrupted(study, trial)
        u = trial.suggest_categorical("u", ["a", "b", "c"])
        if stop == (slot, "u"):
            return _interrupted(study, trial)
        values = [-((x - 0.3) ** 2) + 0.5 * (u == "b"), abs(x)][: len(study.directions)]
        study.tell(trial, values)
    return True


def _interrupted(study, trial) -> bool:
    trial.set_user_attr("fail_kind", "interrupted")
    retry(study, study.tell(trial, state=TrialState.FAIL))
    return False


def _toy(url: str, settings: StudySettings, stop=None) -> dict[int, tuple]:
    study = optuna.create_study(study_name="toy", storage=url, directions=settings.directions())
    for i in range(settings.trials):
        study.enqueue_trial({}, user_attrs={"slot": i})
    if not _drive(url, settings, stop):
        _drive(url, settings)  # the same command again, in a new process
    return {t.user_attrs["slot"]: (t.params, t.values) for t in study.get_trials(states=(TrialState.COMPLETE,))}


@pytest.mark.parametrize(
    "sampler, objectives", [("tpe", ["delta_m"]), ("nsga2", ["delta_m", "params"]), ("random", ["delta_m"])]
)
def test_a_resumed_study_samples_what_an_uninterrupted_one_does(tmp_path, sampler, objectives):
    settings = StudySettings(trials=9, sampler=sampler, objectives=objectives, seed=3)
    straight = _toy(f"sqlite:///{tmp_path}/straight.db", settings)
    assert len(straight) == 9 and len({str(p) for p, _ in straight.values()}) == 9
    for slot, after in [(1, "u"), (4, "u"), (5, "x"), (6, "u")]:  # TPE's own draws begin at slot 3
        url = f"sqlite:///{tmp_path}/{sampler}-{slot}-{after}.db"
        assert _toy(url, settings, (slot, after)) == straight, (slot, after)


def test_a_plan_is_the_same_in_every_process():
    """Two units placed once each: the plan's own unit (and with it the head input's multiplier)
    was the first of a ``set``, whose order changes with each process's string hashing, so a
    resumed study trained another net for the same drawn choices."""
    script = (
        "from fusionsearch.experiment.space import SearchSpace\n"
        "from fusionsearch.experiment.recipe import load_recipe\n"
        "s = SearchSpace.from_dict(load_recipe('quick').search)\n"
        "units = {'layer3': 'sluice', 'layer4': 'cross_stitch'}\n"
        "mults = {'sluice': 1.0, 'cross_stitch': 2.0, 'sluice_beta': 3.0}\n"
        "p = s._plan(units, ['layer3', 'layer4'], {'init': (0.9, 0.1)}, mults, 'none', False)\n"
        "print(p.unit, p.head_input_lr_mult)\n"
    )
    seen = set()
    for hash_seed in ("0", "1", "2", "3", "4"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        seen.add(out.stdout.strip())
    assert seen == {"sluice 3.0"}  # the first placed of the most placed units


def test_a_resumed_supernet_scoring_scores_the_plans_of_an_uninterrupted_one(tmp_path, monkeypatch):
    import fusionsearch.search.supernet_training as supernet

    def score(sn, path, *a, **k):  # a score that depends on the plan alone, as the real one does
        return sum(len(p) * len(u) for p, u in path.items()) + random.Random(str(sorted(path.items()))).random(), {}

    calls = []

    def stopping(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return score(*a, **k)

    monkeypatch.setattr(supernet, "calibration_images", lambda *a, **k: [])
    points, units = ["act1", "layer1", "layer2", "layer3"], ["none", "nddr", "sluice"]
    sn = SimpleNamespace(
        point_names=points,
        unit_names=units,
        choices=dict.fromkeys(points, units),
        plans=len(units) ** len(points),
        base=SimpleNamespace(plan=SimpleNamespace(shared_prefix=None)),
    )
    exp = fs.experiment.experiment.Experiment(tiny_recipe())
    cfg = dataclasses.replace(exp.recipe.train_config(), progress=False)
    out = {}
    for name, scorer in (("straight", score), ("stopped", stopping)):
        settings = SimpleNamespace(study=name, storage=f"sqlite:///{tmp_path}/{name}.db", seed=5)
        monkeypatch.setattr(supernet, "score_path", scorer)
        try:
            supernet.score_plans(sn, exp, settings, 8, {}, cfg)
        except KeyboardInterrupt:
            supernet.score_plans(sn, exp, settings, 8, {}, cfg)  # the same command again
        scoring = optuna.load_study(study_name=f"{name}:supernet", storage=settings.storage)
        out[name] = [t.user_attrs["path"] for t in scoring.get_trials(states=(TrialState.COMPLETE,))]
    assert len(out["straight"]) == 8 and out["stopped"] == out["straight"]


# ---- both together: Ctrl-C at random points of a 4-trial study, per-trial and supernet mode ------------


def _benchmark():
    spec = importlib.util.spec_from_file_location("interrupt_points", ROOT / "benchmarks" / "interrupt_points.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["trial", "supernet"])
def test_ctrl_c_at_random_points_exits_130_and_the_rerun_matches(tmp_path, mode):
    """Two seeded points per mode (``benchmarks/interrupt_points.py`` runs 20)."""
    bench = _benchmark()
    recipe, reference, span = bench.reference(tmp_path / "ref", mode, confirm=0)
    rng = random.Random(34)
    for i in range(2):
        r = bench.point(tmp_path / f"p{i}", recipe, mode, rng.uniform(0, span), reference)
        assert r["ok"], {k: r[k] for k in ("delay", "sent", "rc", "lines", "late", "rerun", "diff")}
