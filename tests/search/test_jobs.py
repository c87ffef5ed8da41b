"""Jobs: each kind of trial reads back from what it stores (as every earlier version stored it), an
unknown kind is one line, and a new kind is one class, here, outside the package, run in a study."""

from __future__ import annotations

import dataclasses
import io

import optuna
import pytest
from helpers import tiny_recipe
from optuna.trial import TrialState
from rich.console import Console

from fusionsearch.errors import JobError
from fusionsearch.experiment.recipe import Recipe
from fusionsearch.experiment.space import Sampled
from fusionsearch.report.leaderboard import trials_table
from fusionsearch.search import StudySettings, prepare_study, run_worker
from fusionsearch.search.context import JobContext
from fusionsearch.search.jobs import (
    JOBS,
    Baseline,
    ConfirmRun,
    Job,
    PlanJob,
    Slot,
    SupernetTraining,
    WarmStartJob,
    queued_copy,
    register_job,
)
from fusionsearch.search.records import TrialRecord

optuna.logging.set_verbosity(optuna.logging.ERROR)

# each built-in kind, the user attributes and queued parameters its trial stores: those of every
# earlier version (old studies resume, and the sampler's seeds follow the queue)
STORED = [
    (WarmStartJob(), {"baseline": "warmstart"}, {"baseline": "warmstart"}),
    (WarmStartJob(replaces=3), {"baseline": "warmstart", "replaces": 3}, {"baseline": "warmstart"}),
    (Baseline("single"), {"baseline": "single"}, {"baseline": "single"}),
    (Baseline("nddr_default"), {"baseline": "nddr_default"}, {"baseline": "nddr_default"}),
    (SupernetTraining(), {"supernet": "train"}, {"supernet": "train"}),
    (Slot(4), {"slot": 4}, {"slot": 4}),
    (ConfirmRun("single", 1001, keep_net=True), {"confirm": "single", "seed": 1001, "keep_net": True}, None),
    (
        ConfirmRun("trial 7", 1002, source=7, keep_net=False),
        {"confirm": "trial 7", "seed": 1002, "keep_net": False, "source": 7},
        {"confirm": "trial 7", "seed": 1002},
    ),
]


@pytest.mark.parametrize(("job", "attrs", "params"), STORED, ids=[repr(j) for j, _, _ in STORED])
def test_each_kind_stores_what_it_always_stored_and_reads_back_equal(job, attrs, params):
    assert job.attrs() == attrs
    study = optuna.create_study()
    job.enqueue(study)
    trial = study.trials[0]
    assert trial.user_attrs == attrs
    assert trial.system_attrs["fixed_params"] == (params or {"confirm": attrs["confirm"], "seed": attrs["seed"]})
    assert Job.of(trial) == job  # a frozen trial
    assert Job.of(optuna.Trial(study, trial._trial_id)) == job  # and a live one
    job.enqueue(study)
    assert len(study.trials) == 1  # queued once: the same parameters are the same trial


def test_a_trial_with_no_identity_is_an_unqueued_draw_not_a_slot_of_the_search():
    study = optuna.create_study()
    trial = study.ask()
    job = Job.of(trial)
    assert job == Slot(None) and job.attrs() == {} and not job.sampled and Slot(0).sampled
    assert job.table_label(trial) == "search" and job.log_label(trial.number) == "trial 0"


def test_the_kinds_say_their_place_rank_and_reference():
    order = [WarmStartJob(), Baseline("single"), Baseline("shared"), SupernetTraining(), Slot(0)]
    order += [ConfirmRun("single", 5), ConfirmRun("trial 3", 5, source=3)]
    assert [j.queue_rank for j in order] == [0, 1, 2, 2, 3, 4, 5]
    assert [j.ranked for j in order] == [False, True, True, False, True, False, False]
    assert [j.table_label(optuna.create_study().ask()) for j in order] == [
        "baseline:warmstart",
        "baseline:single",
        "baseline:shared",
        "supernet",
        "search",
        "confirm:single",
        "confirm:trial 3",
    ]
    assert [j.log_label(9) for j in order] == [
        "warmstart",
        "single",
        "shared",
        "trial 9",
        "trial 9",
        "confirm single (seed 5)",
        "confirm trial 3 (seed 5)",
    ]
    search, seed5 = Baseline("single").reference, ConfirmRun("single", 5).reference
    assert search is not None and search.own and not search.confirm
    assert seed5 is not None and seed5.own and seed5.confirm and seed5.seed == 5
    assert ConfirmRun("single", 5).is_reference_for(seed5) and not ConfirmRun("single", 6).is_reference_for(seed5)
    assert Baseline("single").is_reference_for(search) and not Baseline("shared").is_reference_for(search)
    assert WarmStartJob().reference is None and not WarmStartJob().scored


def test_a_trial_of_an_unknown_kind_names_it_and_the_fix_in_one_line():
    study = optuna.create_study()
    study.enqueue_trial({"job": "nope"}, user_attrs={"job": "nope", "size": 1})
    with pytest.raises(JobError) as e:
        Job.of(study.trials[0])
    message = str(e.value)
    assert "\n" not in message and "trial 0" in message and "'nope'" in message and "--plugin" in message
    assert "slot" in message  # the registered kinds


# ---- a new kind of trial: one class, registered from outside the package ------------------------


@register_job("toy_test")
@dataclasses.dataclass(frozen=True)
class Toy(PlanJob):
    """Trains the single-task plan from scratch, before everything else, with a label of its own."""

    size: int = 1

    @property
    def queue_rank(self) -> int:
        return -1  # before the warm start

    def needs(self, ctx: JobContext) -> list:
        return []  # nothing first (its Delta-m waits for the single-task reference: ``measures``)

    def plan(self, ctx: JobContext, trial: optuna.Trial) -> Sampled:
        return Sampled(ctx.exp.baseline_plan("single"), {}, None, "scratch")

    def table_label(self, trial) -> str:
        return f"toy:{self.size}"

    def log_label(self, number: int) -> str:
        return f"toy {self.size}"


def _tiny() -> Recipe:
    d = tiny_recipe().to_dict()
    d["data"].update(train_length=8, val_length=4)
    return Recipe.from_dict(d)


def test_a_job_registered_outside_the_package_runs_in_a_study(tmp_path):
    assert JOBS["toy_test"] is Toy and Toy.keys == ("job", "size")
    url = f"sqlite:///{tmp_path}/toy.db"
    settings = StudySettings(study="toy", storage=url, trials=0, baselines=["single"], confirm_seeds=0)
    study = prepare_study(_tiny(), settings)
    Toy(size=3).enqueue(study)  # queued last
    lines: list[str] = []
    # the toy first (its rank), then inside it the single-task reference its Delta-m waits for,
    # and inside that the warm start it begins from: this worker runs what it waits for
    assert run_worker("toy", url, device="cpu", log=lines.append) == 1
    assert [line.split(":")[0] for line in lines if "started" in line] == ["toy 3", "single", "warmstart"]
    assert all(t.state == TrialState.COMPLETE for t in study.get_trials())
    toy = next(t for t in study.get_trials() if isinstance(Job.of(t), Toy))
    assert toy.user_attrs["job"] == "toy_test" and Job.of(toy) == Toy(size=3)
    assert toy.state == TrialState.COMPLETE
    record = TrialRecord(toy)
    assert record.plan is not None and record.plan["at"] == [] and record.column_init == "scratch"
    assert record.metrics and record.delta_m == toy.values[0]  # measured against the single-task reference
    out = io.StringIO()
    Console(file=out, width=250).print(trials_table(study))
    row = next(line for line in out.getvalue().splitlines() if "toy:3" in line)
    assert "complete" in row
    copy = queued_copy(toy, {})  # what an accident's retry queues: the same job
    assert copy.user_attrs == {"job": "toy_test", "size": 3} and Job.of(copy) == Toy(size=3)
