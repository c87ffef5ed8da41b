"""The worker: queue slots, failures, resumes, several processes, heartbeats, grids."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from helpers import finished, grid_recipe, jobs, tiny_recipe, worker_cmd
from optuna.trial import TrialState
from typer.testing import CliRunner

import fusionsearch as fs
from fusionsearch.cli import app
from fusionsearch.report.html import write_report
from fusionsearch.search import StudySettings, load_study, prepare_study, run_worker

runner = CliRunner()


def test_injected_failures_fail_one_trial_each_and_the_study_goes_on(small_study):
    study, url, ran = small_study
    assert ran == 8  # the warm start, 3 baselines, 4 slots
    trials = study.get_trials()
    failed = {t.user_attrs["slot"]: t.user_attrs["fail_reason"] for t in trials if t.state == TrialState.FAIL}
    assert set(failed) == {0, 1}
    assert failed[0].startswith("out of memory: CUDA out of memory")
    assert "NonFiniteLossError" in failed[1] and "nan" in failed[1]
    assert len(finished(study)) == 6  # warm start + 3 baselines + slots 2, 3
    result = runner.invoke(app, ["trials", "--study", "s", "--storage", url], terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "out of memory" in result.output and "NonFiniteLossError" in result.output


def test_baselines_and_delta_m(small_study):
    study, _, _ = small_study
    by = {t.user_attrs.get("baseline"): t for t in study.get_trials() if t.user_attrs.get("baseline")}
    assert set(by) == {"warmstart", "single", "shared", "nddr_default"}
    assert by["single"].values == [0.0]
    # the warm start trains the full budget; everything else starts from it and fine-tunes
    assert by["warmstart"].user_attrs["steps"] == 4 and by["warmstart"].user_attrs["column_init"] == "scratch"
    for name in ("single", "shared", "nddr_default"):
        assert by[name].user_attrs["steps"] == 1 and by[name].user_attrs["column_init"] == "single"
    assert by["single"].user_attrs["plan"]["at"] == []
    assert by["shared"].user_attrs["plan"]["shared_prefix"] == "layer4"
    # no multiplier in the plan: it trains at the optimiser's (conventions.py: x1 under the recipe's AdamW)
    assert by["nddr_default"].user_attrs["plan"]["unit_args"] == {"init": [0.9, 0.1]}
    single = by["single"].user_attrs["metrics"]
    dirs = {t: dict(fs.get_task(t, out_channels=3 if t == "normal" else 6).metrics) for t in single}
    for t in finished(study):
        if t.state == TrialState.COMPLETE and t.user_attrs.get("baseline") != "warmstart":
            assert t.values[0] == pytest.approx(fs.delta_m(t.user_attrs["metrics"], single, dirs, skip_zero=True))


def test_rerun_resumes_instead_of_restarting(small_study):
    study, url, _ = small_study
    before = len(study.get_trials())
    prepare_study(tiny_recipe(), StudySettings(study="s", storage=url, trials=4))
    assert run_worker("s", url, device="cpu") == 0
    assert len(study.get_trials()) == before
    with pytest.raises(fs.FusionSearchError, match="different recipe"):
        prepare_study(tiny_recipe(steps=6), StudySettings(study="s", storage=url, trials=4))
    with pytest.raises(fs.FusionSearchError, match="no study 'x'.*studies there: s"):
        load_study("x", url)


def _two_workers(url: str, study: str, n: int) -> None:
    prepare_study(tiny_recipe(), StudySettings(study=study, storage=url, trials=n, pruner="none"))
    procs = [
        subprocess.Popen(worker_cmd(study, url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(outs)
    assert not any("locked" in o for o in outs), outs
    st = optuna.load_study(study_name=study, storage=fs.search.storage.open_storage(url, heartbeat=False))
    trials = st.get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials), [(t.number, t.state) for t in trials]
    expected = ["warmstart", "single", "shared", "nddr_default"] + [f"slot{i}" for i in range(n)]
    assert sorted(jobs(trials)) == sorted(expected)
    ran = [int(o.split("worker done: ")[1].split()[0]) for o in outs]
    assert sum(ran) == n + 4 and min(ran) >= 1, outs  # both workers took work


@pytest.mark.slow
def test_two_local_workers_on_the_default_storage(tmp_path):
    _two_workers(f"sqlite:///{tmp_path}/fusionsearch.db", "two", 5)


@pytest.mark.slow
def test_two_workers_on_postgresql(postgres, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # artefacts go to ./fusionsearch-artifacts for server storages
    _two_workers(postgres, "pg", 4)


@pytest.mark.slow
def test_a_killed_worker_is_retried_by_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONSEARCH_HEARTBEAT", "1")
    monkeypatch.setenv("FUSIONSEARCH_GRACE", "3")
    url = f"sqlite:///{tmp_path}/k.db"
    study = prepare_study(
        tiny_recipe(steps=60), StudySettings(study="k", storage=url, trials=1, baselines=["single"], pruner="none")
    )
    victim = subprocess.Popen(worker_cmd("k", url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it in the middle of training single (the warm start reports no steps)
        running = [
            t
            for t in study.get_trials()
            if t.state == TrialState.RUNNING and t.user_attrs.get("step") and t.user_attrs.get("baseline") == "single"
        ]
        if running:
            break
        time.sleep(0.3)
    assert running, "the worker never started training"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    survivor = subprocess.run(worker_cmd("k", url), capture_output=True, text=True, timeout=600)
    assert survivor.returncode == 0, survivor.stdout + survivor.stderr
    trials = study.get_trials()
    dead = [t for t in trials if t.state == TrialState.FAIL]
    assert len(dead) == 1 and dead[0].number == running[0].number
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == dead[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert sorted(jobs(finished(study))) == ["single", "slot0", "warmstart"]  # the study ends complete
    result = runner.invoke(app, ["trials", "--study", "k", "--storage", url], terminal_width=250)
    assert "stale heartbeat" in result.output and f"retry of {dead[0].number}" in result.output


def test_an_interrupted_trial_is_queued_again(tmp_path):
    """Ctrl-C is no verdict on the plan: the trial is failed as interrupted and a copy queued, so
    the same command again runs it (and queues nothing twice)."""
    url = f"sqlite:///{tmp_path}/i.db"
    settings = StudySettings(study="i", storage=url, trials=1, baselines=["single"], pruner="none")
    study = prepare_study(tiny_recipe(), settings)

    def interrupt(trial):
        if trial.user_attrs.get("slot") == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_worker("i", url, device="cpu", before_trial=interrupt)
    failed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert [t.user_attrs["fail_reason"] for t in failed] == ["interrupted (queued again)"]
    prepare_study(tiny_recipe(), settings)  # the same command again
    assert run_worker("i", url, device="cpu") == 1
    assert sorted(jobs(finished(study))) == ["single", "slot0", "warmstart"]
    assert len(study.get_trials()) == 4  # warm start, single, the interrupted slot and its copy


@pytest.mark.slow
def test_confirmation_is_queued_once_and_resumes_after_a_kill(tmp_path):
    """Kill `fusionsearch run` in the middle of the confirmation; the same command again finishes
    it: the killed trial is retried, nothing is queued twice, every plan has each seed once."""
    d = tiny_recipe(steps=60).to_dict()
    d.update(name="kill", study={"trials": 1, "pruner": "none"}, confirm={"top": 1, "seeds": 2})
    (tmp_path / "kill.yaml").write_text(__import__("yaml").safe_dump(d))
    env = {**os.environ, "FUSIONSEARCH_HEARTBEAT": "1", "FUSIONSEARCH_GRACE": "3"}
    url = f"sqlite:///{tmp_path}/k.db"
    cmd = [sys.executable, "-m", "fusionsearch.cli", "run", "--recipe", "kill.yaml", "--storage", url, "--quiet"]
    victim = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = fs.search.storage.open_storage(url, heartbeat=False)
    deadline, running = time.time() + 300, []
    while time.time() < deadline and not running and victim.poll() is None:
        time.sleep(0.3)
        try:
            st = optuna.load_study(study_name="kill-test_resnet-seg-normal", storage=storage)
        except KeyError:
            continue
        running = [t for t in st.get_trials() if t.state == TrialState.RUNNING and "confirm" in t.user_attrs]
    assert running, "the run never reached the confirmation"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming:" in again.stdout and "confirmation over seeds" in again.stdout
    trials = optuna.load_study(study_name="kill-test_resnet-seg-normal", storage=storage).get_trials()
    confirm = [t for t in trials if "confirm" in t.user_attrs]
    done = sorted((t.user_attrs["confirm"], t.user_attrs["seed"]) for t in confirm if t.state == TrialState.COMPLETE)
    labels = ["nddr_default", "shared", "single", "trial 4"]
    assert done == sorted((label, seed) for label in labels for seed in (1, 2))
    failed = [t for t in confirm if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [running[0].number]
    assert len(confirm) == 8 + 1  # 4 plans x 2 seeds, plus the killed trial (its retry is one of the 8)


def test_multi_objective_study_has_a_pareto_front_and_no_pruning(tmp_path):
    url = f"sqlite:///{tmp_path}/mo.db"
    settings = StudySettings(study="mo", storage=url, trials=2, objectives=["delta_m", "params"], sampler="nsga2")
    study = prepare_study(tiny_recipe(), settings)
    assert run_worker("mo", url, device="cpu") == 6
    done = study.get_trials()
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in done)
    assert all(t.values[1] == t.user_attrs["params"] for t in done)
    assert all(not t.intermediate_values for t in done)  # Optuna cannot prune multi-objective studies
    html = write_report(study, tmp_path / "mo.html", url).read_text()
    assert 'id="pareto-front"' in html and "Not drawn" not in html.split('id="pareto-front"')[1].split("</section>")[0]


def test_grid_study_runs_every_point_once(tmp_path):
    recipe = grid_recipe(["layer1", "layer2"], column_init=["scratch", "single"])
    url = f"sqlite:///{tmp_path}/g.db"
    prepare_study(
        recipe, StudySettings(study="g", storage=url, trials=4, sampler="grid", pruner="none", baselines=["single"])
    )
    assert run_worker("g", url, device="cpu") == 6  # the warm start, single, 4 points
    st, _, _ = load_study("g", url)
    searched = [t for t in st.get_trials() if not t.user_attrs.get("baseline")]
    assert all(t.state == TrialState.COMPLETE for t in st.get_trials())
    assert sorted((t.params["init"], t.params["column_init"]) for t in searched) == [
        ("0.9,0.1", "scratch"),
        ("0.9,0.1", "single"),
        ("1,0", "scratch"),
        ("1,0", "single"),
    ]
    steps = {t.params["column_init"]: t.user_attrs["steps"] for t in searched}
    assert steps == {"scratch": 4, "single": 1}  # scratch: the full budget; warm: finetune_steps


def _sampled(tmp_path, name: str) -> list[dict]:
    """The params of a fresh study's sampled trials after `fusionsearch run` in its own process."""
    import yaml

    d = tiny_recipe(steps=2, column_init="scratch").to_dict()
    d.update(name="tiny", study={"trials": 3, "pruner": "none"}, confirm={"seeds": 0})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(d))
    url = f"sqlite:///{tmp_path}/{name}.db"
    cmd = [sys.executable, "-m", "fusionsearch.cli", "run", "--recipe", "tiny.yaml", "--storage", url, "--quiet"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    study, _, _ = load_study("tiny-test_resnet-seg-normal", url)
    return [t.params for t in sorted(study.get_trials(), key=lambda t: t.number) if "slot" in t.user_attrs]


def test_the_same_command_samples_the_same_plans(tmp_path):
    """The sampler's seed is the study's and the worker's number, not the process id: the same
    command on two fresh databases draws the same plans (issue 23, item 10)."""
    a, b = _sampled(tmp_path, "a"), _sampled(tmp_path, "b")
    assert len(a) == 3 and all(a) and a == b


def test_journal_storage_never_shares_optunas_lock_file(tmp_path):
    """Our advisory lock is FILE.fusionsearch-lock: on FILE.lock, Optuna's own journal lock waited
    10 s three times and then forced it open (issue 23, item 2)."""
    from fusionsearch.search.storage import study_lock

    path = tmp_path / "j.log"
    with study_lock(f"journal:{path}"):
        assert (tmp_path / "j.log.fusionsearch-lock").exists() and not (tmp_path / "j.log.lock").exists()
    start = time.time()
    prepare_study(tiny_recipe(), StudySettings(study="j", storage=f"journal:{path}", trials=2))
    assert time.time() - start < 8  # Optuna's lock would have timed out at 10 s at least once
