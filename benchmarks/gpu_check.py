"""The GPU check: one command to run the moment a GPU machine is available. It exercises the CUDA
paths that the CPU tests can only simulate, and prints what it measured as Markdown tables (the
machine, one row per measurement, each section's wall time against its budget) to paste into the
README; progress lines go to stderr.

    python benchmarks/gpu_check.py --device cuda:0          # realistic sizes, < 8 min on one H200-class GPU
    python benchmarks/gpu_check.py --device cpu --tiny      # CI: timm's test_resnet, tiny sizes, < 1 min on 2 cores

Options: ``--out FILE.json`` also writes every row (with its raw numbers) as JSON; ``--sections
step_time,rerun`` runs a subset. The default device is ``cuda:0`` when CUDA is available, else the
CPU. A device this machine lacks, an ``--out`` that cannot be written or an unknown section is one
``error:`` line and exit 2 before any work, as in ``fusionsearch``'s commands. Without ``--tiny``
the nets are resnet50 at 288 x 384 (NYUv2's MTAN size), batch 8, and the study is the quick recipe
(resnet18 at 64 px) with 4 sampled trials and a 2-seed confirmation (``--trials 4 --confirm 2
--timeout 120``); with ``--tiny``, test_resnet at 32 x 48, batch 4, and the quick recipe shrunk to
test_resnet at 32 px, 4 warm-start steps, 2 sampled trials of 2 steps, no confirmation, and one
torch thread in this process.

Sections (each independent: an exception becomes a ``FAILED: ...`` row and the next one runs; the
exit status is 1 if any row failed, else 0; each section has a time budget, and rows left when it
is spent are listed as skipped):

- ``study``: the real ``fusionsearch run`` as a subprocess, 2 workers on the one device (``--devices
  D,D``), SQLite storage in a temporary folder; wall time, exit code, trials complete / pruned /
  failed, read back from the storage with Optuna.
- ``step_time``: ``fit``'s whole optimiser steps (forward, both task losses, backward, step) of a
  2-task net with NDDR at every stage boundary, for AMP off/on x channels_last off/on, after
  warm-up steps; the step boundaries are the times ``fit``'s own loader reads each batch (in its
  process), with the device synchronised there.
- ``loader``: a small NYUv2 written in MTAN's on-disk layout, read through ``train.train_loader``
  (``fit``'s loader: the seeded order, each item's seeded flip) with 0 and with N worker
  processes: batches per second against the step rate of ``step_time``, whether the batches are
  the same for every worker count, and what ``num_workers=None`` resolves to here.
- ``memory``: peak allocated memory over a few training steps of each plan (single, NDDR,
  cross-stitch, sluice, NDDR + shortcut, split at a middle boundary, fully shared); on the CPU
  ``n/a (cpu)``, the steps still run and are timed.
- ``rerun``: one plan (NDDR + shortcut) trained 3 times on one seed with ``deterministic`` off and
  3 times with it on: standard deviation and largest difference of the final loss and of the
  normals' mean angle error. Both are 0 on the CPU; on a GPU the default mode's are expected above
  0 and the deterministic mode's must be 0 (a FAILED row otherwise).
- ``weightings``: every registered weighting method for 3 steps of ``fit``, under AMP on a GPU
  (fp32 on the CPU, ``fit``'s default there): ok or FAILED, and milliseconds per step.

``GPU_CHECK_FAIL=SECTION`` (a section name, or several, comma separated) makes that section raise
at its start: how the test checks that a failure is reported and the other sections still run.
"""

from __future__ import annotations

# isort: off
import fusionsearch as fs  # before torch: it sets OMP_WAIT_POLICY=PASSIVE for torch's threads

# isort: on
import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import timm
import torch
import yaml
from torch.utils.data import Dataset

from fusionsearch.errors import FusionSearchError
from fusionsearch.paths import check_out
from fusionsearch.tasks.task import Task, get_task
from fusionsearch.train.config import TrainConfig
from fusionsearch.train.devices import use_device
from fusionsearch.train.precision import amp_dtype
from fusionsearch.train.trainer import fit

SECTIONS = ("study", "step_time", "loader", "memory", "rerun", "weightings")
FAIL_ENV = "GPU_CHECK_FAIL"
NUM_CLASSES = 13  # NYUv2's MTAN classes


@dataclass
class Sizes:
    """How big each section's work is: ``TINY`` for CI on 2 CPU cores, ``FULL`` for a GPU."""

    backbone: str
    size: tuple[int, int]  # (H, W)
    batch: int
    warmup: int  # step_time: untimed steps before the timed ones
    timed: int
    memory_steps: int
    rerun_steps: int
    rerun_repeats: int
    weighting_steps: int
    loader_images: int  # NYUv2 fixture: training images written
    loader_native: tuple[int, int]  # their size on disk (resized to ``size`` when read)
    loader_batches: int
    loader_workers: tuple[int, ...]
    budgets: dict[str, float]  # seconds per section


TINY = Sizes(
    backbone="test_resnet",
    size=(32, 48),
    batch=4,
    warmup=1,
    timed=3,
    memory_steps=2,
    rerun_steps=3,
    rerun_repeats=3,
    weighting_steps=3,
    loader_images=8,
    loader_native=(64, 96),
    loader_batches=10,
    loader_workers=(0, 2),
    budgets={"study": 50, "step_time": 20, "loader": 20, "memory": 20, "rerun": 20, "weightings": 30},
)
FULL = Sizes(
    backbone="resnet50",
    size=(288, 384),
    batch=8,
    warmup=3,
    timed=15,
    memory_steps=4,
    rerun_steps=12,
    rerun_repeats=3,
    weighting_steps=3,
    loader_images=32,
    loader_native=(288, 384),
    loader_batches=24,
    loader_workers=(0, 4, 8),
    # 435 s of budgets, < 8 min with the start-up; the study stops starting trials at 120 s
    budgets={"study": 180, "step_time": 40, "loader": 40, "memory": 50, "rerun": 60, "weightings": 65},
)


@dataclass
class Row:
    """One measurement: ``result`` is the headline (``FAILED: ...`` for a failure), ``data`` the raw numbers."""

    section: str
    name: str
    result: str
    detail: str = ""
    status: str = "ok"  # ok, FAILED or skipped
    data: dict[str, Any] = field(default_factory=dict)


class Check:
    """What the sections share: the device, the sizes, a scratch folder, built nets, measurements."""

    def __init__(self, device: torch.device, sizes: Sizes, tiny: bool, scratch: Path) -> None:
        self.device = device
        self.sizes = sizes
        self.tiny = tiny
        self.scratch = scratch
        self.cuda = device.type == "cuda"
        self.rows: list[Row] = []
        self.section = ""
        self.section_start = 0.0
        self.step_s: float | None = None  # fit's default configuration, from step_time
        self._graph: Any = None
        self._nets: dict[str, fs.StitchedNet] = {}

    # ---- rows and budgets

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(f"[{row.section}] {row.name}: {row.result}" + (f" ({row.detail})" if row.detail else ""), file=sys.stderr)
        return row

    def attempt(self, name: str, measure: Callable[[], Row]) -> Row:
        """``measure()``'s row, a FAILED row if it raised, or a skipped row once the section's budget is spent."""
        budget = self.sizes.budgets[self.section]
        spent = time.perf_counter() - self.section_start
        if spent > budget:
            return self.add(Row(self.section, name, f"skipped: section budget of {budget:g} s spent", status="skipped"))
        try:
            return self.add(measure())
        except Exception as e:
            return self.add(Row(self.section, name, f"FAILED: {one_line(e)}", status="FAILED"))
        finally:
            release(self.device)

    # ---- nets and data

    def boundaries(self) -> list[str]:
        if self._graph is None:
            self._graph = fs.trace(self.sizes.backbone, (3, *self.sizes.size))
        return [b.name for b in self._graph.boundaries]

    def plans(self) -> dict[str, fs.StitchPlan]:
        b = self.boundaries()
        return {
            "single": fs.StitchPlan(at=[]),
            "nddr": fs.StitchPlan(at=b, unit="nddr"),
            "cross_stitch": fs.StitchPlan(at=b, unit="cross_stitch"),
            "sluice": fs.StitchPlan(at=b, unit="sluice"),
            "nddr+shortcut": fs.StitchPlan(at=b, unit="nddr", shortcut=True),
            f"split@{b[len(b) // 2]}": fs.StitchPlan(at=[], shared_prefix=b[len(b) // 2]),
            "shared": fs.StitchPlan(at=[], shared_prefix=b[-1]),
        }

    def net(self, plan: str) -> fs.StitchedNet:
        """A fresh copy of the plan's net (built once, on the CPU, from seed 0): ``fit`` changes it."""
        if plan not in self._nets:
            torch.manual_seed(0)
            self._nets[plan] = fs.build(
                self.sizes.backbone,
                {"seg": NUM_CLASSES, "normal": 3},
                self.plans()[plan],
                input_size=(3, *self.sizes.size),
                init_seed=0,
            )
        return copy.deepcopy(self._nets[plan])

    def params(self, plan: str) -> int:
        self.net(plan)
        return sum(p.numel() for p in self._nets[plan].parameters())

    def items(self, n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
        """``n`` random in-memory items (image, 13-class seg, unit normals): step times without data cost."""
        gen = torch.Generator().manual_seed(seed)
        h, w = self.sizes.size
        return [
            {
                "image": torch.randn(3, h, w, generator=gen),
                "seg": torch.randint(0, NUM_CLASSES, (h, w), generator=gen),
                "normal": torch.nn.functional.normalize(torch.randn(3, h, w, generator=gen), dim=0),
            }
            for _ in range(n)
        ]

    def timed_fit(self, plan: str, steps: int, **cfg: Any) -> tuple[list[float], dict[str, Any], float]:
        """``fit`` ``plan`` for ``steps`` on in-memory data: each step's seconds, the history, the wall time."""
        data = Clocked(self.items(2 * self.sizes.batch), self.sizes.batch, self.device)
        val = cfg.pop("val", None)
        config = TrainConfig(
            steps=steps,
            batch_size=self.sizes.batch,
            optimizer="adamw",
            base_lr=1e-3,
            eval_every=steps,
            progress=False,
            num_workers=0,  # the loader in this process: its reads mark the step boundaries
            **cfg,
        )
        net = self.net(plan)
        sync(self.device)
        start = time.perf_counter()
        history = fit(net, tasks(), data, val, config, device=self.device)
        sync(self.device)
        end = time.perf_counter()
        marks = [*data.marks, end]
        return [b - a for a, b in zip(marks, marks[1:])], history, end - start


class Clocked(Dataset):
    """In-memory items that note the time at which each batch's first item is read, with the device
    synchronised first. With ``fit``'s loader in its own process, the gaps between those times are
    its whole optimiser steps (the next batch's read and collation included, as in training)."""

    in_memory = True  # ``loader_workers``: no loader processes for it

    def __init__(self, items: list[dict[str, torch.Tensor]], batch: int, device: torch.device) -> None:
        self.items, self.batch, self.device = items, batch, device
        self.reads = 0
        self.marks: list[float] = []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.reads % self.batch == 0:
            sync(self.device)
            self.marks.append(time.perf_counter())
        self.reads += 1
        return self.items[index]


def tasks() -> dict[str, Task]:
    return {"seg": get_task("seg", out_channels=NUM_CLASSES), "normal": get_task("normal")}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def one_line(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    text = f"{type(e).__name__}: {first}" if first else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> tuple[float, float]:
    """Sample standard deviation and largest difference (0 and 0 for identical values)."""
    if len(values) < 2:
        return 0.0, 0.0
    return statistics.stdev(values), max(values) - min(values)


def default_amp(device: torch.device) -> bool:
    """What ``TrainConfig(amp=None, channels_last=None)`` picks on ``device``: both on for CUDA."""
    return device.type == "cuda"


def amp_name(device: torch.device) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype(device)]


# ---- sections ---------------------------------------------------------------------------------


def section_study(check: Check) -> None:
    """``fusionsearch run`` with 2 workers on the one device, as a user starts it."""
    folder = check.scratch / "study"
    folder.mkdir()
    storage = f"sqlite:///{folder / 'study.db'}"
    dev = str(check.device)
    if check.tiny:
        recipe = str(tiny_recipe(folder / "gpu_check_tiny.yaml"))
        shrink = ["--trials", "2", "--confirm", "0"]
    else:
        recipe = "quick"  # resnet18 at 64 px: warm start, 3 baselines, sampled trials, confirmation
        shrink = ["--trials", "4", "--confirm", "2", "--timeout", "120"]
    cmd = [sys.executable, "-m", "fusionsearch.cli", "run", "--recipe", recipe, *shrink]
    cmd += ["--workers", "2", "--devices", f"{dev},{dev}", "--storage", storage, "--study", "gpu_check"]
    cmd += ["--artifacts", str(folder / "artifacts"), "--report", str(folder / "report.html"), "--quiet"]
    budget = check.sizes.budgets["study"]
    name = f"2 workers on {dev},{dev}"

    def measure() -> Row:
        rc, out, wall = run_subprocess(cmd, folder, timeout=budget - 5)
        counts = study_counts(storage)
        detail = ", ".join(f"{n} {state}" for state, n in counts.items() if n or state != "other")
        data: dict[str, Any] = {"rc": rc, "wall_s": wall, "trials": counts, "command": " ".join(cmd[1:])}
        bad = rc != 0 or counts["failed"] > 0 or counts["complete"] == 0 or "exited with an error" in out
        if bad:  # the scratch folder goes at the end: keep the output (and the workers' logs) for --out
            logs = sorted((folder / "artifacts" / "logs").glob("*.log"))
            data["output_tail"] = out.splitlines()[-40:]
            data["worker_logs"] = {p.name: p.read_text(errors="replace").splitlines()[-40:] for p in logs}
        if rc is None:
            return Row("study", name, f"FAILED: no exit after {budget - 5:g} s (killed)",
                       detail, "FAILED", data)  # fmt: skip
        tail = next((ln.strip() for ln in reversed(out.splitlines()) if ln.strip()), "")
        if bad:
            why = f"exit {rc}" + (f", {counts['failed']} trial(s) failed" if counts["failed"] else "")
            return Row("study", name, f"FAILED: {why}: {tail[:160]}", detail, "FAILED", data)
        verdict = next((ln.strip() for ln in out.splitlines() if " beats " in ln), "")
        data["verdict"] = verdict
        detail = f"trials: {detail}" + (f"; {verdict}" if verdict else "")
        return Row("study", name, f"{wall:.1f} s, exit 0", detail, data=data)

    check.attempt(name, measure)


def tiny_recipe(path: Path) -> Path:
    """The quick recipe on test_resnet at 32 px, 4 warm-start steps, 2 fine-tuning steps, 16 scenes."""
    from fusionsearch.experiment.recipe import load_recipe

    d = load_recipe("quick").to_dict()
    d.update(
        name="gpu_check_tiny",
        about="benchmarks/gpu_check.py --tiny: the quick recipe shrunk to seconds on 2 CPU cores",
        backbone="test_resnet",
        data={"name": "synthetic", "size": 32, "train_length": 16, "val_length": 4},
    )
    d["train"] = {**d["train"], "steps": 4, "batch_size": 4, "eval_every": 2}
    d["search"] = {**d["search"], "finetune_steps": 2}
    path.write_text(yaml.safe_dump(d))
    return path


def run_subprocess(cmd: list[str], cwd: Path, timeout: float) -> tuple[int | None, str, float]:
    """Exit code (None: killed at ``timeout``), stdout + stderr, wall seconds. Its own process group,
    so a timeout also ends the worker processes it started."""
    start = time.perf_counter()
    env = {**os.environ, "COLUMNS": "200"}
    with subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    ) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout)
            return proc.returncode, out, time.perf_counter() - start
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                out, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate()
            return None, out, time.perf_counter() - start


def study_counts(storage: str) -> dict[str, int]:
    import optuna

    counts = {"complete": 0, "pruned": 0, "failed": 0, "other": 0}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name="gpu_check", storage=storage)
    except Exception:  # no study made: the command failed before it
        return counts
    names = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}
    for t in study.get_trials(deepcopy=False):
        counts[names.get(t.state.name, "other")] += 1
    return counts


STEP_CONFIGS = ((False, False), (False, True), (True, False), (True, True))


def section_step_time(check: Check) -> None:
    """NDDR at every boundary: fit's step time for AMP x channels_last."""
    s = check.sizes
    times: dict[tuple[bool, bool], float] = {}
    for amp, cl in STEP_CONFIGS:
        name = f"{'AMP ' + amp_name(check.device) if amp else 'fp32'}, {'channels_last' if cl else 'NCHW'}"

        def measure(amp: bool = amp, cl: bool = cl, name: str = name) -> Row:
            steps, _, wall = check.timed_fit("nddr", s.warmup + s.timed, amp=amp, channels_last=cl)
            t = median(steps[s.warmup :])
            times[amp, cl] = t
            base = times.get((False, False))
            vs = f"; x{base / t:.2f} the speed of fp32 NCHW" if base and (amp or cl) else ""
            detail = (
                f"{s.batch / t:.1f} img/s, median of {len(steps) - s.warmup} steps after {s.warmup} warm-up"
                f" (first {ms(steps[0])}){vs}"
            )
            data = {"amp": amp, "channels_last": cl, "step_s": t, "steps_s": steps, "wall_s": wall}
            return Row("step_time", name, f"{ms(t)}/step", detail, data=data)

        row = check.attempt(name, measure)
        if row.status == "ok" and (amp, cl) == (default_amp(check.device),) * 2:
            check.step_s = times[amp, cl]


def write_mtan(root: Path, counts: dict[str, int], hw: tuple[int, int]) -> Path:
    """root/{split}/{image,label,depth,normal}/{i}.npy as MTAN's pre-processed NYUv2 stores them
    (fusionsearch/data/nyuv2.py): image float (H, W, 3) in [0, 1], label (H, W) 0..12 with -1
    unlabelled, depth (H, W, 1) metres with 0 invalid, normal (H, W, 3) unit vectors."""
    rng = np.random.default_rng(0)
    h, w = hw
    for split, n in counts.items():
        for kind in ("image", "label", "depth", "normal"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = rng.integers(0, NUM_CLASSES, size=(h, w)).astype(np.float32)
            label[: h // 8] = -1.0
            depth = rng.uniform(0.5, 9.9, size=(h, w, 1)).astype(np.float32)
            depth[-h // 8 :] = 0.0
            normal = rng.normal(size=(h, w, 3)).astype(np.float32)
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            np.save(root / split / "image" / f"{i}.npy", rng.uniform(0, 1, size=(h, w, 3)).astype(np.float32))
            np.save(root / split / "label" / f"{i}.npy", label)
            np.save(root / split / "depth" / f"{i}.npy", depth)
            np.save(root / split / "normal" / f"{i}.npy", normal)
    return root


def section_loader(check: Check) -> None:
    """NYUv2 from disk through fit's own loader, 0 and N worker processes, against the step time."""
    from fusionsearch.data.nyuv2 import NYUv2
    from fusionsearch.train.loading import loader_workers, train_loader

    s = check.sizes
    root = write_mtan(check.scratch / "nyuv2", {"train": s.loader_images, "val": 2}, s.loader_native)
    data = NYUv2(root, split="train", size=s.size, augment=True)
    reference: list[float] = []
    for workers in s.loader_workers:

        def measure(workers: int = workers) -> Row:
            cfg = TrainConfig(steps=s.loader_batches, batch_size=s.batch, num_workers=workers, seed=0, progress=False)
            start = time.perf_counter()
            loader = train_loader(data, cfg, check.device)
            marks, sums = [], []
            for batch in loader:
                marks.append(time.perf_counter())
                sums.append(float(batch["image"].double().sum()) + float(batch["seg"].double().sum()))
            del loader
            first = marks[0] - start
            rate = (len(marks) - 1) / (marks[-1] - marks[0]) if len(marks) > 1 else float("nan")
            if not reference:
                reference.extend(sums)
            same = sums == reference
            data_ = {"workers": workers, "batches_per_s": rate, "first_batch_s": first, "same_batches": same}
            detail = f"{rate * s.batch:.1f} img/s, first batch after {first:.2f} s"
            if check.step_s is not None:
                ratio = rate * check.step_s
                data_["loader_over_step"] = ratio
                verdict = "keeps up" if ratio >= 1 else "the GPU would wait" if check.cuda else "training would wait"
                detail += f"; x{ratio:.2f} the step rate ({ms(check.step_s)}/step): {verdict}"
            else:
                detail += "; no step time measured (section step_time not run)"
            if workers:
                detail += f"; batches {'the same as' if same else 'DIFFERENT from'} {s.loader_workers[0]} workers"
            status = "ok" if same else "FAILED"
            result = f"{rate:.1f} batches/s" if same else f"FAILED: batches differ from {s.loader_workers[0]} workers"
            return Row("loader", f"{workers} workers", result, detail, status, data_)

        check.attempt(f"{workers} workers", measure)

    def auto() -> Row:
        n = loader_workers(data, TrainConfig(), check.device)
        return Row("loader", "num_workers=None (auto)", f"{n} workers", f"on {check.device}", data={"workers": n})

    check.attempt("num_workers=None (auto)", auto)


def section_memory(check: Check) -> None:
    """Peak memory of a few training steps per plan (fit's defaults for the device), beside the
    memory plan's prediction for it (``fusionsearch.train.memory.plan_memory``: float32, so an
    upper bound where fit trains under AMP; on a GPU the ratio to the measured peak)."""
    from fusionsearch.train.memory import plan_memory

    s = check.sizes
    for plan in check.plans():

        def measure(plan: str = plan) -> Row:
            predicted = plan_memory(check.net(plan), s.batch, (3, *s.size), "adamw").total / 2**20
            before = 0
            if check.cuda:
                release(check.device)
                torch.cuda.reset_peak_memory_stats(check.device)
                before = torch.cuda.memory_allocated(check.device)
            steps, _, _ = check.timed_fit(plan, s.memory_steps)
            params = check.params(plan)
            t = median(steps[1:] or steps)
            data: dict[str, Any] = {"step_s": t, "params": params, "predicted_mib": predicted}
            detail = f"{ms(t)}/step after the first, {params / 1e6:.2f}M params, {predicted:.0f} MiB planned"
            if not check.cuda:
                return Row("memory", plan, "n/a (cpu)", detail, data=data)
            peak = torch.cuda.max_memory_allocated(check.device) / 2**20
            reserved = torch.cuda.max_memory_reserved(check.device) / 2**20
            data.update(peak_mib=peak, reserved_mib=reserved, before_mib=before / 2**20, planned_ratio=predicted / peak)
            detail += f" ({predicted / peak:.2f}x the peak); {reserved:.0f} MiB reserved"
            detail += f", {before / 2**20:.0f} MiB held before"
            return Row("memory", plan, f"{peak:.0f} MiB peak", detail, data=data)

        check.attempt(plan, measure)


def section_rerun(check: Check) -> None:
    """One plan trained 3 times on one seed per mode: do the reruns agree?"""
    s = check.sizes
    val = check.items(s.batch, seed=1)
    for deterministic in (False, True):
        name = f"deterministic={deterministic}"

        def measure(deterministic: bool = deterministic, name: str = name) -> Row:
            losses, angles, walls = [], [], []
            for _ in range(s.rerun_repeats):
                _, history, wall = check.timed_fit("nddr+shortcut", s.rerun_steps, deterministic=deterministic, val=val)
                losses.append(float(history["losses"][-1]))
                angles.append(float(history["evals"][-1]["metrics"]["normal"]["mean"]))
                walls.append(wall)
            loss_sd, loss_diff = spread(losses)
            angle_sd, angle_diff = spread(angles)
            data = {"losses": losses, "loss_std": loss_sd, "loss_max_diff": loss_diff, "normal_mean_angles": angles,
                    "angle_std": angle_sd, "angle_max_diff": angle_diff, "run_s": walls}  # fmt: skip
            detail = (
                f"normal mean angle std {angle_sd:.3g} (max diff {angle_diff:.3g}); {s.rerun_repeats} runs of"
                f" {s.rerun_steps} steps, NDDR + shortcut, {median(walls):.2f} s each"
            )
            result = f"final loss std {loss_sd:.3g} (max diff {loss_diff:.3g})"
            if deterministic and (loss_diff or angle_diff):
                return Row("rerun", name, f"FAILED: reruns differ, {result}", detail, "FAILED", data)
            if not deterministic and check.cuda and not (loss_diff or angle_diff):
                detail += "; equal reruns without deterministic (expected to differ on a GPU)"
            return Row("rerun", name, result, detail, data=data)

        check.attempt(name, measure)


def section_weightings(check: Check) -> None:
    """Every registered weighting method, 3 steps of fit: under AMP on a GPU (fit's default there,
    so fp16's GradScaler and bf16 meet every method); in fp32 on the CPU, fit's default there (the
    tests train every method under CPU bf16 autocast already, at 3x the time on 2 cores)."""
    from fusionsearch.tasks.weighting import WEIGHTINGS

    s = check.sizes
    amp = check.cuda
    precision = f"AMP {amp_name(check.device)}" if amp else "fp32"
    for method in sorted(WEIGHTINGS):
        name = f"{method} ({WEIGHTINGS[method].level})"

        def measure(method: str = method, name: str = name) -> Row:
            steps, history, _ = check.timed_fit("nddr", s.weighting_steps, amp=amp, weighting=method)
            t = median(steps[1:] or steps)
            loss = float(history["losses"][-1])
            detail = f"after the first step ({ms(steps[0])}); final loss {loss:.4g}, {precision}"
            return Row("weightings", name, f"ok, {ms(t)}/step", detail, data={"step_s": t, "steps_s": steps})

        check.attempt(name, measure)


RUNNERS: dict[str, Callable[[Check], None]] = {
    "study": section_study,
    "step_time": section_step_time,
    "loader": section_loader,
    "memory": section_memory,
    "rerun": section_rerun,
    "weightings": section_weightings,
}


def run_section(check: Check, name: str) -> dict[str, Any]:
    """Run one section; whatever it raises becomes a FAILED row, and the next section runs."""
    check.section, check.section_start = name, time.perf_counter()
    first = len(check.rows)
    try:
        if name in os.environ.get(FAIL_ENV, "").split(","):
            raise RuntimeError(f"failure injected by {FAIL_ENV}={os.environ[FAIL_ENV]}")
        RUNNERS[name](check)
    except Exception as e:
        check.add(Row(name, "section", f"FAILED: {one_line(e)}", status="FAILED"))
    finally:
        release(check.device)
    wall = time.perf_counter() - check.section_start
    if len(check.rows) == first:
        check.add(Row(name, "section", "FAILED: produced no row", status="FAILED"))
    rows = check.rows[first:]
    return {"wall_s": wall, "budget_s": check.sizes.budgets[name], "rows": [asdict(r) for r in rows]}


# ---- output -----------------------------------------------------------------------------------


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, padded so that it also reads as aligned text."""
    cells = [[str(c).replace("|", "\\|") for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(cells[0]), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, cells[1:])])


def describe(device: torch.device, sizes: Sizes, tiny: bool) -> dict[str, Any]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        capability = f"{major}.{minor} (sm{major}{minor})"
        memory = f"{torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB"
    else:
        name, capability, memory = cpu_name(), "n/a (cpu)", "n/a"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "device": str(device),
        "device_name": name,
        "compute_capability": capability,
        "device_memory": memory,
        "amp_dtype": str(amp_dtype(device)).removeprefix("torch."),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "timm": timm.__version__,
        "fusionsearch": fs.__version__ + (f" ({commit})" if commit else ""),
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "mode": "tiny" if tiny else "full",
        "nets": f"{sizes.backbone} at {sizes.size[0]}x{sizes.size[1]}, batch {sizes.batch}, 2 tasks (seg, normal)",
    }


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return f"{platform.machine()}, {os.cpu_count()} cores"


def section_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown or text!r}: choose from {', '.join(SECTIONS)}")
    return [n for n in SECTIONS if n in names]  # in the order the sections depend on each other


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as d:
        yield Path(d)


class Parser(argparse.ArgumentParser):
    """argparse with the command line's usage error: one ``error:`` line naming ``--help``, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parser() -> Parser:
    ap = Parser(description=__doc__.split("\n\n")[0], epilog="sections: " + ", ".join(SECTIONS))
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu", help="auto, cpu or cuda[:N]")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="test_resnet, tiny sizes, few steps: CI on the CPU (without it the sizes are a GPU's; on a CPU the"
        " sections then stop at their time budgets)",
    )
    ap.add_argument("--out", help="also write the results here as JSON")
    ap.add_argument("--sections", type=section_list, default=list(SECTIONS), help="comma separated subset")
    return ap


def resolve_device(name: str) -> torch.device:
    """The device asked for, made current as each worker does (``devices.use_device``): a machine
    without CUDA, an index past the count or a typo is refused here, before the header."""
    device = torch.device(use_device(name))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def main(argv: Sequence[str] | None = None) -> int:
    """The command line's error path (``fusionsearch.cli.core``): a bad ``--device`` or ``--out``,
    or an operating system's refusal, is one ``error:`` line and exit 2, checked before any work
    so that a run's results are never lost to a path found bad at its end; Ctrl-C exits 130."""
    args = parser().parse_args(argv)
    try:
        check_out(args.out, "--out")
        return run(resolve_device(args.device), args)
    except (FusionSearchError, OSError) as e:
        print(f"error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run(device: torch.device, args: argparse.Namespace) -> int:
    start = time.perf_counter()
    sizes = TINY if args.tiny else FULL
    if args.tiny:
        torch.set_num_threads(1)  # as the tests do: on tiny models more threads only add overhead (1.4x slower on 2)
    header = describe(device, sizes, args.tiny)
    print(markdown(["what", "value"], [[k, str(v)] for k, v in header.items()]), flush=True)
    sections: dict[str, Any] = {}
    with scratch_folder() as scratch:
        check = Check(device, sizes, args.tiny, scratch)
        for name in args.sections:
            print(f"[{name}] ...", file=sys.stderr, flush=True)
            sections[name] = run_section(check, name)
    total = time.perf_counter() - start
    rows = [[r.section, r.name, r.result, r.detail] for r in check.rows]
    print()
    print(markdown(["section", "measurement", "result", "detail"], rows))
    print()
    per = [[name, f"{s['wall_s']:.1f}", f"{s['budget_s']:g}", status_of(s["rows"])] for name, s in sections.items()]
    print(markdown(["section", "wall s", "budget s", "rows"], per))
    failed = [r for r in check.rows if r.status == "FAILED"]
    skipped = [r for r in check.rows if r.status == "skipped"]
    print(f"\ntotal wall time: {total:.1f} s; {len(failed)} failed, {len(skipped)} skipped of {len(check.rows)} rows")
    if args.out is not None:
        result = {"header": header, "sections": sections, "total_wall_s": total, "failed": len(failed)}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)  # check_out allowed folders still to be made
        out.write_text(json.dumps(result, indent=1, default=str))
    return 1 if failed else 0


def status_of(rows: Sequence[dict[str, Any]]) -> str:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "FAILED", "skipped")}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n)


if __name__ == "__main__":
    sys.exit(main())
