"""Step time of each weighting method relative to ``fixed``, on the 2-task (seg + normal) resnet18
stitched net with NDDR at every stage boundary, 128 px, and the memory the gradient methods add.

    python benchmarks/weighting_cost.py [--size 128] [--batch 4] [--steps 5] [--device cpu|cuda]

Goal (issue 14): loss-level methods <= 1.05x fixed; gradient methods as measured. On a GPU the
extra memory is the peak allocation over fixed's; on the CPU it is the K x n Jacobian over the
parameters several tasks reach, which those methods hold (the peak RSS of a process is not
per method).
"""

from __future__ import annotations

import argparse
import time

import torch

import fusionsearch as fs
from fusionsearch.errors import PlanError
from fusionsearch.tasks.task import get_task
from fusionsearch.tasks.weighting import GRADIENT_LEVEL, WEIGHTINGS, make_weighting


def step_time(name: str, size: int, batch: int, steps: int, device: str) -> tuple[float, float]:
    torch.manual_seed(0)
    dev = torch.device(device)
    g = fs.trace("resnet18", (3, size, size))
    net = fs.build("resnet18", {"seg": 13, "normal": 3}, fs.StitchPlan(at=[b.name for b in g.boundaries]),
                   input_size=(3, size, size)).to(dev).train()  # fmt: skip
    tasks = {"seg": get_task("seg", out_channels=13), "normal": get_task("normal")}
    weighting = make_weighting(name, ["seg", "normal"]).to(dev)
    opt = torch.optim.SGD([*net.parameters(), *weighting.parameters()], lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=dev)
    seg = torch.randint(0, 13, (batch, size, size), device=dev)
    normal = torch.nn.functional.normalize(torch.randn(batch, 3, size, size, device=dev), dim=1)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        preds, extra = net(x, return_extra=True)
        losses = {"seg": tasks["seg"].loss(preds["seg"], seg), "normal": tasks["normal"].loss(preds["normal"], normal)}
        opt.zero_grad(set_to_none=True)
        weighting.backward(losses, extra, net, i, lambda t: t)
        opt.step()
        weighting.observe({k: v.item() for k, v in losses.items()}, i)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        extra_mb = torch.cuda.max_memory_allocated() / 2**20
    elif weighting.level == GRADIENT_LEVEL:
        shared = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("heads"))
        extra_mb = 2 * shared * 4 / 2**20  # the 2 x n float32 Jacobian
    else:
        extra_mb = 0.0
    return sorted(times)[len(times) // 2], extra_mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    print(f"resnet18 x2, NDDR at every boundary, {args.size} px, batch {args.batch}, {args.device}")
    step_time("fixed", args.size, args.batch, 2, args.device)  # warm-up: allocator, threads, kernels
    base, base_mb = step_time("fixed", args.size, args.batch, args.steps, args.device)
    print(f"{'method':<12} {'level':<9} {'ms/step':>8} {'x fixed':>8} {'extra MB':>9}")
    print(f"{'fixed':<12} {'loss':<9} {1000 * base:8.1f} {1.0:8.2f} {0.0:9.1f}")
    for name in sorted(WEIGHTINGS):
        if name == "fixed":
            continue
        try:
            t, mb = step_time(name, args.size, args.batch, args.steps, args.device)
        except PlanError as e:
            print(f"{name:<12} skipped: {e}")
            continue
        level = WEIGHTINGS[name].level
        more = mb - base_mb if args.device.startswith("cuda") else mb
        print(f"{name:<12} {level:<9} {1000 * t:8.1f} {t / base:8.2f} {more:9.1f}")


if __name__ == "__main__":
    main()
