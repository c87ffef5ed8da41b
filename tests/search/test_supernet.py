"""The supernet search (issue 22): fair training that resumes exactly, scores that depend on the
plan alone, resumable scoring, and ``run --mode supernet`` end to end."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
import yaml
from helpers import tiny_recipe
from typer.testing import CliRunner

from fusionsearch.cli import app
from fusionsearch.errors import FusionSearchError, PlanError
from fusionsearch.experiment.experiment import Experiment, WarmStart
from fusionsearch.experiment.space import SearchSpace
from fusionsearch.search import StudySettings, load_study
from fusionsearch.search.study import check_study
from fusionsearch.search.supernet_training import (
    build_supernet,
    calibration_images,
    score_path,
    score_plans,
    scoring_study_name,
    train_supernet,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def start():
    exp = Experiment(tiny_recipe())
    res = exp.train(exp.baseline_plan("single"), progress=False)
    return exp, WarmStart.of(res.net), res.metrics


def _cfg(exp: Experiment, steps: int):
    return dataclasses.replace(exp.recipe.train_config(), steps=steps, progress=False)


def test_every_candidate_unit_trains_at_every_step(start):
    exp, warm, _ = start
    sn = build_supernet(exp, warm, seed=0)
    before = {k: v.clone() for k, v in sn.candidates.state_dict().items() if v.is_floating_point()}
    run = train_supernet(sn, exp, _cfg(exp, 1))
    assert (run.steps, run.path_steps) == (1, 4)  # none, nddr, cross_stitch, sluice: one path each
    after = sn.candidates.state_dict()
    for key, unit in ((k, u) for k in sn.candidates for u in sn.candidates[k]):
        moved = [n for n in before if n.startswith(f"{key}.{unit}.") and not torch.equal(before[n], after[n])]
        assert moved, f"{unit} at point {key} was not trained"


def test_a_stopped_training_resumes_to_the_same_weights(start, tmp_path):
    exp, warm, _ = start
    straight = build_supernet(exp, warm, seed=0)
    train_supernet(straight, exp, _cfg(exp, 4))
    stopped = build_supernet(exp, warm, seed=0)
    draw, calls = stopped.fair_paths, []

    def ctrl_c_at_step_3(rng):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return draw(rng)

    stopped.fair_paths = ctrl_c_at_step_3
    ck = tmp_path / "sn.pt"
    with pytest.raises(KeyboardInterrupt):
        train_supernet(stopped, exp, _cfg(exp, 4), checkpoint=ck, save_every=1)
    assert torch.load(ck, weights_only=True)["step"] == 2
    again = build_supernet(exp, warm, seed=0)  # a new process: only the checkpoint survives
    run = train_supernet(again, exp, _cfg(exp, 4), checkpoint=ck)
    assert len(run.losses) == 4
    a, b = straight.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_penalties_units_keeps_the_sluice_penalty_out_of_the_shared_columns(start):
    exp, warm, _ = start
    nets, sgd = {}, dataclasses.replace(_cfg(exp, 1), optimizer="sgd")  # a step is the gradient, not its sign
    for penalties in ("all", "units"):
        nets[penalties] = build_supernet(exp, warm, seed=0)
        train_supernet(nets[penalties], exp, sgd, penalties=penalties)
    a, b = nets["all"], nets["units"]
    # the units' gradients are the same either way (task loss + their own penalty) ...
    for k, v in a.candidates.state_dict().items():
        assert torch.allclose(v, b.candidates.state_dict()[k], atol=1e-6), k
    # ... but only "all" lets sluice's orthogonality penalty move the columns every path shares
    cols_a, cols_b = a.base.columns.state_dict(), b.base.columns.state_dict()
    moved = [k for k in cols_a if cols_a[k].is_floating_point() and not torch.allclose(cols_a[k], cols_b[k])]
    assert moved
    with pytest.raises(ValueError, match="penalties must be all or units, got 'column'"):
        train_supernet(b, exp, _cfg(exp, 1), penalties="column")


def test_a_damaged_checkpoint_is_one_clear_error(start, tmp_path):
    exp, warm, _ = start
    ck = tmp_path / "sn.pt"
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="supernet checkpoint .* cannot be resumed"):
        train_supernet(build_supernet(exp, warm, seed=0), exp, _cfg(exp, 2), checkpoint=ck)


def test_a_score_depends_on_the_plan_alone_not_on_what_was_scored_before(start):
    exp, warm, ref = start
    sn = build_supernet(exp, warm, seed=0)
    train_supernet(sn, exp, _cfg(exp, 2))
    images, val = calibration_images(exp, _cfg(exp, 2), 2), exp.datasets()[1]
    a = {"layer1": "nddr", "layer3": "sluice"}
    b = dict.fromkeys(sn.point_names, "cross_stitch")
    before = {k: v.clone() for k, v in sn.state_dict().items()}
    first = score_path(sn, a, exp, ref, images, val)[0]
    other = score_path(sn, b, exp, ref, images, val, recalibrate="fusion")[0]
    assert score_path(sn, a, exp, ref, images, val)[0] == first and other != first
    assert all(torch.equal(before[k], v) for k, v in sn.state_dict().items())  # left as it was


def test_scoring_resumes_where_it_stopped(start, tmp_path):
    exp, warm, ref = start
    sn = build_supernet(exp, warm, seed=0)
    settings = StudySettings(study="s", storage=f"sqlite:///{tmp_path}/s.db")
    cfg = _cfg(exp, 2)
    score_plans(sn, exp, settings, 3, ref, cfg)
    study = optuna.load_study(study_name=scoring_study_name("s"), storage=settings.storage)
    first = [(t.number, t.value) for t in study.get_trials()]
    ranked = score_plans(sn, exp, settings, 5, ref, cfg)
    trials = optuna.load_study(study_name=scoring_study_name("s"), storage=settings.storage).get_trials()
    assert [(t.number, t.value) for t in trials[:3]] == first
    scored = [t for t in trials if t.state.name == "COMPLETE"]  # a repeated draw fails and is not counted
    assert len(scored) == len(ranked) == 5 and all(t.user_attrs["supernet_scored"] for t in scored)
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)


def test_a_misspelt_mode_or_a_supernet_without_a_warm_start_is_refused():
    with pytest.raises(PlanError, match="search.mode must be one of trials, supernet, got 'supernett'"):
        SearchSpace.from_dict({"mode": "supernett"})
    with pytest.raises(PlanError, match="starts from the warm start"):
        SearchSpace.from_dict({"mode": "supernet", "column_init": "scratch"})
    r = tiny_recipe()
    r.search = {**r.search, "mode": "supernet"}
    with pytest.raises(FusionSearchError, match="search.mode supernet needs the tpe, nsga2 or random sampler"):
        check_study(r, StudySettings(sampler="grid"))


@pytest.mark.slow
def test_run_mode_supernet_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tiny_recipe().to_dict()
    d.update(name="tiny", study={"trials": 2, "pruner": "none"}, confirm={"top": 1, "seeds": 1})
    d["search"].update(supernet_plans=6, supernet_score_steps=3)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(d))
    args = ["run", "--recipe", "tiny.yaml", "--mode", "supernet", "--quiet", "--report", "r.html"]
    import fusionsearch.search.supernet_jobs as module  # the job calls train_supernet

    real, stops = module.train_supernet, []

    def ctrl_c_once(*a, **k):  # Ctrl-C while the supernet trains: exit 130, and the same command resumes
        if not stops:
            stops.append(1)
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(module, "train_supernet", ctrl_c_once)
    stopped = runner.invoke(app, args, terminal_width=250)
    assert stopped.exit_code == 130, stopped.output
    result = runner.invoke(app, args, terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "supernet:" in result.output and "search (supernet #1)" in result.output
    st, _, _ = load_study("tiny-test_resnet-seg-normal-supernet", "sqlite:///fusionsearch.db")
    jobs = [t for t in st.trials if t.user_attrs.get("supernet")]
    assert [t.state.name for t in jobs] == ["FAIL", "COMPLETE"]  # the interrupted one, queued again
    job = jobs[-1]
    top = job.user_attrs["supernet_top"]
    trained = job.user_attrs["supernet_training_path_steps"]
    assert trained == 4 * job.user_attrs["steps"]  # none, nddr, cross_stitch, sluice: 4 paths a step
    assert job.user_attrs["path_steps"] == trained + 6 * 3  # and 3 steps of each scored plan's copy
    slots = sorted((t for t in st.trials if "slot" in t.user_attrs), key=lambda t: t.user_attrs["slot"])
    for t in slots:  # each slot trains the supernet's k-th best placement x unit, stand-alone
        pick = top[t.user_attrs["supernet_rank"] - 1]["path"]
        assert {p: t.user_attrs.get(f"fixed:unit@{p}") for p in pick} == pick
    scored = optuna.load_study(study_name=scoring_study_name(st.study_name), storage="sqlite:///fusionsearch.db")
    done = [t for t in scored.get_trials() if t.state.name == "COMPLETE"]  # a repeated draw is not counted
    assert len(done) == len({str(t.user_attrs["path"]) for t in done}) == 6
    section = (tmp_path / "r.html").read_text().split('id="supernet-ranking"')[1].split("</section>")[0]
    assert "Plotly.newPlot" in section  # the report draws the supernet's scores against stand-alone
    again = runner.invoke(app, args, terminal_width=250)
    assert again.exit_code == 0 and "started" not in again.output  # resumed: nothing trained twice
