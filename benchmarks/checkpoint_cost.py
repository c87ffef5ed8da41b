"""What ``train.checkpoint: segments`` saves and costs: peak memory and step time, off vs segments.

    python benchmarks/checkpoint_cost.py --backbone resnet50 --tasks 2 --batch 4 --size 288x384

The net is the default stitched net of a K-task study (NDDR at every stage boundary, the default
plan) with the seg and normal heads; a step is what ``fit`` does with its default optimiser: ``net(x)``,
a loss (here the mean square of every prediction), backward, an SGD step with momentum 0.9,
gradients dropped. Each case (off, segments) runs in a fresh subprocess, so no case
inherits the other's allocator state:

- **peak tensor memory** (the figure the goal is about): torch's profiler with ``profile_memory``
  records every CPU allocation and free of one step; their running sum's maximum is the step's peak
  above what was live before it (activations, the saved tensors for backward, the gradients), and
  the parameters and the optimiser's momentum (live before the step) are added to it. It counts the
  bytes tensors hold, the quantity checkpointing changes and the memory plan predicts, without the
  allocator's caching and the runtime;
- **peak RSS** of the subprocess (``ru_maxrss``, before the profiled step): what the OS saw, which
  includes Python, torch's libraries and freed memory the allocator kept, so the same saving is a
  smaller fraction of it;
- **step time**: the median of ``--repeats`` steps after ``--warmup``, without the profiler.

Goal (issue 36): segments' peak tensor memory <= 0.60 x off, at step time <= 1.4 x off.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

import fusionsearch as fs

MEMORY_GOAL, TIME_GOAL = 0.60, 1.40
TASKS = {"seg": 13, "normal": 3}  # NYUv2's 13 classes and the normals' 3 channels


def _case(args: argparse.Namespace) -> dict[str, float]:
    """One case in this process: build, time, read the RSS peak, profile one step."""
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    h, _, w = args.size.partition("x")
    input_size = (3, int(h), int(w or h))
    model = fs.create_backbone(args.backbone, pretrained=False)
    points = [b.name for b in fs.trace(model, input_size).boundaries]
    tasks = dict(list(TASKS.items())[: args.tasks]) | {f"t{i}": 3 for i in range(len(TASKS), args.tasks)}
    net = fs.build(model, tasks, fs.StitchPlan(at=points, unit="nddr"), input_size=input_size).train()
    del model
    net.checkpoint_segments = args.case == "segments"
    x = torch.randn(args.batch, *input_size)
    opt = torch.optim.SGD(net.parameters(), lr=1e-6, momentum=0.9)

    def step() -> None:
        loss = sum(p.square().mean() for p in net(x).values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    allocations = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in allocations:
        live += nbytes
        peak = max(peak, live)
    params = 2 * sum(p.numel() * p.element_size() for p in net.parameters())  # and their momentum
    return {"step_s": statistics.median(times), "peak": params + peak, "step_peak": peak, "rss": rss}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet50", help="timm model name (default resnet50)")
    p.add_argument("--tasks", type=int, default=2, help="number of tasks K (default 2: seg, normal)")
    p.add_argument("--batch", type=int, default=4, help="batch size (default 4)")
    p.add_argument("--size", default="288x384", help="input HxW, or one number (default NYUv2's 288x384)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per case (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--case", choices=["none", "segments"], help=argparse.SUPPRESS)  # one subprocess's case
    args = p.parse_args()
    if args.case is not None:
        print(json.dumps(_case(args)))
        return 0
    rows = {}
    for case in ("none", "segments"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--case", case], capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        rows[case] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.backbone} x {args.tasks} tasks, NDDR at every boundary, batch {args.batch}, {args.size}")
    mib = 2.0**20
    print(f"{'train.checkpoint':<17}{'peak tensors MiB':>17}{'step part MiB':>15}{'peak RSS MiB':>14}{'step s':>9}")
    for case, r in rows.items():
        print(
            f"{case:<17}{r['peak'] / mib:>17.0f}{r['step_peak'] / mib:>15.0f}{r['rss'] / mib:>14.0f}{r['step_s']:>9.3f}"
        )
    off, on = rows["none"], rows["segments"]
    memory, step = on["peak"] / off["peak"], on["step_s"] / off["step_s"]
    print(
        f"segments / none: peak tensors {memory:.3f} ({1 - memory:.1%} less), "
        f"step part {on['step_peak'] / off['step_peak']:.3f}, "
        f"peak RSS {on['rss'] / off['rss']:.3f}, step time {step:.3f}x"
    )
    ok = memory <= MEMORY_GOAL and step <= TIME_GOAL
    print(f"goal (peak <= {MEMORY_GOAL:.2f}x at step time <= {TIME_GOAL:.2f}x): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
