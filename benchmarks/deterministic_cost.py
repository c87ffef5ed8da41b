"""What ``train.deterministic`` costs, and whether it repeats: the same plan trained twice per
mode, timed, and the two runs' final losses compared.

    python benchmarks/deterministic_cost.py                      # CPU, test_resnet at 64 px
    python benchmarks/deterministic_cost.py --device cuda:0 --backbone resnet18 --size 128

On the CPU both modes repeat exactly (its kernels are deterministic already); on a GPU the
default mode's reruns differ (cuDNN autotuning, the atomic adds of bilinear interpolation's
backward) and the deterministic one's do not. Timing alternates the modes to spread noise.
"""

from __future__ import annotations

import argparse
import time

import torch

import fusionsearch as fs
from fusionsearch.tasks.task import get_task
from fusionsearch.train.config import TrainConfig
from fusionsearch.train.trainer import fit


def run(args: argparse.Namespace, deterministic: bool) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(1)
    size = args.size
    data = [
        {
            "image": torch.randn(3, size, size, generator=gen),
            "seg": torch.randint(0, 3, (size, size), generator=gen),
            "normal": torch.nn.functional.normalize(torch.randn(3, size, size, generator=gen), dim=0),
        }
        for _ in range(2 * args.batch)
    ]
    torch.manual_seed(0)
    points = [b.name for b in fs.trace(args.backbone, (3, size, size)).boundaries][:2]
    plan = fs.StitchPlan(at=points, shortcut=True)
    net = fs.build(args.backbone, {"seg": 3, "normal": 3}, plan, input_size=(3, size, size))
    tasks = {"seg": get_task("seg", out_channels=3), "normal": get_task("normal")}
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        base_lr=0.01,
        optimizer="adamw",
        eval_every=args.steps,
        progress=False,
        deterministic=deterministic,
    )
    if args.device.startswith("cuda"):
        torch.cuda.synchronize(args.device)
    start = time.perf_counter()
    history = fit(net, tasks, data, None, cfg, device=args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize(args.device)
    return time.perf_counter() - start, history["losses"][-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="test_resnet")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.repeats):
        for deterministic in (False, True):
            results[deterministic].append(run(args, deterministic))
    print(f"{args.backbone} at {args.size} px, {args.steps} steps of batch {args.batch} on {args.device}")
    print(f"{'mode':<14} {'seconds per run':>30} {'final loss of each run':>40} {'reruns equal':>13}")
    for deterministic, runs in results.items():
        times = ", ".join(f"{t:.2f}" for t, _ in runs)
        losses = ", ".join(f"{v:.8f}" for _, v in runs)
        same = all(v == runs[0][1] for _, v in runs)
        print(f"{'deterministic' if deterministic else 'default':<14} {times:>30} {losses:>40} {str(same):>13}")


if __name__ == "__main__":
    main()
