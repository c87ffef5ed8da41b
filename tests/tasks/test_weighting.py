"""Weighting methods against their papers' update rules, computed by hand, and each through training."""

from __future__ import annotations

import math

import pytest
import torch

import fusionsearch as fs
from fusionsearch.errors import PlanError
from fusionsearch.tasks.task import get_task
from fusionsearch.tasks.weighting import WEIGHTINGS, make_weighting
from fusionsearch.train.config import TrainConfig
from fusionsearch.train.trainer import fit


def _losses(*values: float, grad: bool = False) -> dict[str, torch.Tensor]:
    return {t: torch.tensor(v, requires_grad=grad) for t, v in zip(("a", "b"), values)}


def test_uncertainty_weights_and_their_gradients():
    """Kendall et al.: sum_i L_i / (2 e^s_i) + s_i / 2; dL/ds_i = -L_i / (2 e^s_i) + 1/2."""
    w = make_weighting("uncertainty", ["a", "b"])
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.0, math.log(2.0)]))
    total = w.combine(_losses(2.0, 0.5), step=0)
    assert total.item() == pytest.approx(2.0 / 2 + 0.5 / 4 + math.log(2.0) / 2)
    total.backward()
    assert w.log_vars.grad.tolist() == pytest.approx([-2.0 / 2 + 0.5, -0.5 / 4 + 0.5])
    assert w.weights() == pytest.approx({"a": 0.5, "b": 0.25})
    assert [g["name"] for g in w.param_groups(0.01)] == ["weighting:uncertainty"]


def test_dwa_weights_from_loss_histories():
    """Liu et al.: w_i = K exp(r_i / T) / sum_j exp(r_j / T), r_i = L_i(t-1) / L_i(t-2), T = 2."""
    w = make_weighting({"name": "dwa", "args": {"period": 1}}, ["a", "b"])
    assert w.current().tolist() == [1.0, 1.0]  # weight 1 until two periods have passed
    w.observe({"a": 1.0, "b": 1.0}, 0)
    w.observe({"a": 0.5, "b": 1.0}, 1)
    r = torch.tensor([0.5, 1.0])
    expected = 2 * torch.exp(r / 2) / torch.exp(r / 2).sum()
    torch.testing.assert_close(w.current(), expected)
    w2 = make_weighting({"name": "dwa", "args": {"period": 2}}, ["a", "b"])
    for step, (a, b) in enumerate([(4, 1), (2, 1), (1, 2), (1, 2)]):
        w2.observe({"a": a, "b": b}, step)
    r2 = torch.tensor([1 / 3, 2.0])  # means over the last two steps / the two before
    torch.testing.assert_close(w2.current(), 2 * torch.softmax(r2 / 2, 0))


def test_famo_weight_update():
    """Liu et al. 2023 (famo.py): delta_i = log L_i(before) - log L_i(after); the logits move by
    Adam along J_softmax^T delta, whose first step is -lr * sign."""
    w = make_weighting({"name": "famo", "args": {"w_lr": 0.025, "gamma": 0.0}}, ["a", "b"])
    w.update(torch.tensor([2.0, 1.0]), torch.tensor([1.0, 1.0]))
    d = torch.tensor([0.25 * math.log(2.0), -0.25 * math.log(2.0)])  # (diag(z) - z z^T) delta, z = (.5, .5)
    torch.testing.assert_close(w.logits.detach(), -0.025 * torch.sign(d), atol=1e-6, rtol=1e-4)
    # the loss: sum_i z_i log L_i / c, c = sum_i z_i / L_i: its gradient gives task i z_i / (c L_i)
    losses = _losses(2.0, 0.5, grad=True)
    w2 = make_weighting("famo", ["a", "b"])
    w2.combine(losses, 0).backward()
    c = 0.5 / 2.0 + 0.5 / 0.5
    assert losses["a"].grad.item() == pytest.approx(0.5 / (c * 2.0), rel=1e-5)
    assert w2.weights()["b"] == pytest.approx(0.5 / (c * 0.5), rel=1e-5)


def test_rlw_draws_softmax_weights_from_the_step():
    w = make_weighting("rlw", ["a", "b"], seed=3)
    w.combine(_losses(1.0, 1.0), step=7)
    first = w.weights()
    w.combine(_losses(1.0, 1.0), step=7)
    assert w.weights() == first and sum(first.values()) == pytest.approx(1.0)
    gen = torch.Generator().manual_seed(3 * 1_000_003 + 7)
    assert list(first.values()) == pytest.approx(torch.softmax(torch.randn(2, generator=gen), 0).tolist())


def test_gls_is_the_geometric_mean():
    losses = _losses(4.0, 1.0, grad=True)
    w = make_weighting("gls", ["a", "b"])
    total = w.combine(losses, 0)
    assert total.item() == pytest.approx(2.0)
    total.backward()
    assert losses["a"].grad.item() == pytest.approx(2.0 / (2 * 4.0))  # G / (K L_i)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("pcgrad", [0.5, 1.5]),  # (1,0) loses its part along (-1,1) and vice versa; summed
        ("mgda", [0.2, 0.4]),  # the min-norm point of the hull: 0.6 (1,0) + 0.4 (-1,1)
    ],
)
def test_gradient_methods_on_two_conflicting_gradients(name, expected):
    w = make_weighting(name, ["a", "b"])
    jacobian = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    assert w._aggregate(jacobian).tolist() == pytest.approx(expected, abs=2e-3)


def test_upgrad_never_conflicts_with_a_task():
    w = make_weighting("upgrad", ["a", "b"])
    jacobian = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    g = w._aggregate(jacobian)
    assert (jacobian @ g >= -1e-6).all()


def _tiny(plan=None):
    torch.manual_seed(0)
    net = fs.build("test_resnet", {"seg": 3, "normal": 3}, plan or fs.StitchPlan(at=["layer1"]), input_size=(3, 32, 32))
    tasks = {"seg": get_task("seg", out_channels=3), "normal": get_task("normal")}
    return net, tasks


def test_gradient_methods_balance_only_what_several_tasks_reach():
    """A head only its task reaches takes that task's gradient as it is; a column before the
    fusion unit, reached by both losses, takes the aggregate."""
    net, tasks = _tiny()
    x = torch.randn(2, 3, 32, 32)
    seg_t, nrm_t = torch.randint(0, 3, (2, 32, 32)), torch.nn.functional.normalize(torch.randn(2, 3, 32, 32), dim=1)
    preds, extra = net(x, return_extra=True)
    losses = {"seg": tasks["seg"].loss(preds["seg"], seg_t), "normal": tasks["normal"].loss(preds["normal"], nrm_t)}
    head = next(net.heads["seg"].parameters())
    (own,) = torch.autograd.grad(losses["seg"], [head], retain_graph=True)
    make_weighting("upgrad", ["seg", "normal"]).backward(losses, extra, net, 0, lambda t: t)
    torch.testing.assert_close(head.grad, own)
    stem = next(net.columns[0].parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_every_method_trains_a_stitched_net_and_its_loss_goes_down(name):
    net, tasks = _tiny()
    try:
        make_weighting(name, list(tasks))
    except PlanError as e:  # an optional solver that this machine does not have: named in the error
        assert "fusionsearch[cvx]" in str(e)
        pytest.skip(str(e))
    torch.manual_seed(0)
    one = [
        {
            "image": torch.randn(3, 32, 32),
            "seg": torch.randint(0, 3, (32, 32)),
            "normal": torch.nn.functional.normalize(torch.randn(3, 32, 32), dim=0),
        }
    ] * 4
    cfg = TrainConfig(
        steps=24, batch_size=4, base_lr=0.01, optimizer="adamw", eval_every=12, progress=False,
        weighting={"name": name, "args": {"period": 2} if name == "dwa" else {}},
    )  # fmt: skip
    history = fit(net, tasks, one, one, cfg, device="cpu")
    losses = history["losses"]
    assert sum(losses[-4:]) < sum(losses[:4]), (name, losses)
    assert history["weighting"]["name"] == name
    assert set(history["evals"][-1]["weights"]) == {"seg", "normal"}


def test_a_checkpoint_keeps_the_learned_weighting(tmp_path):
    net, tasks = _tiny()
    data = [{"image": torch.randn(3, 32, 32), "seg": torch.zeros(32, 32, dtype=torch.long),
             "normal": torch.nn.functional.normalize(torch.ones(3, 32, 32), dim=0)}] * 4  # fmt: skip
    cfg = TrainConfig(steps=4, batch_size=2, eval_every=2, progress=False, optimizer="adamw", weighting="uncertainty")
    h = fit(net, tasks, data, data, cfg, device="cpu", checkpoint=tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert torch.equal(state["weighting"]["log_vars"], h["weighting"]["state_dict"]["log_vars"])
    assert h["weighting"]["state_dict"]["log_vars"].abs().sum() > 0  # it learned


def test_unknown_method_is_named():
    with pytest.raises(PlanError, match="unknown weighting method 'uw'.*uncertainty"):
        make_weighting("uw", ["a", "b"])


def test_a_study_searches_weighting_jointly_with_placement(tmp_path):
    from helpers import tiny_recipe
    from optuna.trial import TrialState

    from fusionsearch.report.html import write_report
    from fusionsearch.search import StudySettings, prepare_study, run_worker

    recipe = tiny_recipe(weighting=["fixed", "dwa", "upgrad"])
    url = f"sqlite:///{tmp_path}/w.db"
    settings = StudySettings(study="w", storage=url, trials=3, sampler="random", pruner="none", confirm_seeds=0)
    study = prepare_study(recipe, settings)
    run_worker("w", url, device="cpu")
    sampled = [t for t in study.get_trials() if "slot" in t.user_attrs]
    assert [t.state for t in sampled] == [TrialState.COMPLETE] * 3, [t.user_attrs.get("fail_reason") for t in sampled]
    for t in sampled:
        method = t.params["weighting"]
        assert t.user_attrs["weighting"]["name"] == method
        if method == "dwa":  # its own argument, drawn only when the method is
            assert "temperature@dwa" in t.params
        assert "temperature@dwa" not in t.params or method == "dwa"
    baselines = [t for t in study.get_trials() if "baseline" in t.user_attrs]
    assert all("weighting" not in t.user_attrs for t in baselines)  # the papers' fixed weights
    html = write_report(study, tmp_path / "w.html", url).read_text()
    assert "per weighting method" in html and "Task weights of trial" in html


def test_dbmtl_balances_log_loss_gradients_to_the_largest_norm():
    """LibMTL's DB_MTL: buffer = g + beta/t^sigma (buffer - g); rows scaled to the largest norm."""
    w = make_weighting({"name": "dbmtl", "args": {"beta": 0.5}}, ["a", "b"])
    agg = w.aggregator
    first = agg(torch.tensor([[3.0, 0.0], [0.0, 1.0]]))  # t=1: buffer = g + 0.5 (0 - g) = g / 2
    torch.testing.assert_close(first, torch.tensor([1.5, 1.5]))  # (1.5, 0) and (0, 0.5) x 3
    second = agg(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # buffer = g + 0.5 (buffer - g)
    b = torch.tensor([[1.0 + 0.5 * 0.5, 0.0], [0.0, 1.0 + 0.5 * (0.5 - 1.0)]])
    expected = b[0] + b[1] * (b[0].norm() / b[1].norm())
    torch.testing.assert_close(second, expected)
