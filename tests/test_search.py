"""The study: queue slots, workers, heartbeats, failures, artefacts, report, dashboard."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from typer.testing import CliRunner

import fusionsearch as fs
from fusionsearch.cli import app
from fusionsearch.recipe import Recipe, RecipeError, load_recipe
from fusionsearch.report import FIGURES, write_report
from fusionsearch.search import StudySettings, load_study, prepare_study, run_worker
from fusionsearch.space import SearchSpace
from fusionsearch.storage import redact

runner = CliRunner()


def tiny_recipe(steps: int = 4, **search) -> Recipe:
    """The quick recipe on test_resnet at 32 px; warm-started trials fine-tune steps // 4 steps."""
    quick = {k: v for k, v in load_recipe("quick").search.items() if not k.startswith("finetune")}
    return load_recipe("quick").with_overrides(
        backbone="test_resnet",
        data={"name": "synthetic", "size": 32, "train_length": 16, "val_length": 4},
        train={"steps": steps, "batch_size": 4, "base_lr": 0.002, "optimizer": "adamw", "eval_every": 2},
        search={**quick, **search},
    )


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def jobs(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """What each trial was queued for: a baseline name or a slot number (retries share it)."""
    return [t.user_attrs.get("baseline") or f"slot{t.user_attrs['slot']}" for t in trials]


def worker_cmd(study: str, url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fusionsearch.cli",
        "worker",
        "--study",
        study,
        "--storage",
        url,
        "--quiet",
        "--device",
        "cpu",
        "--threads",
        "1",
        *extra,
    ]


# ---- the search space ---------------------------------------------------------------------------


def test_space_turns_choices_into_plans():
    space = SearchSpace.from_dict(
        {
            "units": ["none", "nddr", "cross_stitch"],
            "fixed": {"unit@a": "nddr", "unit@b": "cross_stitch", "unit@c": "nddr", "shared_prefix": "none"},
        }
    )
    study = optuna.create_study()
    trial = study.ask()
    s = space.sample(trial, ["a", "b", "c"], 2)
    assert s.plan.at == ["a", "b", "c"] and s.plan.unit == "nddr"
    assert s.plan.per_point["b"]["unit"] == "cross_stitch"
    alpha, beta = s.plan.unit_args["init"]
    assert 0.5 <= alpha <= 1 and beta == pytest.approx(1 - alpha)
    assert 1 <= s.plan.unit_args["lr_mult"] <= 1000
    # a shared trunk up to b leaves only c to fuse
    space.fixed["shared_prefix"] = "b"
    s = space.sample(study.ask(), ["a", "b", "c"], 2)
    assert s.plan.at == ["c"] and s.plan.shared_prefix == "b"
    with pytest.raises(fs.PlanError, match="search units name 'nddx'"):
        SearchSpace.from_dict({"units": ["nddx"]})
    with pytest.raises(fs.PlanError, match="unknown search field"):
        SearchSpace.from_dict({"lr_multiplier": [1, 10]})


def test_recipe_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: resnet18\ntrian: {steps: 3}\n")
    with pytest.raises(RecipeError, match=r"unknown recipe field\(s\) \['trian'\] in .*bad.yaml"):
        load_recipe(bad)
    bad.write_text("train: {stpes: 3}\n")
    with pytest.raises(RecipeError, match=r"unknown field train\.stpes"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="no recipe 'nope'"):
        load_recipe("nope")


def test_passwords_are_never_printed():
    assert redact("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"


# ---- one worker in this process -----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """Baselines + 3 trials, with one out-of-memory and one NaN failure injected."""
    d = tmp_path_factory.mktemp("study")
    url = f"sqlite:///{d}/s.db"
    study = prepare_study(tiny_recipe(), StudySettings(study="s", storage=url, trials=4, keep_nets="all"))
    nan_trial = {}

    def inject(trial):
        if trial.user_attrs.get("slot") == 0:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        nan_trial["on"] = trial.user_attrs.get("slot") == 1

    original = fs.tasks.Normals.loss

    def loss(self, pred, target):
        out = original(self, pred, target)
        return out * float("nan") if nan_trial.get("on") else out

    fs.tasks.Normals.loss = loss
    try:
        ran = run_worker("s", url, device="cpu", before_trial=inject)
    finally:
        fs.tasks.Normals.loss = original
    return study, url, ran


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
    assert by["nddr_default"].user_attrs["plan"]["unit_args"] == {"init": [0.9, 0.1], "lr_mult": 100.0}
    single = by["single"].user_attrs["metrics"]
    dirs = {t: dict(fs.get_task(t, out_channels=3 if t == "normal" else 6).metrics) for t in single}
    for t in finished(study):
        if t.state == TrialState.COMPLETE and t.user_attrs.get("baseline") != "warmstart":
            assert t.values[0] == pytest.approx(fs.delta_m(t.user_attrs["metrics"], single, dirs, skip_zero=True))


def test_best_network_is_exported_and_loads(small_study, tmp_path):
    study, url, _ = small_study
    out = tmp_path / "best.pt"
    result = runner.invoke(app, ["best", "--study", "s", "--storage", url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    net = fs.load(out)
    assert set(net.tasks) == {"seg", "normal"}
    assert net(torch.randn(1, 3, 32, 32))["seg"].shape == (1, 6, 32, 32)


def test_report_contains_every_figure(small_study, tmp_path):
    study, url, _ = small_study
    path = write_report(study, tmp_path / "r.html", url)
    html = path.read_text()
    sections = {name: html.split(f'id="{name.replace(" ", "-")}"')[1].split("</section>")[0] for name in FIGURES}
    # too few trials for importances and no confirmation: each says why instead of drawing noise
    assert "importances need at least 10" in sections["parameter importances"]
    assert "ran no confirmation" in sections["confirmation"]
    for name in set(FIGURES) - {"parameter importances", "confirmation"}:
        assert "Not drawn" not in sections[name], (name, sections[name][:300])
        assert "Plotly.newPlot" in sections[name], name
    assert "LibMTL&#x27;s Delta_p" in html and "no confirmation was run" in html
    # our figures also reach optuna-dashboard, once each however often the report is written
    write_report(study, tmp_path / "r.html", url)
    from optuna_dashboard._custom_plot_data import list_graph_object_ids

    st = load_study("s", url)[0]
    ids = sorted(list_graph_object_ids(st._storage.get_study_system_attrs(st._study_id)))
    assert ids == ["fusionsearch-fusion-weights", "fusionsearch-placement-map"]


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


# ---- several worker processes -------------------------------------------------------------------


def _two_workers(url: str, study: str, n: int) -> None:
    prepare_study(tiny_recipe(), StudySettings(study=study, storage=url, trials=n, pruner="none"))
    procs = [
        subprocess.Popen(worker_cmd(study, url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(outs)
    assert not any("locked" in o for o in outs), outs
    st = optuna.load_study(study_name=study, storage=fs.storage.open_storage(url, heartbeat=False))
    trials = st.get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials), [(t.number, t.state) for t in trials]
    expected = ["warmstart", "single", "shared", "nddr_default"] + [f"slot{i}" for i in range(n)]
    assert sorted(jobs(trials)) == sorted(expected)
    ran = [int(o.split("worker done: ")[1].split()[0]) for o in outs]
    assert sum(ran) == n + 4 and min(ran) >= 1, outs  # both workers took work


def test_two_local_workers_on_the_default_storage(tmp_path):
    _two_workers(f"sqlite:///{tmp_path}/fusionsearch.db", "two", 5)


def _initdb() -> str | None:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return found


@pytest.fixture
def postgres(tmp_path):
    """A throw-away PostgreSQL server on 127.0.0.1 (CI installs Debian's postgresql)."""
    initdb = _initdb()
    if initdb is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs it")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    bindir = Path(initdb).parent
    # not under tmp_path: pytest's base folder is private to root, and the server runs as postgres
    data = Path(tempfile.mkdtemp(prefix="fusionsearch-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(data / "log"),
            "-o",
            f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )


def test_two_workers_on_postgresql(postgres, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # artefacts go to ./fusionsearch-artifacts for server storages
    _two_workers(postgres, "pg", 4)


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


# ---- dashboards and the command line ------------------------------------------------------------


def test_dashboard_serves_the_study(small_study):
    _, url, _ = small_study
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusionsearch.cli", "dashboard", "--storage", url, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        data = None
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    data = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert data is not None, "optuna-dashboard did not answer"
        names = [s["study_name"] for s in data["study_summaries"]]
        assert names == ["s"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_run_command_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "tiny.yaml"
    d = tiny_recipe().to_dict()
    d["name"] = "tiny"
    d["study"] = {"trials": 2, "pruner": "none"}
    d["confirm"] = {"top": 1, "seeds": 2}
    recipe.write_text(__import__("yaml").safe_dump(d))
    args = ["run", "--recipe", str(recipe), "--quiet", "--report", "r.html"]
    result = runner.invoke(app, args, terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "baseline:single" in result.output and "confirmation: 8 trials queued" in result.output
    assert "Delta-m mean ± 95% CI" in result.output and "LibMTL's Delta_p" in result.output
    assert "beats the" in result.output or "no searched plan beats" in result.output
    assert (tmp_path / "r.html").is_file() and (tmp_path / "fusionsearch.db").is_file()
    confirmation = (tmp_path / "r.html").read_text().split('id="confirmation"')[1].split("</section>")[0]
    assert "Plotly.newPlot" in confirmation and "Not drawn" not in confirmation
    again = runner.invoke(app, args, terminal_width=250)
    assert again.exit_code == 0, again.output
    assert "started" not in again.output  # nothing left to run: resumed, not restarted
    st, _, _ = load_study("tiny-test_resnet-seg-normal", "sqlite:///fusionsearch.db")
    assert len(st.get_trials()) == 14  # warm start, 3 baselines, 2 slots, (3 baselines + 1 winner) x 2 seeds
    assert st.metric_names == ["Delta-m (%)"]
    # the confirmed best is what `best` exports; sampled trials kept no network
    kept = [t for t in st.get_trials() if "model_artifact" in t.user_attrs]
    assert all("slot" not in t.user_attrs for t in kept)
    exported = runner.invoke(app, ["best", "--study", st.study_name, "--out", "best.pt"], terminal_width=250)
    assert exported.exit_code == 0, exported.output
    assert "confirmed Delta-m" in exported.output and fs.load("best.pt").tasks


# ---- recipes and the papers' tables ---------------------------------------------------------------


RECIPES = sorted(p.stem for p in (Path(fs.__file__).parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_loads_validates_and_builds(name):
    from fusionsearch.compare import compare_rows
    from fusionsearch.experiment import Experiment

    r = load_recipe(name)
    assert r.reproduces and r.about, "a recipe says what it reproduces"
    small = dict(r.data, size=64)
    exp = Experiment(r.with_overrides(data=small))
    plan = exp.plan_from(r.plan)
    for p in plan.at:
        exp.graph().resolve(p)
    space = SearchSpace.from_dict(r.search)
    assert exp.points(space.points)
    if r.study.get("sampler") == "grid":
        from fusionsearch.search import grid_points

        grid = [{k: str(v) for k, v in p.items()} for p in grid_points(r.with_overrides(data=small))]
        rows = r.compare["grid_rows"]
        assert len(rows) == len(grid) == len(r.paper["rows"]), "one table row per grid point"
        for label, params in rows.items():
            assert label in r.paper["rows"]
            assert any(all(p[k] == str(v) for k, v in params.items()) for p in grid), (label, params)
    for baseline in compare_rows(r).values():
        exp.baseline_plan(baseline)
    directions = exp.directions()
    for row, tasks in r.paper.get("rows", {}).items():
        for task, metrics in tasks.items():
            assert task in directions, (row, task)
            assert set(metrics) - {"fwiou"} <= set(directions[task]), (row, metrics)
    net = exp.build(plan, read_data=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = net.eval()(x)
    assert set(out) == set(r.tasks)


def grid_recipe(fused: list[str], **search) -> Recipe:
    """A grid over NDDR's init at the ``fused`` points of test_resnet; every other choice fixed."""
    points = ("act1", "layer1", "layer2", "layer3", "layer4")
    return tiny_recipe(
        units=["nddr"],
        init=[[1, 0], [0.9, 0.1]],
        lr_mult=[100.0, 100.0],
        fusion_weight_decay=[1e-4, 1e-4],
        base_lr=[0.002, 0.002],
        loss_weights={},
        fixed={
            **{f"unit@{p}": "nddr" if p in fused else "none" for p in points},
            "shared_prefix": "none",
            "shortcut": False,
        },
        **search,
    )


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


def test_compare_prints_the_papers_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tiny_recipe().to_dict()
    d.update(
        name="tiny",
        paper={
            "table": "Tiny table",
            "rows": {
                "single_task": {"seg": {"miou": 30.0, "pixel_acc": 60.0}},
                "nddr": {"seg": {"miou": 33.0, "pixel_acc": 66.0}},
            },
        },
        compare={"search_trials": 1, "columns": {"seg": ["miou", "pixel_acc"], "normal": ["mean"]}},
        confirm={"top": 1, "seeds": 2},
    )
    (tmp_path / "tiny.yaml").write_text(__import__("yaml").safe_dump(d, sort_keys=False))
    result = runner.invoke(
        app, ["compare", "--recipe", str(tmp_path / "tiny.yaml"), "--quiet", "--out", "out"], terminal_width=250
    )
    assert result.exit_code == 0, result.output
    md = (tmp_path / "out" / "tiny-compare.md").read_text()
    for row in ("single_task", "multi_task_baseline", "cross_stitch", "sluice", "nddr", "search_best"):
        assert row in md and row in result.output
    assert "(33)" in md and "(66)" in md  # the paper's numbers beside ours
    assert "(+10.00)" in md  # the paper's own Delta-m of its NDDR row: (33/30 - 1 + 66/60 - 1) / 2
    assert "(2 seeds)" in md and "reference" in md  # every row confirmed over seeds, tested against the best
    csv_text = (tmp_path / "out" / "tiny-compare.csv").read_text().splitlines()
    assert csv_text[0].startswith("row,source,seg/miou,seg/pixel_acc,normal/mean,delta_m,delta_m_mean")
    assert sum(line.startswith("nddr,") for line in csv_text) == 2  # ours and the paper's


def test_columns_start_from_the_single_task_nets():
    from fusionsearch.experiment import Experiment, column_weights_of

    exp = Experiment(tiny_recipe())
    single = exp.build(exp.baseline_plan("single"))
    with torch.no_grad():
        for p in single.parameters():
            p.add_(torch.randn_like(p))  # "trained"
    fused = exp.build(exp.baseline_plan("nddr_default"), column_weights=column_weights_of(single))
    x = torch.randn(2, 3, 32, 32)
    single.eval(), fused.eval()
    for got, want in zip(fused.columns[1][0].eval_graph.parameters(), single.columns[1][0].eval_graph.parameters()):
        torch.testing.assert_close(got, want)
    with torch.no_grad():  # NDDR at (1, 0) would be the identity; at (0.9, 0.1) the nets differ
        assert not torch.allclose(fused(x)["normal"], single(x)["normal"])


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


def test_compare_on_an_ablation_grid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = grid_recipe(["layer1", "layer4"]).to_dict()
    d.update(
        name="grid",
        study={"sampler": "grid", "trials": "grid"},
        confirm={"seeds": 0},
        paper={"rows": {"init_1_0": {"seg": {"miou": 36.2}}, "init_0.9_0.1": {"seg": {"miou": 36.2}}}},
        compare={
            "columns": {"seg": ["miou"]},
            "grid_rows": {"init_1_0": {"init": "1,0"}, "init_0.9_0.1": {"init": "0.9,0.1"}},
        },
    )
    (tmp_path / "grid.yaml").write_text(__import__("yaml").safe_dump(d, sort_keys=False))
    result = runner.invoke(app, ["compare", "--recipe", "grid.yaml", "--quiet"], terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "+ 2 grid points" in result.output
    md = (tmp_path / "grid-compare.md").read_text()
    assert "init_1_0" in md and "init_0.9_0.1" in md and "(36.2)" in md and "not run" not in md


# ---- warm start, common random numbers, define-by-run ----------------------------------------------


def _trained_single(exp):
    single = exp.build(exp.baseline_plan("single"))
    with torch.no_grad():
        for p in single.parameters():
            p.add_(0.1 * torch.randn_like(p))  # "trained": anything but the initial weights
    return single.eval()


def test_a_warm_started_net_at_identity_is_the_single_task_net():
    from fusionsearch.experiment import Experiment, WarmStart

    exp = Experiment(tiny_recipe())
    single = _trained_single(exp)
    start = WarmStart.of(single)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = single(x)
        for unit, exact in (("cross_stitch", True), ("nddr", False), ("sluice", True)):
            plan = fs.StitchPlan(at=["layer1", "layer3"], unit=unit, unit_args={"init": (1.0, 0.0)})
            got = exp.build(plan, start=start, init_seed=0).eval()(x)
            for t in want:  # columns and heads both come from the single-task nets
                if exact:
                    assert torch.equal(got[t], want[t]), (unit, t)
                else:  # NDDR's BatchNorm divides by sqrt(1 + eps), eps 1e-3 as the official code
                    torch.testing.assert_close(got[t], want[t], rtol=3e-3, atol=3e-3)
        # the split baselines start the same way: the trunk from the first task's column
        shared = exp.build(fs.StitchPlan(shared_prefix="layer2"), start=start).eval()(x)
        torch.testing.assert_close(shared["seg"], want["seg"])


def test_new_modules_start_alike_in_every_plan_of_a_seed():
    """Common random numbers: the unit at layer2 is drawn from (seed, its name) only."""
    from fusionsearch.experiment import Experiment

    exp = Experiment(tiny_recipe())
    args = {"init": "xavier"}

    def unit_at_layer2(at, seed):
        net = exp.build(fs.StitchPlan(at=at, unit="nddr", unit_args=args), init_seed=seed)
        return next(u for p, u in net.fusion_units().items() if p == "layer2").weights[0].detach()

    a = unit_at_layer2(["layer2"], 0)
    assert torch.equal(a, unit_at_layer2(["act1", "layer1", "layer2", "layer4"], 0))
    assert not torch.equal(a, unit_at_layer2(["layer2"], 1))


def test_space_draws_no_unit_where_the_shared_prefix_leaves_nothing_to_fuse():
    space = SearchSpace.from_dict({"units": ["none", "nddr"]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_prefixes = set()
    for _ in range(30):
        trial = study.ask()
        s = space.sample(trial, ["a", "b", "c", "d"], 2)
        prefix = trial.params["shared_prefix"]
        seen_prefixes.add(prefix)
        drawn = sorted(k.removeprefix("unit@") for k in trial.params if k.startswith("unit@"))
        after = ["a", "b", "c", "d"][["none", "a", "b", "c"].index(prefix) :]
        assert drawn == after, (prefix, drawn)
        if not s.plan.at:  # no unit placed: no unit arguments drawn either
            assert not {"init_alpha", "lr_mult", "fusion_weight_decay"} & set(trial.params)
        study.tell(trial, 0.0)
    assert len(seen_prefixes) > 2
    with pytest.raises(fs.PlanError, match="column_init must be single, scratch"):
        SearchSpace.from_dict({"column_init": "generic"})


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
    storage = fs.storage.open_storage(url, heartbeat=False)
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
