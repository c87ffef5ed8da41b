"""What a careless or hostile user can do to a study, each turned into a test: interruptions and
accidents come back, plan failures stay final, N processes queue exactly N slots, no password on a
command line, no crafted file steering timm, no user file lost, and one line with exit code 2."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from helpers import finished, jobs, tiny_recipe
from optuna.artifacts import upload_artifact
from optuna.trial import TrialState
from typer.testing import CliRunner

import fusionsearch as fs
from fusionsearch.cli import app
from fusionsearch.errors import DependencyError, UntrustedFileError
from fusionsearch.search import StudySettings, prepare_study, run_worker
from fusionsearch.search.recovery import MAX_RETRY
from fusionsearch.search.storage import artifact_store, open_storage, redact
from fusionsearch.train.trainer import NonFiniteLossError

runner = CliRunner()


def _once(match, error):
    """A ``before_trial`` hook that raises ``error`` the first time ``match(trial)`` holds."""
    fired = []

    def hook(trial):
        if not fired and match(trial):
            fired.append(trial.number)
            raise error

    return hook


def _settings(url, **kw):
    return StudySettings(**{"study": "r", "storage": url, "trials": 2, "baselines": ["single"], "pruner": "none", **kw})


# ---- recovery -------------------------------------------------------------------------------------


def test_ctrl_c_in_the_baseline_then_the_same_command_completes_every_trial(tmp_path):
    url = f"sqlite:///{tmp_path}/a.db"
    study = prepare_study(tiny_recipe(), _settings(url))
    hook = _once(lambda t: t.user_attrs.get("baseline") == "single", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run_worker("r", url, device="cpu", before_trial=hook)
    prepare_study(tiny_recipe(), _settings(url))  # the same command again
    run_worker("r", url, device="cpu")
    assert sorted(jobs(finished(study))) == ["single", "slot0", "slot1", "warmstart"]
    failed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert [(t.user_attrs["baseline"], t.user_attrs["fail_kind"]) for t in failed] == [("single", "interrupted")]


def test_ctrl_c_in_a_sampled_trial_keeps_its_plan_and_the_count(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/b.db"
    study = prepare_study(tiny_recipe(), _settings(url))
    now, original = {}, fs.tasks.dense.Normals.loss

    def hook(trial):
        now["slot"] = trial.user_attrs.get("slot")

    def loss(self, pred, target):  # Ctrl-C in the middle of training, after the plan was drawn
        if now.pop("slot", None) == 1:
            raise KeyboardInterrupt
        return original(self, pred, target)

    monkeypatch.setattr(fs.tasks.dense.Normals, "loss", loss)
    with pytest.raises(KeyboardInterrupt):
        run_worker("r", url, device="cpu", before_trial=hook)
    prepare_study(tiny_recipe(), _settings(url))
    run_worker("r", url, device="cpu")
    done = finished(study)
    assert sorted(jobs(done)) == ["single", "slot0", "slot1", "warmstart"]  # exactly the 2 slots asked for
    failed = next(t for t in study.get_trials() if t.state == TrialState.FAIL)
    copy = next(t for t in done if t.system_attrs.get("failed_trial") == failed.number)
    assert failed.params and copy.params == failed.params and copy.system_attrs["retry_history"] == [failed.number]
    assert "fail_reason" not in copy.user_attrs  # the copy is a fresh run, not the failure's record


def test_an_accident_is_queued_again_by_the_next_run_and_a_plan_failure_stays_final(tmp_path):
    url = f"sqlite:///{tmp_path}/c.db"
    study = prepare_study(tiny_recipe(), _settings(url, trials=3))
    # a network mount gone for a moment; a full disk stops the worker instead (tests/cli/test_disk_full.py)
    stale = _once(lambda t: t.user_attrs.get("slot") == 0, OSError(errno.ESTALE, "Stale file handle"))
    nan = _once(lambda t: t.user_attrs.get("slot") == 1, NonFiniteLossError("loss is nan at step 2"))

    def both(trial):
        stale(trial)
        nan(trial)

    run_worker("r", url, device="cpu", before_trial=both)  # the worker goes on after each failure
    kinds = {t.user_attrs["slot"]: t.user_attrs["fail_kind"] for t in study.get_trials() if t.state == TrialState.FAIL}
    assert kinds == {0: "infrastructure", 1: "plan"}
    prepare_study(tiny_recipe(), _settings(url, trials=3))  # the next run
    assert run_worker("r", url, device="cpu") == 1  # the stale-mount trial only
    assert sorted(jobs(finished(study))) == ["single", "slot0", "slot2", "warmstart"]
    prepare_study(tiny_recipe(), _settings(url, trials=3))
    assert run_worker("r", url, device="cpu") == 0  # nothing more: the NaN plan failed on its merits


def test_retries_are_bounded(tmp_path):
    url = f"sqlite:///{tmp_path}/d.db"
    study = prepare_study(tiny_recipe(), _settings(url, trials=1))

    def always(trial):
        if trial.user_attrs.get("slot") == 0:
            raise OSError(errno.ESTALE, "Stale file handle")

    for _ in range(MAX_RETRY + 2):
        prepare_study(tiny_recipe(), _settings(url, trials=1))
        run_worker("r", url, device="cpu", before_trial=always)
    slot = [t for t in study.get_trials() if t.user_attrs.get("slot") == 0]
    assert len(slot) == MAX_RETRY + 1 and all(t.state == TrialState.FAIL for t in slot)


def test_no_trial_trains_after_its_reference_failed_for_good(tmp_path):
    url = f"sqlite:///{tmp_path}/e.db"
    study = prepare_study(tiny_recipe(), _settings(url))
    hook = _once(lambda t: t.user_attrs.get("baseline") == "single", NonFiniteLossError("loss is nan at step 1"))
    with pytest.raises(DependencyError, match="the single-task reference failed for good.*start a new study"):
        run_worker("r", url, device="cpu", before_trial=hook)
    states = {t.user_attrs.get("slot"): t.state for t in study.get_trials() if "slot" in t.user_attrs}
    assert states == {0: TrialState.WAITING, 1: TrialState.WAITING}  # nothing trained for nothing, nothing lost
    result = runner.invoke(app, ["worker", "--study", "r", "--storage", url, "--device", "cpu", "--quiet"])
    assert result.exit_code == 2 and "failed for good" in result.output and "Traceback" not in result.output


# ---- exactly N under races -------------------------------------------------------------------------


def _prepare_at(url: str, start: float, trials: int) -> None:
    time.sleep(max(0.0, start - time.time()))
    prepare_study(tiny_recipe(), StudySettings(study="race", storage=url, trials=trials))


def _race(url: str, n: int = 4, trials: int = 30) -> list[optuna.trial.FrozenTrial]:
    ctx = multiprocessing.get_context("spawn")
    start = time.time() + 6  # after every process has imported torch
    procs = [ctx.Process(target=_prepare_at, args=(url, start, trials)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0] * n
    st = optuna.load_study(study_name="race", storage=open_storage(url, heartbeat=False))
    return st.get_trials()


EVERY_SLOT = sorted(["warmstart", "single", "shared", "nddr_default"] + [f"slot{i}" for i in range(30)])


@pytest.mark.slow
def test_runs_started_together_queue_exactly_the_requested_slots_on_sqlite(tmp_path):
    trials = _race(f"sqlite:///{tmp_path}/race.db")
    assert sorted(jobs(trials)) == EVERY_SLOT


@pytest.mark.slow
def test_runs_started_together_queue_exactly_the_requested_slots_on_postgresql(postgres):
    trials = _race(postgres)
    assert sorted(jobs(trials)) == EVERY_SLOT


# ---- secrets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://me:s3cret@db:5432/x", "postgresql://me:***@db:5432/x"),
        ("postgresql://me:p@ss@word@db/x", "postgresql://me:***@db/x"),  # an unescaped @ in the password
        ("postgresql://db/x?password=s3cret&sslmode=require", "postgresql://db/x?password=***&sslmode=require"),
        ("mysql://me@db/x?ssl_key=k.pem&token=abc", "mysql://me@db/x?ssl_key=***&token=***"),
        ("sqlite:///study.db", "sqlite:///study.db"),
    ],
)
def test_credentials_are_never_shown(url, shown):
    assert redact(url) == shown


def test_workers_get_the_storage_url_from_the_environment_not_argv(tmp_path, monkeypatch):
    from fusionsearch.search.worker import run_workers

    url = "postgresql+psycopg://me:s3cret@127.0.0.1:1/db"
    started = []

    class Done:
        returncode = 0

        def poll(self):
            return 0

    def popen(cmd, **kw):
        started.append((cmd, kw["env"]))
        return Done()

    monkeypatch.setattr(subprocess, "Popen", popen)
    settings = StudySettings(study="s", storage=url, artifacts=str(tmp_path))
    run_workers(None, settings, ["cpu", "cpu"], quiet=True, artifacts=str(tmp_path), steps_total=4)
    assert len(started) == 2
    for cmd, env in started:
        assert not any("s3cret" in part for part in cmd), cmd  # `ps` shows argv to every user
        assert env["FUSIONSEARCH_STORAGE"] == url
    missing = f"sqlite:///{tmp_path}/nope.db"
    result = runner.invoke(app, ["worker", "--study", "s"], env={"FUSIONSEARCH_STORAGE": missing})
    assert result.exit_code == 2 and "nope.db" in result.output  # the worker read it from there


# ---- untrusted files ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_net(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "net.pt"
    net = fs.build("test_resnet", {"seg": 3, "normal": 3}, fs.StitchPlan(at=["layer1"]), input_size=(3, 32, 32))
    fs.save(net, path)
    return path


def _crafted(saved: Path, tmp_path: Path, **changes) -> Path:
    payload = torch.load(saved, weights_only=True)
    payload.update(changes)
    out = tmp_path / "crafted.pt"
    torch.save(payload, out)
    return out


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"create_kwargs": {"pretrained": True}}, "pretrained"),
        ({"create_kwargs": {"pretrained_cfg_overlay": {"file": "/tmp/evil.pth"}}}, "pretrained_cfg_overlay"),
        ({"create_kwargs": {"checkpoint_path": "/tmp/evil.pth"}}, "checkpoint_path"),
        ({"create_kwargs": {"img_size": "/etc/passwd"}}, "img_size"),
        ({"backbones": ["hf-hub:evil/model", "hf-hub:evil/model"]}, "hf-hub:evil/model"),
        ({"backbones": ["local-dir:/tmp/x", "local-dir:/tmp/x"]}, "local-dir"),
        ({"input_size": [3, 100000, 100000]}, "input size"),
    ],
)
def test_a_crafted_net_cannot_steer_timm(saved_net, tmp_path, changes, named):
    path = _crafted(saved_net, tmp_path, **changes)
    with pytest.raises(UntrustedFileError, match=named):
        fs.load(path)
    result = runner.invoke(app, ["inspect", "--model", str(path)])
    assert result.exit_code == 2 and "--trust" in result.output and "Traceback" not in result.output


def test_trust_loads_a_file_the_user_made(saved_net, tmp_path):
    path = _crafted(saved_net, tmp_path, create_kwargs={"drop_block_rate": 0.0})
    with pytest.raises(UntrustedFileError):
        fs.load(path)
    assert set(fs.load(path, trust=True).task_names) == {"seg", "normal"}
    assert set(fs.load(saved_net).task_names) == {"seg", "normal"}  # an ordinary file needs no trust


def test_a_net_without_weights_is_one_line(saved_net, tmp_path):
    path = _crafted(saved_net, tmp_path, state_dict={})
    result = runner.invoke(app, ["inspect", "--model", str(path)])
    assert result.exit_code == 2 and "weights that do not fit" in result.output


# ---- best never loses the user's file ------------------------------------------------------------------


@pytest.fixture
def finished_study(tmp_path, saved_net):
    url = f"sqlite:///{tmp_path}/best.db"
    study = prepare_study(tiny_recipe(), StudySettings(study="b", storage=url, trials=0, confirm_seeds=0))
    store = artifact_store(url)

    def complete(path: Path | None) -> None:
        attrs = {"slot": 0, "plan": {"at": ["layer1"]}}
        if path is not None:
            attrs["model_artifact"] = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)
        else:
            attrs["model_artifact"] = "no-such-artefact"
        study.add_trial(optuna.create_trial(value=1.0, user_attrs=attrs))

    return url, complete


@pytest.mark.parametrize("artefact", ["missing", "truncated"])
def test_best_never_replaces_the_users_file_with_a_bad_artefact(finished_study, saved_net, tmp_path, artefact):
    url, complete = finished_study
    if artefact == "missing":
        complete(None)
    else:
        cut = tmp_path / "cut.pt"
        cut.write_bytes(saved_net.read_bytes()[:5000])
        complete(cut)
    out = tmp_path / "best.pt"
    out.write_bytes(b"the user's own network")
    result = runner.invoke(app, ["best", "--study", "b", "--storage", url, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "left as it was" in result.output and "Traceback" not in result.output
    assert out.read_bytes() == b"the user's own network"
    assert [p.name for p in tmp_path.glob(".best.pt*")] == []  # no partial file left behind


def test_best_replaces_the_file_with_a_whole_network(finished_study, saved_net, tmp_path):
    url, complete = finished_study
    complete(saved_net)
    out = tmp_path / "best.pt"
    out.write_bytes(b"old")
    result = runner.invoke(app, ["best", "--study", "b", "--storage", url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == saved_net.read_bytes()


# ---- one line, exit 2 ---------------------------------------------------------------------------------


TINY = "backbone: test_resnet\ndata: {name: synthetic, size: 32, train_length: 8, val_length: 4}\n"
BAD_RECIPES = {
    "top_list.yaml": ("- seg\n- normal\n", "must be a mapping"),
    "steps_word.yaml": ("train: {steps: four}\n", "train.steps must be a whole number"),
    "tasks_number.yaml": ("tasks: 42\n", "recipe.tasks must be a list of strings"),
    "tasks_twice.yaml": ("tasks: [seg, seg]\n", "more than once"),
    "trials_word.yaml": ("study: {trials: two}\n", "study.trials must be a whole number or 'grid'"),
    "trials_typo.yaml": ("study: {trails: 30}\n", "unknown field study.trails"),
    "units_string.yaml": ("search: {units: nddr}\n", "search.units must be a list of strings"),
    "negative_steps.yaml": ("train: {steps: -4}\n", "steps must be a whole number >= 1"),
    "bad_yaml.yaml": ("train: {steps: [\n", "not valid YAML"),
    "compare_typo.yaml": ("compare: {serach_trials: 3}\n", "unknown field compare.serach_trials"),
    # issue 23 item 3: nested arguments against the constructors they go to, sizes bounded
    "backbone_args.yaml": (f"{TINY}backbone_args: {{foo: 1}}\n", "backbone_args {'foo': 1} are refused by timm"),
    "task_arg_typo.yaml": ("task_args: {seg: {bogus: 3}}\n", "unknown argument task_args.seg.bogus of task 'seg'"),
    "task_arg_list.yaml": ("task_args: {seg: {rates: [a, b]}}\n", "task_args.seg.rates must be a list of whole"),
    "task_arg_word.yaml": ("task_args: {normal: {loss_weight: abc}}\n", "task_args.normal.loss_weight must be"),
    "famo_word.yaml": ("train: {weighting: {name: famo, args: {gamma: abc}}}\n", "train.weighting.args.gamma must"),
    "huge_size.yaml": ("data: {name: synthetic, size: 99999}\n", "data.size 99999 is over 4096 pixels a side"),
    "deep.yaml": ("paper: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 64 levels deep"),
    # item 4: accepted silently before
    "dbmtl_beta.yaml": ("train: {weighting: {name: dbmtl, args: {beta: 5}}}\n", "beta must be in [0, 1), got 5"),
    "dwa_period.yaml": ("train: {weighting: {name: dwa, args: {period: 2.5}}}\n", "period must be a whole number"),
    "negative_weight.yaml": ("task_args: {normal: {loss_weight: -5}}\n", "loss_weight must be a number >= 0"),
    # item 5: before the search, naming the field, no empty database left
    "confirm_per.yaml": (f"{TINY}confirm: {{per: nonsense}}\n", "confirm per 'nonsense' is not a parameter"),
    "search_weighting.yaml": ("search: {weighting: [fixed, nosuch]}\n", "search.weighting: unknown weighting method"),
    # a hostile review of the above: more nested fields and ranges, each checked before any study
    "seed_negative.yaml": ("study: {seed: -1}\n", "study.seed must be in 0.."),
    "no_objectives.yaml": ("study: {objectives: []}\n", "objectives must name each objective once"),
    "trials_huge.yaml": ("study: {trials: 1000000000}\n", "trials must be in 0..100,000"),
    "recursive.yaml": ("search: {fixed: &a {foo: *a}}\n", "holds a recursive alias"),
    "duplicate_key.yaml": ("about: x\nabout: y\n", "the key 'about' is written twice"),
    "nyuv2_layout.yaml": ("data: {name: nyuv2, root: ., layout: bogus}\n", "layout must be one of"),
    "units_empty.yaml": ("search: {units: []}\n", "search.units is empty"),
    "unit_args_typo.yaml": (
        "search: {unit_args: {nddr: {bogus: 1}}}\n",
        "unknown argument search.unit_args.nddr.bogus",
    ),
    "init_pairs.yaml": ("search: {init: [[0.9], foo]}\n", "search.init choices must be"),
    "loss_range.yaml": ("search: {loss_weights: {normal: [5, 2]}}\n", "search.loss_weights.normal must be"),
    "loss_task.yaml": (f"{TINY}search: {{loss_weights: {{nosuch: [1, 2]}}}}\n", "names 'nosuch', not a task"),
    "fixed_typo.yaml": (f"{TINY}search: {{fixed: {{bogus: 3}}}}\n", "search.fixed.bogus is not a parameter"),
    "fixed_unit.yaml": (f"{TINY}search: {{fixed: {{unit@layer1: nope}}}}\n", "search.fixed.unit@layer1 names 'nope'"),
    "plan_unit.yaml": (f"{TINY}plan: {{unit: bogus}}\n", "unknown fusion unit 'bogus'"),
    "plan_arg.yaml": (f"{TINY}plan: {{unit_args: {{bogus: 1}}}}\n", "unknown argument plan.unit_args.bogus"),
    "rates_zero.yaml": ("task_args: {seg: {rates: [0]}}\n", "rates must be a non-empty list of dilation rates"),
    "data_seed.yaml": (
        "backbone: test_resnet\ndata: {name: synthetic, size: 32, seed: -1}\n",
        "data.seed must be >= 0",
    ),
    "compare_metric.yaml": ("compare: {columns: {seg: [nosuch]}}\n", "compare.columns.seg names 'nosuch'"),
    "momentum.yaml": ("train: {momentum: 50}\n", "momentum must be < 1"),
    "grad_clip.yaml": ("train: {grad_clip: -1}\n", "grad_clip must be a number > 0"),
    "eval_steps.yaml": ("train: {eval_steps: [0, -3]}\n", "eval_steps must be whole numbers >= 1"),
    "weighting_twice.yaml": ("search: {weighting: [dwa, dwa]}\n", "names a method twice"),
    "torchjd_arg.yaml": (
        "train: {weighting: {name: aligned_mtl, args: {scale_mode: bogus}}}\n",
        "train.weighting.args.scale_mode must be",
    ),
    # item 6: a billion laughs under paper: refused by its expanded size, never expanded
    "alias_bomb.yaml": (
        "paper:\n  rows:\n    r:\n      seg:\n        a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        + "".join(f"        a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)),
        "with its aliases written out, over the limit",
    ),
}


def _bad_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    for name, (text, _) in BAD_RECIPES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "not-a-db.db").write_text("hello")
    (tmp_path / "folder").mkdir()
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "baseline.json").write_text("{not json")
    words = {t: {m: "high" for m in fs.tasks.task.TASKS.get(t).metrics} for t in ("seg", "normal")}
    (tmp_path / "words.json").write_text(json.dumps(words))
    tiny = ["--backbone", "test_resnet", "--size", "32", "--train-images", "8", "--val-images", "4", "--steps", "1"]
    build = ["build", "--backbone", "test_resnet", "--out", str(tmp_path / "n.pt"), "--input-size", "3,32,32"]
    cases = [(["run", "--recipe", str(tmp_path / n)], msg) for n, (_, msg) in BAD_RECIPES.items()]
    cases += [
        (["run", "--data", "synthetic:data/any_folder"], "unknown argument data.root of the synthetic data set"),
        (["run", "--data", "nyuv2"], "data.root is required by the nyuv2 data set"),
        ([*build, "--tasks", "seg:4,normal:3", "--init", "a,b"], "--init takes ALPHA,BETA"),
        ([*build, "--tasks", "seg:4,normal:3", "--init", "nan,nan"], "--init takes ALPHA,BETA"),
        ([*build, "--tasks", "seg:4,normal:3", "--lr-mult", "-5"], "--lr-mult must be a number > 0"),
        ([*build, "--tasks", "seg:4,seg:4"], "task 'seg' is named more than once"),
        (["inspect", "--backbone", "test_resnet", "--input-size", "3,99999,99999"], "over the limit of 50,331,648"),
        (["inspect", "--backbone", "test_resnet", "--leaf", "nonsense"], "leaf 'nonsense' is neither a module class"),
        (["train", *tiny, "--loss-weight", "nosuch=2"], "loss weights name 'nosuch', not a task of this study"),
        (["train", *tiny, "--loss-weight", "normal=-5"], "loss_weight must be a number >= 0, got -5"),
        (["train", *tiny, "--baseline", str(tmp_path / "words.json")], "seg/miou must be a finite number"),
        (
            ["run", "--recipe", str(tmp_path / "confirm_per.yaml"), "--confirm-per", "weighting"],
            "confirm per 'weighting'",
        ),
        (["run", "--seed", "-1"], "--seed must be in 0.."),
        (["run", "--storage", ""], "--storage is empty"),
        (["run", "--objectives", "delta_m,delta_m"], "objectives must name each objective once"),
        (["run", "--timeout", "nan"], "timeout must be a number of seconds >= 0"),
        (["run", "--workers", "100000"], "--workers must be <= 256"),
        (["run", "--sampler", "grid"], "a grid search needs fixed values"),
        (["run", "--artifacts", str(tmp_path / "words.json")], "is a file: give --artifacts a folder"),
        (["run", "--storage", f"sqlite:///{tmp_path}/x.db?mode=ro"], "an SQLite URL takes no query"),
        (["run", "--report", str(tmp_path / "folder")], "--report"),
        (["run", "--study", "x" * 300], "a file name must be 1 to 255 bytes long"),
        ([*build, "--tasks", "seg:4,normal:3", "--out", str(tmp_path / "folder")], "is a folder"),
        (["train", *tiny, "--out", str(tmp_path / "folder")], "--out"),
        (["train", *tiny, "--checkpoint", str(tmp_path / "words.json" / "c.pt")], "is not a folder this user can"),
        (["train", *tiny, "--lr", "inf"], "base_lr must be a finite number"),
    ]
    cases += [
        (["run", "--size", "-3"], "--size must be >= 1"),
        (["run", "--size", "0"], "--size must be >= 1"),
        (["run", "--steps", "0"], "--steps must be >= 1"),
        (["run", "--steps", "-5"], "--steps must be >= 1"),
        (["run", "--trials", "-1"], "--trials must be >= 0"),
        (["run", "--workers", "0"], "--workers must be >= 1"),
        (["run", "--tasks", ""], "--tasks is empty"),
        (["run", "--tasks", "seg,seg"], "seg more than once"),
        (["run", "--tasks", "seg,,normal"], "empty name"),
        (["run", "--tasks", "seg"], "fusion needs at least 2 tasks"),
        (["run", "--tasks", "seg,age"], "age"),
        (["run", "--devices", "gpu7"], "unknown device 'gpu7'"),
        (["run", "--storage", f"sqlite:///{tmp_path}/not-a-db.db"], "is not an SQLite database"),
        (["run", "--storage", f"sqlite:///{tmp_path}/folder"], "is a folder"),
        (["run", "--storage", "fusionsearch.db"], "is not a URL"),
        (["trials", "--study", "x", "--storage", f"sqlite:///{tmp_path}/typo/x.db"], "no database file"),
        (["trials", "--study", "x", "--storage", f"sqlite:///{tmp_path}/not-a-db.db"], "not an SQLite database"),
        (["best", "--study", "x", "--storage", f"sqlite:///{tmp_path}/folder"], "is a folder"),
        (["report", "--study", "x", "--storage", f"journal:{tmp_path}/typo.log"], "no journal file"),
        (["train", "--steps", "0"], "--steps must be >= 1"),
        (["train", "--checkpoint", str(tmp_path / "cut.pt"), "--steps", "1", "--size", "32"], "cannot be resumed"),
        (["train", "--baseline", str(tmp_path / "baseline.json"), "--steps", "1"], "not a metrics JSON file"),
        (["inspect", "--backbone", "test_resnet", "--input-size", "3,0,32"], "every dimension must be >= 1"),
        (["inspect", "--backbone", "test_resnet", "--checkpoint", str(tmp_path / "cut.pt")], "cannot be loaded"),
        (["inspect", "--model", str(tmp_path / "cut.pt")], "cannot be read as a stitched network"),
        (["inspect", "--backbone", "resnet_nope"], "unknown backbone"),
    ]
    if not torch.cuda.is_available():
        cases.append((["run", "--devices", "cuda:0"], "no CUDA device"))
        cases.append((["worker", "--study", "x", "--device", "cuda:1"], "no CUDA device"))
    return cases


def test_every_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wrong = []
    cases = _bad_cases(tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    for args, message in cases:
        result = runner.invoke(app, args, terminal_width=80)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        if result.exit_code != 2 or len(lines) != 1 or message not in lines[0] or "Traceback" in result.output:
            wrong.append((args, result.exit_code, result.output[-400:]))
    assert not wrong, "\n".join(map(str, wrong))
    # a rejected command leaves nothing behind: no database, lock, artefact folder or network
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_an_unexpected_error_is_one_line_with_the_traceback_on_request(monkeypatch):
    from fusionsearch import graph
    from fusionsearch.cli import core

    monkeypatch.setitem(core.DEBUG, "on", False)  # --debug below sets it: restored after the test

    def broken(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(graph, "trace", broken)
    result = runner.invoke(app, ["inspect", "--backbone", "test_resnet"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "ZeroDivisionError: a bug" in lines[0]
    assert "--debug" in lines[0]
    result = runner.invoke(app, ["--debug", "inspect", "--backbone", "test_resnet"])
    assert "Traceback" in result.stderr and result.exit_code == 1


@pytest.mark.slow
def test_a_real_ctrl_c_is_one_line_and_the_same_command_resumes(tmp_path):
    """SIGINT to ``fusionsearch run`` while a trial trains: exit 130 with one line; running the
    same command again completes every trial."""
    import yaml

    recipe = tmp_path / "tiny.yaml"
    r = tiny_recipe(steps=120).with_overrides(confirm={"seeds": 0}, study={"trials": 1, "pruner": "none"})
    recipe.write_text(yaml.safe_dump(r.to_dict()))
    url = f"sqlite:///{tmp_path}/c.db"
    cmd = [sys.executable, "-m", "fusionsearch.cli", "run", "--recipe", str(recipe), "--storage", url, "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # a shell that started pytest in the background ignores SIGINT in its children: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    running = False
    while not running and time.time() < deadline and proc.poll() is None:  # until a trial trains
        time.sleep(0.3)
        try:
            st = optuna.load_study(study_name=optuna.get_all_study_summaries(url)[0].study_name, storage=url)
            running = any(t.state == TrialState.RUNNING for t in st.get_trials())
        except Exception:  # not created yet
            continue
    assert running and proc.poll() is None, "no trial was caught running"
    time.sleep(1.0)  # inside its training
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert lines == ["interrupted: the running trial is queued again; run the same command to resume"], err
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    trials = st.get_trials()
    assert sorted(jobs([t for t in trials if t.state == TrialState.COMPLETE])) == sorted(
        ["warmstart", "single", "shared", "nddr_default", "slot0"]
    )


def test_a_bad_heartbeat_setting_is_one_line_before_any_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app, ["run", "--backbone", "test_resnet", "--size", "32"], env={"FUSIONSEARCH_HEARTBEAT": "abc"}
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "FUSIONSEARCH_HEARTBEAT must be a whole number of seconds >= 1, got 'abc'" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_database_is_refused_before_any_trial(tmp_path, monkeypatch):
    """``run`` on an SQLite file the user cannot write: one line naming the file, not Optuna's
    StorageInternalError after the warm start. Root may write any file whatever its mode, so
    under root the permission check is shown the answer an ordinary user would get."""
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "ro.db"
    prepare_study(tiny_recipe(), _settings(f"sqlite:///{db}", trials=0))
    db.chmod(0o444)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(
            fs.search.storage.os, "access", lambda p, mode: False if Path(p) == db and mode & os.W_OK else real(p, mode)
        )
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, ["run", "--backbone", "test_resnet", "--size", "32", "--storage", f"sqlite:///{db}"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"{str(db)!r} is read-only" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no lock file, no artefact folder
    # readers still read it
    assert runner.invoke(app, ["trials", "--study", "r", "--storage", f"sqlite:///{db}"]).exit_code == 0


def test_ctrl_c_that_python_cannot_raise_still_exits_130(tmp_path, monkeypatch):
    """SIGINT landing in a finaliser (a database connection's, at the end of ``run``) cannot
    propagate: Python printed "Exception ignored ... KeyboardInterrupt" and the command exited 0."""
    from fusionsearch.report import leaderboard as leaderboard

    class Finaliser:
        def __del__(self):
            raise KeyboardInterrupt

    original = leaderboard.trials_table

    def table(*a, **k):
        Finaliser()  # collected at once: its KeyboardInterrupt is "unraisable"
        return original(*a, **k)

    url = f"sqlite:///{tmp_path}/u.db"
    prepare_study(tiny_recipe(), _settings(url, trials=0))
    monkeypatch.setattr(leaderboard, "trials_table", table)
    result = runner.invoke(app, ["trials", "--study", "r", "--storage", url])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 130, result.output
    assert lines == ["interrupted: the command stopped before it finished"]  # trials runs no trial
    # at the interpreter's shutdown, after the command: the same line and 130, never a traceback
    script = tmp_path / "late.py"
    script.write_text(
        "import sys\nfrom fusionsearch import cli\n"
        "class F:\n    def __del__(self):\n        raise KeyboardInterrupt\n"
        "keep = F()\nsys.argv = ['fusionsearch', 'list', 'units']\ncli.main()\n"
    )
    late = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert late.returncode == 130, late.stderr
    assert late.stderr.strip().splitlines() == ["interrupted: the command stopped before it finished"]


def test_best_never_writes_over_a_write_protected_file(finished_study, saved_net, tmp_path):
    url, complete = finished_study
    complete(saved_net)
    out = tmp_path / "mine.pt"
    out.write_bytes(b"the user's own file")
    out.chmod(0o444)
    result = runner.invoke(app, ["best", "--study", "b", "--storage", url, "--out", str(out)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "is write-protected" in lines[0], result.output
    assert out.read_bytes() == b"the user's own file" and out.stat().st_mode & 0o777 == 0o444
    if Path("/dev/null").exists():  # os.replace would have put a regular file in place of the device
        result = runner.invoke(app, ["best", "--study", "b", "--storage", url, "--out", "/dev/null"])
        assert result.exit_code == 2 and "not a regular file" in result.stderr, result.output
        assert Path("/dev/null").is_char_device()
    out.chmod(0o640)  # a writable file is replaced, and keeps its permissions
    result = runner.invoke(app, ["best", "--study", "b", "--storage", url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == saved_net.read_bytes() and out.stat().st_mode & 0o777 == 0o640


def test_the_dashboard_on_a_busy_port_names_the_port(finished_study):
    import socket

    url, _ = finished_study
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["dashboard", "--storage", url, "--port", str(port)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0] and "--port" in lines[0]
    assert "optuna-dashboard for" not in result.stdout  # no banner for a server that never started


def test_best_exports_the_best_run_of_a_study_without_confirmation(tmp_path):
    """``--confirm 0`` then ``best``: the README promises the best single run's network, but only
    the baselines' nets were kept, so a searched winner gave "kept no network". Without a
    confirmation, a searched trial keeps its net when it is the best run so far."""
    url = f"sqlite:///{tmp_path}/nc.db"
    prepare_study(tiny_recipe(), _settings(url, trials=3, confirm_seeds=0, baselines=["single", "shared"]))
    run_worker("r", url, device="cpu")
    study = optuna.load_study(study_name="r", storage=url)
    searched = [t for t in finished(study) if "slot" in t.user_attrs and t.state == TrialState.COMPLETE]
    assert searched
    best_so_far = float("-inf")
    for t in sorted(searched, key=lambda t: t.datetime_complete):
        assert ("model_artifact" in t.user_attrs) == (t.value >= best_so_far), (t.number, t.value, best_so_far)
        best_so_far = max(best_so_far, t.value)
    out = tmp_path / "best.pt"
    result = runner.invoke(app, ["best", "--study", "r", "--storage", url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    winner = fs.report.leaderboard.best_trial(study)
    assert f"trial {winner.number}, one run" in result.stdout
    plain = lambda d: json.loads(json.dumps(d))  # tuples and lists alike
    assert plain(fs.load(out).plan.to_dict()) == plain(winner.user_attrs["plan"])


def test_commands_that_only_read_create_no_file(tmp_path, monkeypatch):
    """``trials``, ``report`` and ``best`` took the storage's lock (creating FILE.fusionsearch-lock)
    and ``report`` made an empty artefact folder."""
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/r.db"
    prepare_study(tiny_recipe(), _settings(url, trials=0))
    before = sorted(p.name for p in tmp_path.iterdir())
    for args in (["trials"], ["report", "--out", str(tmp_path / "r.html")], ["best", "--out", str(tmp_path / "b.pt")]):
        runner.invoke(app, [*args, "--study", "r", "--storage", url])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "r.html"])


def test_ctrl_c_after_the_command_and_in_the_dashboard_is_one_line_and_130(tmp_path, monkeypatch):
    """A signal while the interpreter shuts down (Python has put its default handler back) and the
    dashboard's normal stop: one line each, never a silent death or a claim that a trial was queued."""
    script = tmp_path / "late_signal.py"
    script.write_text(
        "import os, signal, sys, time\nfrom fusionsearch import cli\n"
        "sys.argv = ['fusionsearch', 'list', 'units']\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "os.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\n"
    )
    late = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert late.returncode == 130, late.stderr
    assert late.stderr.strip().splitlines() == ["interrupted: the command stopped before it finished"]
    assert "nddr" in late.stdout  # what the command printed stays printed

    import optuna_dashboard

    def serve(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(optuna_dashboard, "run_server", serve)
    url = f"sqlite:///{tmp_path}/d.db"
    prepare_study(tiny_recipe(), _settings(url, trials=0))
    result = CliRunner().invoke(app, ["dashboard", "--storage", url, "--port", "8765"])
    assert result.exit_code == 130, result.output
    assert [line for line in result.stderr.splitlines() if line.strip()] == ["dashboard stopped"]


def test_sigterm_stops_a_dashboard_whose_server_swallows_every_exception(tmp_path):
    """A server has no safe point, and wsgiref's request handler catches every exception: a
    signal that lands there must still stop the dashboard (the server runs beside the main thread)."""
    url = f"sqlite:///{tmp_path}/d.db"
    prepare_study(tiny_recipe(), _settings(url, trials=0))
    script = tmp_path / "swallowing.py"
    script.write_text(
        "import sys, time\nimport optuna_dashboard\nfrom fusionsearch import cli\n"
        "def serve(*a, **k):\n    while True:\n        try:\n            time.sleep(0.05)\n"
        "        except BaseException:\n            pass\n"
        "optuna_dashboard.run_server = serve\n"
        f"sys.argv = ['fusionsearch', 'dashboard', '--storage', {url!r}, '--port', '8766']\ncli.main()\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "optuna-dashboard for" in proc.stdout.readline()
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines() == ["dashboard stopped"], err
