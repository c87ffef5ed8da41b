"""Confirmation statistics on constructed cases: t intervals, the paired test, the verdict."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from scipy import stats

from fusionsearch.search.confirm import paired_test, queue_confirmation, search_winners, summarize, t_interval

SEEDS = (1, 2, 3)


def test_t_interval_matches_scipy():
    values = [1.0, 2.5, 0.5, 3.0]
    iv = t_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 4, scale=stats.sem(values))
    assert iv.mean == pytest.approx(1.75) and iv.n == 4
    assert (iv.low, iv.high) == (pytest.approx(low), pytest.approx(high))
    one = t_interval([2.0])
    assert one.mean == 2.0 and math.isnan(one.low) and "no interval" in str(one)


def test_paired_test_matches_scipy_and_calls_significance():
    plan = {1: 2.0, 2: 2.3, 3: 1.9}
    ref = {1: 1.0, 2: 1.2, 3: 0.8}
    test = paired_test(plan, ref)
    assert test.p_value == pytest.approx(stats.ttest_rel([2.0, 2.3, 1.9], [1.0, 1.2, 0.8]).pvalue)
    assert test.diff.mean == pytest.approx(16 / 15) and test.diff.low > 0 and test.beats
    noisy = paired_test({1: 1.5, 2: 0.5, 3: 1.6}, ref)  # differences +0.5, -0.7, +0.8
    assert noisy.diff.low < 0 < noisy.diff.high and not noisy.beats
    assert not paired_test({1: 5.0}, {1: 0.0}).beats  # one seed proves nothing
    assert paired_test({1: 1.0, 2: 1.0}, {1: 0.0, 2: 0.0}).beats  # no spread, always ahead
    assert paired_test({1: 1.0, 2: 3.0, 9: 100.0}, {1: 0.0, 2: 0.0}).diff.n == 2  # only common seeds
    with pytest.raises(ValueError, match="share no seed"):
        paired_test({1: 1.0}, {2: 0.0})


def _study(confirmed: dict[str, list[float]]) -> optuna.Study:
    """A study with two searched trials (numbers 0 and 1) and confirmation trials per plan."""
    study = optuna.create_study(direction="maximize")
    for n, dm in enumerate((3.0, 2.0)):
        study.add_trial(
            create_trial(value=dm, user_attrs={"slot": n, "delta_m": dm, "plan": {"at": [f"p{n}"], "unit": "nddr"}})
        )
    for label, values in confirmed.items():
        for seed, dm in zip(SEEDS, values):
            attrs = {"confirm": label, "seed": seed, "delta_m": dm, "keep_net": seed == 1, "model_artifact": "x"}
            if label.startswith("trial "):
                attrs["source"] = int(label.split()[1])
            study.add_trial(create_trial(value=dm, user_attrs=attrs))
    return study


def test_summary_tests_every_plan_against_the_best_baseline():
    study = _study(
        {
            "single": [0.0, 0.0, 0.0],
            "shared": [1.0, 1.2, 0.8],
            "trial 0": [2.0, 2.3, 1.9],
            "trial 1": [1.5, 0.5, 1.6],
        }
    )
    c = summarize(study)
    assert c.best_baseline == "shared" and c.pending == 0
    assert [p.label for p in c.plans] == ["trial 0", "trial 1", "shared", "single"]
    won, lost = c.plans[0], c.plans[1]
    assert won.test is not None and won.test.beats and won.search_delta_m == 3.0
    assert won.plan == {"at": ["p0"], "unit": "nddr"} and won.net_trial == study.trials[2 + 3 * 2].number
    assert lost.test is not None and not lost.test.beats
    assert c.plans[2].test is None  # the reference itself
    # a multi-task baseline that beats single is a finding of its own: said first
    assert c.verdict().startswith("shared beats single by +1.00 [")
    assert "; trial 0 beats the shared baseline by +1.07 [" in c.verdict()
    assert c.plans[2].vs_single is not None and c.plans[2].vs_single.beats and c.plans[3].vs_single is None


def test_verdict_says_plainly_when_nothing_beats_the_baselines():
    c = summarize(_study({"single": [0.0, 0.0, 0.0], "shared": [1.0, 1.2, 0.8], "trial 0": [3.0, -1.0, 1.5]}))
    assert "; no searched plan beats the shared baseline at this budget" in c.verdict()
    c = summarize(_study({"single": [0.0, 0.0, 0.0], "shared": [1.0, -1.2, 0.8], "trial 0": [3.0, -1.0, 1.5]}))
    assert c.verdict().startswith("no searched plan beats the shared baseline")  # shared's own gain unsure
    assert c.best is not None and c.best.label == "trial 0"  # the highest mean, though not significant
    assert summarize(optuna.create_study()).verdict().startswith("no confirmation was run")


def test_a_plan_that_beats_single_is_said_first_when_the_best_baseline_does_not():
    """The best baseline (by mean) has a wide interval that does not clear single; a searched plan
    with a lower mean does clear it: that it beats single is the finding, said first."""
    c = summarize(_study({"single": [0.0, 0.0, 0.0], "shared": [9.0, -3.0, 15.0], "trial 0": [4.0, 5.0, 4.5]}))
    assert c.best_baseline == "shared"
    assert c.verdict().startswith("trial 0 beats single by +4.50 [")
    assert "; no searched plan beats the shared baseline at this budget" in c.verdict()
    c = summarize(_study({"single": [0.0, 0.0, 0.0], "shared": [9.0, -3.0, 15.0], "trial 0": [4.0, -5.0, 4.5]}))
    assert c.verdict().startswith("no searched plan beats the shared baseline")  # nothing clears single


def test_confirmation_is_queued_once_with_the_winners():
    study = _study({})
    seeds = [1001, 1002]
    assert [t.number for t in search_winners(study, 5)] == [0, 1]
    assert queue_confirmation(study, ["single", "shared"], 1, seeds) == 6
    assert queue_confirmation(study, ["single", "shared"], 1, seeds) == 0  # resumed: nothing new
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert sorted((t.user_attrs["confirm"], t.user_attrs["seed"]) for t in waiting) == [
        ("shared", 1001),
        ("shared", 1002),
        ("single", 1001),
        ("single", 1002),
        ("trial 0", 1001),
        ("trial 0", 1002),
    ]
    assert all(t.user_attrs["keep_net"] == (t.user_attrs["seed"] == 1001) for t in waiting)
    assert summarize(study).pending == 6


def test_winners_per_value_of_a_search_parameter():
    """confirm per: weighting picks the best plan of each method, so each gets its own interval."""
    from optuna.distributions import CategoricalDistribution

    study = optuna.create_study(direction="maximize")
    dist = {"weighting": CategoricalDistribution(["fixed", "dwa", "upgrad"])}
    for n, (method, dm) in enumerate([("fixed", 1.0), ("fixed", 3.0), ("dwa", -2.0), ("upgrad", 0.5), ("upgrad", 2.0)]):
        attrs = {"slot": n, "delta_m": dm, "plan": {"at": [f"p{n}"], "unit": "nddr"}}
        study.add_trial(create_trial(value=dm, params={"weighting": method}, distributions=dist, user_attrs=attrs))
    overall = [t.user_attrs["slot"] for t in search_winners(study, 2)]
    assert overall == [1, 4]
    per = [(t.params["weighting"], t.user_attrs["slot"]) for t in search_winners(study, 1, per="weighting")]
    assert per == [("fixed", 1), ("upgrad", 4), ("dwa", 2)]
    added = queue_confirmation(study, ["single"], 1, SEEDS, per="weighting")
    assert added == 3 * (1 + 3)


def test_a_mistyped_confirm_per_is_named_not_ignored():
    from optuna.distributions import CategoricalDistribution

    from fusionsearch.search.settings import StudySettings
    from fusionsearch.search.study import prepare_confirmation

    study = optuna.create_study(direction="maximize")
    dist = {"weighting": CategoricalDistribution(["fixed", "dwa"])}
    attrs = {"slot": 0, "delta_m": 1.0, "plan": {"at": ["p0"], "unit": "nddr"}}
    study.add_trial(create_trial(value=1.0, params={"weighting": "dwa"}, distributions=dist, user_attrs=attrs))
    added, why = prepare_confirmation(study, StudySettings(confirm_per="weightng"))
    assert added == 0 and why is not None and "'weightng'" in why and "weighting" in why
