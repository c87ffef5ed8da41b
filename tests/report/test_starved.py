"""The data-starved analysis (the cross-stitch paper's Figures 5 and 6): per-category results,
training label counts, and the report's figure with its least-data means."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from folder_fixture import write_folder
from optuna.trial import TrialState, create_trial

from fusionsearch.data.categories import count_from_items, training_counts
from fusionsearch.data.folder import FolderData
from fusionsearch.data.partial import PartialLabels
from fusionsearch.data.synthetic_dataset import SyntheticScenes
from fusionsearch.report.html import write_report
from fusionsearch.report.starved import (
    CategoryRow,
    least_data_mean,
    starved_report_figure,
    starved_rows,
    starved_tables,
)
from fusionsearch.search.categories import COUNTS_ATTR, NAMES_ATTR
from fusionsearch.tasks.attributes import Attributes
from fusionsearch.tasks.dense import Segmentation
from fusionsearch.tasks.labels import IndexMap, MultiLabel


def test_per_class_iou_is_the_hand_computation():
    seg = Segmentation(out_channels=3)
    # rows: labels, columns: predictions; class 2 is neither labelled nor predicted
    seg.confusion = torch.tensor([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    per = seg.per_category()
    assert list(per) == ["0", "1", "2"]
    assert per["0"] == pytest.approx(100 * 3 / (4 + 5 - 3))
    assert per["1"] == pytest.approx(100 * 4 / (6 + 5 - 4))
    assert math.isnan(per["2"])
    assert seg.compute()["miou"] == pytest.approx((per["0"] + per["1"]) / 2)  # the metric is unchanged


def test_per_attribute_ap_keys_and_values():
    attr = Attributes(out_channels=3)
    pred = torch.tensor([[2.0, -1.0, 0.5], [-2.0, 1.0, 0.1], [1.0, 0.0, -0.3]])
    target = torch.tensor([[1, 0, 0], [0, 1, -1], [1, 1, 0]])  # attribute 2: no positive
    attr.update(pred, target)
    per = attr.per_category()
    ap = attr.per_attribute()["ap"]
    assert list(per) == ["0", "1", "2"]
    assert per["0"] == pytest.approx(100 * ap[0].item()) and per["0"] == pytest.approx(100.0)
    assert math.isnan(per["2"])
    assert attr.compute()["map"] == pytest.approx((per["0"] + per["1"]) / 2)


def test_least_data_means_take_the_categories_with_the_fewest_labels():
    # 25 categories: count 10 * i, gain i; the 10 least-data are 0..9 (mean 4.5), the 20: 0..19
    rows = [CategoryRow(str(i), 10 * i, 50.0, 50.0 + i) for i in reversed(range(25))]
    assert least_data_mean(rows, 10) == pytest.approx(4.5)
    assert least_data_mean(rows, 20) == pytest.approx(9.5)
    # a category without a result in one plan is left out: the next one with the least data counts
    rows[-1] = CategoryRow("0", 0, math.nan, 50.0)  # count 0, gain NaN
    rows[-3] = CategoryRow("2", 20, 40.0, math.nan)
    finite = [1, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert least_data_mean(rows, 10) == pytest.approx(sum(finite) / 10)
    assert least_data_mean(rows[:3], 10) == pytest.approx((24 + 23 + 22) / 3)  # fewer than 10: all of them
    assert least_data_mean([CategoryRow("0", 1, math.nan, 1.0)], 10) is None


def _trial(attrs: dict, per: dict, value: float = 0.0) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=TrialState.COMPLETE,
        value=value,
        user_attrs={**attrs, "delta_m": value, "per_category": per},
    )


def test_confirmed_best_against_single_over_the_seeds_both_ran():
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(COUNTS_ATTR, {"seg": {"0": 900, "1": 30, "2": 5}})
    study.set_user_attr(NAMES_ATTR, {"seg": ["floor", "wall", "lamp"]})
    search = _trial({"baseline": "single"}, {"seg": {"0": 0.0, "1": 0.0, "2": 0.0}})
    study.add_trial(search)  # the search's single: not read when a confirmation ran
    for seed, (s, b) in {1: (10.0, 14.0), 2: (20.0, 22.0)}.items():
        study.add_trial(_trial({"confirm": "single", "seed": seed}, {"seg": {"0": 50.0, "1": s, "2": None}}))
        study.add_trial(
            _trial({"confirm": "trial 9", "seed": seed, "source": 0}, {"seg": {"0": 51.0, "1": b, "2": 3.0}}, 2.0)
        )
    (table,) = starved_tables(study)
    assert (table.task, table.best_label, table.source, table.runs) == ("seg", "trial 9", "confirmation", 2)
    rows, means = starved_rows(table)
    # fewest training labels first; the lamp has no single-task result: NaN, left out of the means
    assert [r[:2] for r in rows] == [("lamp", 5), ("wall", 30), ("floor", 900)]
    assert rows[1][2:] == pytest.approx((15.0, 18.0, 3.0))
    assert math.isnan(rows[0][4])
    assert means == {10: pytest.approx((3.0 + 1.0) / 2), 20: pytest.approx(2.0)}
    fig = starved_report_figure(study)
    assert "confirmation, mean of 2 seeds" in fig.layout.annotations[0].text
    assert "10 least-data: +2.00" in fig.layout.annotations[0].text


def test_synthetic_and_folder_counts_match_a_pass_over_the_items(tmp_path):
    data = SyntheticScenes("train", 6, 24, seed=3)
    counts = data.category_counts("seg")
    assert counts == count_from_items(data, "seg", IndexMap(), 6)
    assert sum(counts.values()) == 6 * 24 * 24
    root = write_folder(tmp_path / "f")
    train = FolderData(root, "train", size=None, augment=False)
    assert train.category_counts("seg") == count_from_items(train, "seg", IndexMap(), 3)
    assert train.category_counts("attr") == {"0": 2, "1": 1}  # a0..a3: smile 1, 0, 1, -; hat 0, -, 1, -
    assert train.category_counts("quality") == {"0": 1, "1": 2}  # bad: a1; good: a0, a3
    # partial labels hide some of them: counted from the items training sees, not the set's own
    partial = PartialLabels(train, {"attr": ["a0"]})
    assert training_counts(partial, "attr", MultiLabel(), 2) == {"0": 1, "1": 0}
    assert training_counts(partial, "seg") == train.category_counts("seg")


def test_a_study_records_per_category_results_and_reports_them(small_study, tmp_path):
    study, url, _ = small_study
    study = optuna.load_study(study_name="s", storage=url)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert done and all(set(t.user_attrs["per_category"]) == {"seg"} for t in done)
    assert all(len(t.user_attrs["per_category"]["seg"]) == 6 for t in done)
    counts = study.user_attrs[COUNTS_ATTR]["seg"]
    assert counts == SyntheticScenes("train", 16, 32, seed=0).category_counts("seg")
    assert study.user_attrs[NAMES_ATTR]["seg"][0] == "floor"
    html = write_report(study, tmp_path / "r.html", url).read_text()
    section = html.split('id="data-starved"')[1].split("</section>")[0]
    assert "Plotly.newPlot" in section and "search runs, one seed each" in section
    assert "seg: " in section and "least-data" in section


def test_a_folder_study_reports_attributes_too(tmp_path):
    """Per-attribute AP and positives per attribute (from the folder's stored values) reach the
    report beside segmentation's."""
    from helpers import tiny_recipe

    from fusionsearch.search import StudySettings, prepare_study, run_worker

    root = write_folder(tmp_path / "f")
    recipe = tiny_recipe(steps=2, loss_weights={}).with_overrides(
        tasks=["seg", "attr"], data={"name": "folder", "root": str(root), "size": 32}
    )
    url = f"sqlite:///{tmp_path}/s.db"
    settings = StudySettings(study="a", storage=url, trials=1, confirm_seeds=0, pruner="none")
    study = prepare_study(recipe, settings)
    run_worker("a", url, device="cpu")
    study = optuna.load_study(study_name="a", storage=url)
    assert study.user_attrs[COUNTS_ATTR]["attr"] == {"0": 2, "1": 1}
    assert study.user_attrs[NAMES_ATTR]["attr"] == ["smile", "hat"]
    assert [t.task for t in starved_tables(study)] == ["seg", "attr"]
    html = write_report(study, tmp_path / "r.html", url).read_text()
    section = html.split('id="data-starved"')[1].split("</section>")[0]
    assert "attr: " in section and "smile" in section


@pytest.mark.slow
def test_a_detection_study_on_the_synthetic_boxes_reports_classes_and_attributes(tmp_path):
    """det + box_attr end to end (issue 32): a small study on the synthetic scenes with boxes
    completes on the CPU, records per-class AP and per-attribute AP, and its report draws both
    beside their training counts (objects per class, positives per attribute), named."""
    from helpers import tiny_recipe

    from fusionsearch.data.synthetic_boxes import BOX_ATTRIBUTES, BOX_CLASSES
    from fusionsearch.search import StudySettings, prepare_study, run_worker

    recipe = tiny_recipe(steps=2, loss_weights={}).with_overrides(
        tasks=["det", "box_attr"], data={"name": "synthetic", "size": 64, "train_length": 8, "val_length": 4}
    )
    url = f"sqlite:///{tmp_path}/s.db"
    prepare_study(recipe, StudySettings(study="d", storage=url, trials=1, confirm_seeds=0, pruner="none"))
    run_worker("d", url, device="cpu")
    study = optuna.load_study(study_name="d", storage=url)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == len(study.trials) == 5  # warm start, 3 baselines, 1 trial
    assert all(set(t.user_attrs["metrics"]) == {"det", "box_attr"} for t in done)
    counts = study.user_attrs[COUNTS_ATTR]
    assert set(counts["det"]) == {"1", "2", "3"} and len(counts["box_attr"]) == len(BOX_ATTRIBUTES)
    assert study.user_attrs[NAMES_ATTR]["det"][1:] == list(BOX_CLASSES)
    html = write_report(study, tmp_path / "r.html", url).read_text()
    section = html.split('id="data-starved"')[1].split("</section>")[0]
    assert "det: " in section and "box_attr: " in section and BOX_CLASSES[0] in section
