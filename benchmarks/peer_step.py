"""Our stitched nets timed beside a public peer's: LibMTL's cross-stitch, on the same two tasks.

    python benchmarks/peer_step.py                                  # resnet18, 128 px, batch 8, CPU
    python benchmarks/peer_step.py --backbone resnet50 --size 64 --batch 4
    python benchmarks/peer_step.py --libmtl /path/with/LibMTL      # skip the install

Three 2-task nets (``seg`` with 40 classes + surface ``normal``) over two ResNet columns:

- ``ours cross_stitch``: ``fs.build(timm resnet, plan)`` with cross-stitch (``per="layer"``) after
  layer1, layer2 and layer3;
- ``ours nddr``: the same with NDDR units at the same three points;
- ``LibMTL cross_stitch``: ``LibMTL.architecture.Cross_stitch`` 1.1.5 (MIT licence), the code as
  published on PyPI, installed by this script with ``pip install --no-deps --target <temp dir>
  LibMTL==1.1.5``. ``import LibMTL`` fails on torchvision >= 0.13 (its ``model/resnet.py`` imports
  ``torchvision.models.utils``), so only its ``architecture`` modules are imported, through
  placeholder parent packages; not one line of theirs is copied or changed. Its encoder is
  torchvision's ResNet, as LibMTL's own ``model/resnet.py`` (a copy of torchvision's) would give.

What differs between the nets, so that the ratios mean something:

- backbone: timm ``resnet18`` (ours, traced with torch.fx and split into segments) against
  torchvision ``resnet18`` (LibMTL, eager): the same layers, weights shapes and FLOPs;
- where units sit: both mix after layer1, layer2 and layer3 (LibMTL's fixed places; its layer4
  output goes to the heads unmixed, so our plans do the same here);
- the unit: LibMTL learns one scalar per task and stage and gives *every* task the same sum
  ``sum_j a_j x_j`` (``cross_unit`` is 4 x K, initialised to ones); ours learns a K x K matrix per
  stage (``per="layer"``, init 0.9/0.1), so each task gets its own mix. Both cost K^2 scaled
  additions of a feature map per stage (LibMTL recomputes the shared sum once per task);
  NDDR adds per task a 1x1 conv over the K concatenated features, BatchNorm and ReLU;
- BatchNorm: every column keeps its own BatchNorm layers in train mode, on both sides;
- heads: identical modules, ours (``seg``: DeepLab-v2 ASPP, rates 1, 6, 12, 18; ``normal``: a 1x1
  conv; both resized bilinearly to the input), handed to LibMTL as its ``decoders``;
- losses and optimiser: the same (cross-entropy + cosine on random targets; plain SGD, momentum
  0.9, one learning rate for every parameter, so the optimiser step costs the same).

Step time: forward + both losses + backward + ``optimizer.step()``, after ``--warmup`` untimed
steps of each net; the three nets run in one process, in rotation, and the medians are compared.
Memory: each net in a fresh subprocess, peak resident set size (Linux ``VmHWM``) over
``--warmup`` + 3 steps, with the high-water mark reset (``/proc/self/clear_refs``) once the net and
its batch are built. RSS rather than torch's profiler because it is what runs a machine out of
memory: it includes the allocator's caching and oneDNN's workspaces, which the profiler's tensor
events do not see, and a fresh process keeps one case's leftovers out of the next. "train peak"
is the rise above the built net (activations, gradients, optimiser state, workspaces).
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import fusionsearch as fs
from fusionsearch.tasks.task import get_task

CASES = ("ours cross_stitch", "ours nddr", "LibMTL cross_stitch")
POINTS = ["layer1", "layer2", "layer3"]  # where LibMTL's Cross_stitch mixes
SEG_CLASSES = 40
LIBMTL = "LibMTL==1.1.5"


def install_libmtl(target: Path) -> Path:
    """Install LibMTL without its pinned dependencies (it needs only torch and numpy here)."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), LIBMTL]
    subprocess.run(cmd, check=True)
    return target


def load_libmtl_cross_stitch(root: Path) -> type[nn.Module]:
    """LibMTL's ``Cross_stitch`` class, importing only ``LibMTL.architecture``: the package's
    ``__init__`` pulls in ``model/resnet.py``, which needs a torchvision module removed in 0.13."""
    for name, sub in (("LibMTL", "LibMTL"), ("LibMTL.architecture", "LibMTL/architecture")):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root / sub)]
            sys.modules[name] = pkg
    return importlib.import_module("LibMTL.architecture.Cross_stitch").Cross_stitch


class SizedHead(nn.Module):
    """One of our task heads with the output size fixed, for LibMTL's ``decoder(rep)`` call."""

    def __init__(self, head: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.head, self.size = head, size

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x, self.size)


def build_case(case: str, backbone: str, size: int, libmtl: Path | None) -> nn.Module:
    """One of ``CASES``: a module mapping an image batch to ``{"seg": ..., "normal": ...}``."""
    tasks = {"seg": SEG_CLASSES, "normal": 3}
    if case.startswith("ours"):
        unit = case.split()[1]
        args = {"per": "layer"} if unit == "cross_stitch" else {}
        plan = fs.StitchPlan(at=POINTS, unit=unit, unit_args=args)
        return fs.build(backbone, tasks, plan, input_size=(3, size, size))
    assert libmtl is not None
    cross_stitch = load_libmtl_cross_stitch(libmtl)
    channels = torchvision.models.get_model(backbone, weights=None).fc.in_features
    heads = {t: SizedHead(get_task(t, out_channels=c).head(channels), (size, size)) for t, c in tasks.items()}
    return cross_stitch(
        task_name=list(tasks),
        encoder_class=lambda: torchvision.models.get_model(backbone, weights=None),
        decoders=nn.ModuleDict(heads),
        rep_grad=False,
        multi_input=False,
        device=torch.device("cpu"),
    )


def train_step(net: nn.Module, batch: int, size: int) -> Callable[[], None]:
    """One optimiser step of ``net`` on a fixed random batch with both tasks' losses."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    seg_y = torch.randint(0, SEG_CLASSES, (batch, size, size), generator=g)
    normal_y = torch.nn.functional.normalize(torch.randn(batch, 3, size, size, generator=g), dim=1)
    seg, normal = get_task("seg", out_channels=SEG_CLASSES), get_task("normal")
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    net.train()

    def step() -> None:
        preds = net(x)
        loss = seg.loss(preds["seg"], seg_y) + normal.loss(preds["normal"], normal_y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_memory(case: str, args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of a few training steps of one case, in this (fresh) process."""
    net = build_case(case, args.backbone, args.size, args.libmtl)
    step = train_step(net, args.batch, args.size)
    built = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    for _ in range(args.warmup + 3):
        step()
    peak = _status_kib("VmHWM")
    params = sum(p.numel() for p in net.parameters())
    return {"built_mib": built / 1024, "peak_mib": peak / 1024, "train_mib": (peak - built) / 1024, "params": params}


def _memory_subprocess(case: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--memory-case", case, "--backbone", args.backbone, "--size", str(args.size)]
    cmd += ["--batch", str(args.batch), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    if args.libmtl is not None:
        cmd += ["--libmtl", str(args.libmtl)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"memory run of {case!r} failed (exit {done.returncode}): {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def forward_flops(net: nn.Module, batch: int, size: int) -> int:
    """Matmul and convolution FLOPs of one forward (``FlopCounterMode`` counts no elementwise op)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(batch, 3, size, size))
    return int(counter.get_total_flops())


def time_cases(args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds per step of each case, interleaved so that CPU contention hits all alike, and
    each case's forward FLOPs."""
    nets = {c: build_case(c, args.backbone, args.size, args.libmtl) for c in CASES}
    flops = {c: forward_flops(net, args.batch, args.size) for c, net in nets.items()}
    steps = {c: train_step(net, args.batch, args.size) for c, net in nets.items()}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {c: [] for c in CASES}
    for _ in range(args.repeats):
        for c, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[c].append(time.perf_counter() - t0)
    return times, flops


def report(
    args: argparse.Namespace, times: dict[str, list[float]], flops: dict[str, int], mem: dict[str, dict[str, Any]]
) -> None:
    peer = "LibMTL cross_stitch"
    med = {c: statistics.median(ts) for c, ts in times.items()}
    print(
        f"2 tasks (seg {SEG_CLASSES} classes + normal), {args.backbone}, batch {args.batch} x 3 x {args.size} x"
        f" {args.size}, CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s), units after"
        f" {', '.join(POINTS)}; step = forward + losses + backward + SGD step, median of {args.repeats}"
        f" interleaved repeats after {args.warmup} warm-up; memory = peak RSS, fresh process per net"
    )
    print()
    head = f"{'net':22s}{'step ms':>9s}{'min ms':>9s}{'/ peer':>8s}{'fwd GFLOP':>11s}{'/ peer':>8s}{'params':>9s}"
    print(head + f"{'built MiB':>11s}{'train peak MiB':>16s}{'/ peer':>8s}")
    for c in CASES:
        m = mem[c]
        print(
            f"{c:22s}{med[c] * 1e3:9.1f}{min(times[c]) * 1e3:9.1f}{med[c] / med[peer]:8.3f}"
            f"{flops[c] / 1e9:11.2f}{flops[c] / flops[peer]:8.3f}"
            f"{m['params'] / 1e6:8.2f}M{m['built_mib']:11.0f}{m['train_mib']:16.0f}"
            f"{m['train_mib'] / mem[peer]['train_mib']:8.3f}"
        )
    print()
    print("What differs (see the docstring): timm resnet traced into segments (ours) vs torchvision resnet,")
    print("eager (LibMTL), same layers; LibMTL's unit gives every task one shared sum (4 x K scalars, init 1),")
    print("ours a K x K mix per stage (per='layer', init 0.9/0.1); NDDR adds 1x1 conv + BN + ReLU per task;")
    print("same heads (ours, passed to LibMTL as decoders), same losses, same SGD; own BN per column on both.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18", help="a ResNet both timm and torchvision name (resnet18)")
    p.add_argument("--size", type=int, default=128, help="input height = width (default 128)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--repeats", type=int, default=10, help="timed steps of each net (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each net first (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--libmtl", type=Path, default=None, help="a folder holding LibMTL/ (default: pip installs it)")
    p.add_argument("--memory-case", choices=CASES, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.backbone not in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        p.error(f"--backbone must be a ResNet (LibMTL's Cross_stitch supports only those), got {args.backbone!r}")
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    if args.memory_case is not None:
        print(json.dumps(measure_memory(args.memory_case, args)))
        return 0
    with tempfile.TemporaryDirectory(prefix="libmtl-") as tmp:
        if args.libmtl is None:
            args.libmtl = install_libmtl(Path(tmp))
        mem = {c: _memory_subprocess(c, args) for c in CASES}
        times, flops = time_cases(args)
    report(args, times, flops, mem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
