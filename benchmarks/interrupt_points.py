"""Ctrl-C at random points of a 4-trial study (issue 34), in both search modes.

Each point starts ``fusionsearch run`` on a fresh database, waits until its first trial runs,
sends SIGINT after a random delay within the study's span, and checks that the command exits
130 with one line and starts no trial after the signal. The same command then runs again and
must complete the study with the trials an uninterrupted run has: ``trials --json``'s rows, with
each copy queued again after the interruption standing in for the trial it copies, must give the
same jobs, plans, parameters and values.

    python benchmarks/interrupt_points.py                 # 20 points per mode, seed 0
    python benchmarks/interrupt_points.py --points 5 --modes supernet

On a CPU the tiny recipe (test_resnet, 32 px, 4 steps) takes 20-30 s a run; each point runs it
about 1.5 times.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
STUDY = {"trial": "tiny-test_resnet-seg-normal", "supernet": "tiny-test_resnet-seg-normal-supernet"}
HEADER = "| mode | Ctrl-C at (s) | exit | exit after (s) | trials started after | rerun exit | same trials | verdict |"
COMPARED = ("kind", "state", "plan", "params", "values", "metrics", "seed")


def write_recipe(folder: Path, mode: str, confirm: int = 1) -> Path:
    """The tiny recipe of the tests (``tests/helpers.tiny_recipe``) with 4 trials."""
    from fusionsearch.experiment.recipe import load_recipe

    quick = load_recipe("quick")
    search = {k: v for k, v in quick.search.items() if not k.startswith("finetune")}
    if mode == "supernet":
        search.update(mode="supernet", supernet_plans=6, supernet_score_steps=2)
    recipe = quick.with_overrides(
        name="tiny",
        backbone="test_resnet",
        data={"name": "synthetic", "size": 32, "train_length": 16, "val_length": 4},
        train={"steps": 4, "batch_size": 4, "base_lr": 0.002, "optimizer": "adamw", "eval_every": 2},
        search=search,
        study={"trials": 4},
        confirm={"top": 1, "seeds": confirm},
    )
    path = folder / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(recipe.to_dict()))
    return path


def command(recipe: Path, db: Path) -> list[str]:
    return [sys.executable, "-m", "fusionsearch.cli", "run", "--recipe", str(recipe), "--storage", f"sqlite:///{db}"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}


def run(cmd: list[str], cwd: Path) -> tuple[int, str, float]:
    began = time.monotonic()
    out = subprocess.run([*cmd, "--quiet"], cwd=cwd, capture_output=True, text=True, env=_env(), timeout=900)
    return out.returncode, out.stderr, time.monotonic() - began


def _first_start(db: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM trials WHERE datetime_start IS NOT NULL").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def interrupt(cmd: list[str], cwd: Path, db: Path, delay: float) -> dict[str, Any]:
    """Run ``cmd``; ``delay`` seconds after its first trial starts, send SIGINT."""
    proc = subprocess.Popen(
        [*cmd, "--quiet"],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        # a shell that started us in the background ignores SIGINT in its children: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    while proc.poll() is None and not _first_start(db):
        time.sleep(0.05)
    time.sleep(delay)
    sent, at = proc.poll() is None, datetime.datetime.now()
    began = time.monotonic()
    if sent:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    lines = [line for line in err.splitlines() if line.strip()]
    return {"sent": sent, "at": at, "rc": proc.returncode, "lines": lines, "exit_s": time.monotonic() - began}


def started_after(db: Path, study: str, at: datetime.datetime) -> int:
    """Trials of ``study`` that started after ``at`` (the signal)."""
    import optuna

    st = optuna.load_study(study_name=study, storage=f"sqlite:///{db}")
    return sum(t.datetime_start is not None and t.datetime_start > at for t in st.get_trials(deepcopy=False))


def _all_done(db: Path, study: str) -> bool:
    import optuna

    st = optuna.load_study(study_name=study, storage=f"sqlite:///{db}")
    return all(t.state.is_finished() for t in st.get_trials(deepcopy=False))


def jobs(db: Path, study: str) -> dict[Any, dict[str, Any]]:
    """``trials --json``'s rows by job: a copy queued again stands in for the trial it copies and
    takes its number; the confirmation, queued after the search (its numbers come after the
    copies'), is keyed by what it confirms and its seed, a copied trial by its first number."""
    from fusionsearch.report.leaderboard import trial_rows
    from fusionsearch.search import load_study

    rows = trial_rows(load_study(study, f"sqlite:///{db}")[0])
    by_number = {r["number"]: r for r in rows}

    def first(n: int) -> int:
        while by_number[n]["retry_of"] is not None:
            n = by_number[n]["retry_of"]
        return n

    copied = {r["retry_of"] for r in rows if r["retry_of"] is not None}
    out: dict[Any, dict[str, Any]] = {}
    for r in rows:
        if r["number"] in copied:
            continue
        row = {k: r[k] for k in COMPARED}
        if str(r["kind"]).startswith("confirm:"):
            row["kind"] = re.sub(r"trial (\d+)", lambda m: f"trial {first(int(m[1]))}", r["kind"])
            out[(row["kind"], r["seed"])] = row
        else:
            out[first(r["number"])] = row
    return out


def differences(a: dict[Any, dict[str, Any]], b: dict[Any, dict[str, Any]]) -> list[str]:
    out = [f"job {n}: only in one run" for n in sorted(set(a) ^ set(b), key=str)]
    for n in sorted(set(a) & set(b), key=str):
        out += [f"job {n}: {k} {a[n][k]!r} != {b[n][k]!r}" for k in COMPARED if a[n][k] != b[n][k]]
    return out


def reference(folder: Path, mode: str, confirm: int = 1) -> tuple[Path, dict[Any, dict[str, Any]], float]:
    """An uninterrupted run: its recipe, its rows by job, and the seconds from its first trial's
    start to its end (the study's span, where the points fall)."""
    import optuna

    folder.mkdir(parents=True, exist_ok=True)
    recipe = write_recipe(folder, mode, confirm)
    began = datetime.datetime.now()
    rc, err, seconds = run(command(recipe, folder / "ref.db"), folder)
    if rc != 0:
        raise RuntimeError(f"the uninterrupted {mode} run failed: {err[-2000:]}")
    trials = optuna.load_study(study_name=STUDY[mode], storage=f"sqlite:///{folder / 'ref.db'}").get_trials()
    first = min(t.datetime_start for t in trials if t.datetime_start is not None)
    return recipe, jobs(folder / "ref.db", STUDY[mode]), seconds - (first - began).total_seconds()


def point(folder: Path, recipe: Path, mode: str, delay: float, ref: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    """One Ctrl-C ``delay`` seconds into the study, then the same command again."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "p.db"
    cmd = command(recipe, db)
    stop = interrupt(cmd, folder, db, delay)
    late = started_after(db, STUDY[mode], stop["at"]) if stop["sent"] and db.exists() else 0
    rc, err, _ = run(cmd, folder)
    diff = differences(ref, jobs(db, STUDY[mode])) if rc == 0 else [f"rerun exit {rc}: {err[-300:]}"]
    one_line = stop["lines"] == ["interrupted: the running trial is queued again; run the same command to resume"]
    # -SIGINT: the signal came while the interpreter shut down after the command had ended (Python
    # puts the default handler back then); a shell shows 130 all the same
    at_exit = stop["rc"] == -signal.SIGINT and not stop["lines"] and _all_done(db, STUDY[mode])
    stopped = (stop["rc"] == 130 and one_line) or at_exit
    ok = (not stop["sent"] or (stopped and late == 0)) and rc == 0 and not diff
    return {**stop, "mode": mode, "delay": delay, "late": late, "rerun": rc, "diff": diff, "ok": ok}


def _row(r: dict[str, Any]) -> str:
    same = "yes" if not r["diff"] else f"no ({len(r['diff'])} differences)"
    exit_ = r["rc"] if r["sent"] else "finished first"
    exit_ = "-2 (at its exit)" if exit_ == -signal.SIGINT else exit_
    verdict = "ok" if r["ok"] else "FAIL"
    cells = [r["mode"], f"{r['delay']:.1f}", exit_, f"{r['exit_s']:.1f}", r["late"], r["rerun"], same, verdict]
    return "| " + " | ".join(map(str, cells)) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", nargs="+", default=["trial", "supernet"], choices=["trial", "supernet"])
    ap.add_argument("--folder", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    import tempfile

    base = Path(args.folder or tempfile.mkdtemp(prefix="interrupt-points-"))
    rng = random.Random(args.seed)
    rows = []
    for mode in args.modes:
        recipe, ref, span = reference(base / mode, mode)
        print(f"{mode}: {len(ref)} jobs, {span:.1f} s from the first trial's start to the end; Ctrl-C within them")
        print(HEADER + "\n" + "| --- " * 8 + "|")
        for i in range(args.points):
            rows.append(point(base / mode / f"p{i}", recipe, mode, rng.uniform(0, span), ref))
            print(_row(rows[-1]), flush=True)
    print("\n" + HEADER + "\n" + "| --- " * 8 + "|")
    for r in rows:
        print(_row(r))
    for r in (r for r in rows if not r["ok"]):
        print(f"\n{r['mode']} at {r['delay']:.1f} s: stderr {r['lines'][-3:]}")
        for d in r["diff"][:3]:
            print(f"  {d[:400]}")
    print(f"\n{sum(r['ok'] for r in rows)} of {len(rows)} points ok (folder {base})")


if __name__ == "__main__":
    main()
