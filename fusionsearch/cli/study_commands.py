"""The commands about studies: ``run`` and ``compare`` (a whole study: ``search.run_study``),
``worker`` (join one), ``trials``, ``best`` and ``report`` (read one), and ``dashboard``. Each
parses, calls the library, and prints; the rules (two tasks, the sampler for several objectives,
the confirmation, the atomic export) are the library's."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fusionsearch.cli.core import app, console, note, on_interrupt, quiet_optuna, runs_study, say
from fusionsearch.cli.options import (
    ArtifactsOpt,
    DataOpt,
    DeterministicOpt,
    DevicesOpt,
    LabelledOpt,
    PluginOpt,
    RecipeOpt,
    SizeOpt,
    StorageOpt,
    StudyOpt,
    TimeoutOpt,
    WorkersOpt,
    at_least,
    check_port,
    check_seed,
    check_worker_index,
    devices_for,
    load_recipe_with,
    parse_labelled,
    use_plugins,
)
from fusionsearch.paths import check_out

__all__ = ["run", "compare", "worker", "trials", "best", "report", "dashboard"]

_Str = str | None
_Int = int | None
RunBackboneOpt = Annotated[_Str, typer.Option("--backbone", "-b", help="timm model name (default: the recipe's)")]
RunTasksOpt = Annotated[_Str, typer.Option(help="comma separated tasks, e.g. seg,normal")]
TrialsOpt = Annotated[_Int, typer.Option(help="sampled trials after the baselines (default: the recipe's)")]
RunStudyOpt = Annotated[_Str, typer.Option(help="study name (default from recipe, backbone, tasks): rerun resumes")]
SamplerOpt = Annotated[
    _Str, typer.Option(help="tpe, nsga2, random, or grid (every combination of the recipe's choice lists)")
]
PrunerOpt = Annotated[
    _Str,
    typer.Option(
        help="successive_halving, hyperband, median or none (one objective only: Optuna cannot prune multi-objective)"
    ),
]
ObjectivesOpt = Annotated[
    _Str,
    typer.Option(
        help="delta_m (default), or several: delta_m,params / delta_m,latency (NSGA-II, Pareto front, no pruning)"
    ),
]
RunStepsOpt = Annotated[_Int, typer.Option(help="training steps per trial")]
ReportOpt = Annotated[_Str, typer.Option(help="HTML report path (default STUDY-report.html)")]
RunSeedOpt = Annotated[_Int, typer.Option(help="study seed")]
ConfirmOpt = Annotated[
    _Int,
    typer.Option(
        help="fresh seeds that retrain the winners and baselines after the search (default: the recipe's, 3; 0 skips)"
    ),
]
ConfirmTopOpt = Annotated[_Int, typer.Option(help="searched plans to confirm (default: the recipe's, 2)")]
ConfirmPerOpt = Annotated[
    _Str, typer.Option(help="confirm the top plans for each value of this search parameter, e.g. weighting")
]
KeepNetsOpt = Annotated[
    str, typer.Option(help="trained nets kept as artefacts: confirmed (baselines and confirmed plans) or all")
]
ModeOpt = Annotated[
    _Str,
    typer.Option(
        help="trials (one training per sampled plan) or supernet (one weight-sharing training scores placement x unit,"
        " its best plans then train stand-alone; README The supernet mode); default: the recipe's search.mode"
    ),
]
RunQuietOpt = Annotated[bool, typer.Option("--quiet", help="plain log lines instead of the live view")]
CompareStepsOpt = Annotated[_Int, typer.Option(help="training steps of every row (the same budget for all)")]
CompareTrialsOpt = Annotated[
    _Int, typer.Option(help="searched trials for the 'search_best' row (default: the recipe's)")
]
CompareStudyOpt = Annotated[_Str, typer.Option(help="study name (default RECIPE-compare): rerun resumes")]
OutDirOpt = Annotated[str, typer.Option(help="folder for RECIPE-compare.md and .csv")]
CompareConfirmOpt = Annotated[_Int, typer.Option(help="fresh seeds for every row (default: the recipe's, 3; 0 skips)")]
PlainOpt = Annotated[bool, typer.Option("--quiet", help="plain log lines")]
WorkerDeviceOpt = Annotated[str, typer.Option(help="cpu or cuda:N")]
ThreadsOpt = Annotated[_Int, typer.Option(help="CPU threads for torch")]
WorkerIndexOpt = Annotated[
    _Int,
    typer.Option(
        help="this worker's number in the study (0, 1, ...), which seeds its sampler: give each worker its own"
        " to make a study repeat exactly (default: drawn from the process id)"
    ),
]
SharesDeviceOpt = Annotated[
    bool,
    typer.Option(
        "--shares-device",
        help="other workers train on this GPU too: running out of memory is then an accident (queued again),"
        " not the plan's verdict",
    ),
]
NoBarsOpt = Annotated[bool, typer.Option("--quiet", help="no progress bars")]
TrialsJsonOpt = Annotated[bool, typer.Option("--json", help="one JSON list of trials")]
BestOutOpt = Annotated[str, typer.Option(help="where to write the best plan's network")]
ReportOutOpt = Annotated[str, typer.Option(help="HTML file to write")]
ToDashboardOpt = Annotated[
    bool,
    typer.Option(
        "--to-dashboard", help="also store the figures in the study for optuna-dashboard (writes the storage)"
    ),
]
HostOpt = Annotated[str, typer.Option(help="address to listen on (loopback by default)")]
PortOpt = Annotated[int, typer.Option(help="port")]


def _storage(storage: str | None) -> str:
    from fusionsearch.search.storage import DEFAULT_STORAGE

    return DEFAULT_STORAGE if storage is None else storage


@app.command()
def run(
    recipe: RecipeOpt = "quick",
    backbone: RunBackboneOpt = None,
    tasks: RunTasksOpt = None,
    data: DataOpt = None,
    size: SizeOpt = None,
    labelled: LabelledOpt = None,
    trials: TrialsOpt = None,
    timeout: TimeoutOpt = None,
    study: RunStudyOpt = None,
    storage: StorageOpt = None,
    workers: WorkersOpt = 1,
    devices: DevicesOpt = "auto",
    sampler: SamplerOpt = None,
    pruner: PrunerOpt = None,
    objectives: ObjectivesOpt = None,
    steps: RunStepsOpt = None,
    report: ReportOpt = None,
    artifacts: ArtifactsOpt = None,
    seed: RunSeedOpt = None,
    confirm: ConfirmOpt = None,
    confirm_top: ConfirmTopOpt = None,
    confirm_per: ConfirmPerOpt = None,
    keep_nets: KeepNetsOpt = "confirmed",
    deterministic: DeterministicOpt = False,
    mode: ModeOpt = None,
    quiet: RunQuietOpt = False,
    plugin: PluginOpt = None,
) -> None:
    """Run an architecture search: warm start and baselines first, then sampled plans with pruning,
    then the winners and baselines confirmed over fresh seeds; resumable."""
    from fusionsearch.experiment import Experiment
    from fusionsearch.report.html import write_report
    from fusionsearch.report.leaderboard import print_summary, search_title
    from fusionsearch.search import StudySettings, run_study

    runs_study()
    for flag, value, low in (("--steps", steps, 1), ("--trials", trials, 0), ("--timeout", timeout, 0)):
        at_least(flag, value, low)
    check_seed(seed)
    r = load_recipe_with(recipe, backbone, tasks, data, size, labelled=labelled, plugins=plugin)
    on = devices_for(devices, workers)
    train = {"steps": steps} if steps is not None else {}
    r.train = {**r.train, **train, **({"deterministic": True} if deterministic else {})}  # workers elsewhere too
    r.search = {**r.search, **({"mode": mode} if mode else {})}
    exp = Experiment(r, seed)  # the study seed: --seed, else the recipe's
    settings = StudySettings.from_recipe(
        r, study=study, storage=storage, trials=trials, timeout=timeout, sampler=sampler, pruner=pruner,
        objectives=objectives.split(",") if objectives else None, artifacts=artifacts, seed=seed,
        confirm_top=confirm_top, confirm_seeds=confirm, confirm_per=confirm_per, keep_nets=keep_nets,
        labelled=parse_labelled(labelled), experiment=exp,
    )  # fmt: skip
    out = Path(report or f"{settings.study}-report.html")
    check_out(str(out), "--report")
    done = run_study(r, settings, on, quiet=quiet, console=console, log=say, note=note, experiment=exp)
    print_summary(done.study, console, search_title(done.study), compact=True)
    write_report(done.study, out, settings.storage, artifacts, to_dashboard=True)
    say(f"report: {out}")


@app.command()
def compare(
    recipe: RecipeOpt = "quick",
    data: DataOpt = None,
    size: SizeOpt = None,
    labelled: LabelledOpt = None,
    steps: CompareStepsOpt = None,
    trials: CompareTrialsOpt = None,
    study: CompareStudyOpt = None,
    storage: StorageOpt = None,
    workers: WorkersOpt = 1,
    devices: DevicesOpt = "auto",
    out: OutDirOpt = ".",
    artifacts: ArtifactsOpt = None,
    confirm: CompareConfirmOpt = None,
    quiet: PlainOpt = False,
    plugin: PluginOpt = None,
) -> None:
    """Train the rows of the paper's table (single-task, multi-task baseline, cross-stitch, sluice,
    NDDR, our search's best) under one budget; print them next to the paper's numbers."""
    from fusionsearch.errors import MissingDataError
    from fusionsearch.experiment import Experiment
    from fusionsearch.report.compare import build_comparison, comparison_settings, paper_comparison
    from fusionsearch.search import run_study

    runs_study()
    at_least("--steps", steps, 1)
    at_least("--trials", trials, 0)
    check_out(out, "--out", folder=True)
    r = load_recipe_with(recipe, None, None, data, size, labelled=labelled, plugins=plugin)
    on = devices_for(devices, workers)
    if steps is not None:
        r.train = {**r.train, "steps": steps}
    exp = Experiment(r)  # the recipe's seed, the comparison study's
    try:
        settings = comparison_settings(
            r, study=study, storage=storage, trials=trials, artifacts=artifacts, confirm_seeds=confirm,
            labelled=parse_labelled(labelled), experiment=exp,
        )  # fmt: skip
    except MissingDataError as e:  # no data here: the paper's numbers alone, said so, and exit 2
        Console(width=max(console.width, 160)).print(paper_comparison(r, "no data on this machine", exp).rich())
        raise MissingDataError(f"{e}: the table above is the paper's alone; give the data with --data NAME:PATH") from e
    what = "grid points" if settings.sampler == "grid" else "searched trials"
    title = f"comparison {settings.study}: rows {', '.join(settings.baselines)} + {settings.trials} {what}"
    done = run_study(r, settings, on, title=title, quiet=quiet, console=console, log=say, note=note, experiment=exp)
    table = build_comparison(done.study, r, exp)
    Console(width=max(console.width, 160)).print(table.rich())
    say(table.convention)
    md, csv_path = table.save(out, r.name)
    say(f"written: {md}, {csv_path}")


@app.command()
def worker(
    study: StudyOpt,
    storage: StorageOpt = None,
    device: WorkerDeviceOpt = "auto",
    timeout: TimeoutOpt = None,
    threads: ThreadsOpt = None,
    artifacts: ArtifactsOpt = None,
    worker_index: WorkerIndexOpt = None,
    shares_device: SharesDeviceOpt = False,
    quiet: NoBarsOpt = False,
    plugin: PluginOpt = None,
) -> None:
    """Join a study (from this or another machine) and run its queued trials on one device."""
    import torch

    from fusionsearch.search import run_worker
    from fusionsearch.train.devices import check_device

    runs_study()
    use_plugins(plugin)  # before the study: its stored plugins may be found here under another path
    check_device(device)
    at_least("--threads", threads, 1)
    index = check_worker_index(worker_index)
    if threads:
        torch.set_num_threads(threads)
    n = run_worker(
        study, _storage(storage), device=device, timeout=timeout, artifacts=artifacts, progress=not quiet, log=say,
        # workers started by hand without an index spread over the GPUs (--device auto)
        worker=index,
        shares_device=shares_device,
    )  # fmt: skip
    say(f"worker done: {n} trials")


@app.command()
def trials(
    study: StudyOpt, storage: StorageOpt = None, as_json: TrialsJsonOpt = False, plugin: PluginOpt = None
) -> None:
    """A table of the study's trials (plan, metrics, Delta-m, state, failure reason) and the
    confirmation: mean ± 95% interval per plan and the paired test against the best baseline."""
    from fusionsearch.report.leaderboard import print_summary, trial_rows
    from fusionsearch.search import load_study

    quiet_optuna()
    use_plugins(plugin)  # the study's plugins, where they live elsewhere on this machine
    st, _, _ = load_study(study, _storage(storage))
    if as_json:
        console.print_json(json.dumps(trial_rows(st), default=str))
        return
    print_summary(st, console, width=200)


@app.command()
def best(
    study: StudyOpt,
    storage: StorageOpt = None,
    out: BestOutOpt = "best.pt",
    artifacts: ArtifactsOpt = None,
    plugin: PluginOpt = None,
) -> None:
    """Export the network of the plan that is best after confirmation (the highest mean Delta-m over
    the fresh seeds), or of the best single run when the study ran no confirmation."""
    from fusionsearch.report.export import export_best

    quiet_optuna()
    use_plugins(plugin)
    say(export_best(study, out, _storage(storage), artifacts, flag="--out").describe())


@app.command()
def report(
    study: StudyOpt,
    storage: StorageOpt = None,
    out: ReportOutOpt = "report.html",
    artifacts: ArtifactsOpt = None,
    to_dashboard: ToDashboardOpt = False,
    plugin: PluginOpt = None,
) -> None:
    """Write the study's HTML report (history, importances, Pareto front, parallel coordinates,
    placement map, learned fusion weights). Only reads the study, unless --to-dashboard."""
    from fusionsearch.report.html import write_report
    from fusionsearch.search import load_study

    quiet_optuna()
    use_plugins(plugin)
    url = _storage(storage)
    st, _, _ = load_study(study, url)
    say(f"report: {write_report(st, out, url, artifacts, to_dashboard=to_dashboard)}")


@app.command()
def dashboard(
    storage: StorageOpt = None, host: HostOpt = "127.0.0.1", port: PortOpt = 8080, artifacts: ArtifactsOpt = None
) -> None:
    """Serve optuna-dashboard on the storage, with the trials' artefacts."""
    from optuna_dashboard import run_server

    from fusionsearch.search.storage import artifact_store, open_storage, redact

    on_interrupt("dashboard stopped")  # Ctrl-C is how it ends
    url = _storage(storage)
    st = open_storage(url, heartbeat=False, create=False)
    check_port(host, port)
    say(f"optuna-dashboard for {redact(url)} on http://{host}:{port}/ (Ctrl-C stops)")
    _serve(run_server, st, host=host, port=port, artifact_store=artifact_store(url, artifacts))


def _serve(serve: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Run a server that never returns in a daemon thread, while the main thread waits: a server
    has no safe point, and a Ctrl-C or SIGTERM landing in its request handler (which catches every
    exception) would be taken and never acted on; in the main thread's wait it always is."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            serve(*args, **kwargs)
        except BaseException as e:  # handed to the main thread, which raises it
            failed.append(e)

    serving = threading.Thread(target=run, name="dashboard", daemon=True)
    serving.start()
    while serving.is_alive():
        serving.join(0.5)
    if failed:
        raise failed[0]
