"""The memory plan (``inspect --memory``, ``train.memory.plan_memory``) against the measured peak
of a real training step on the CPU, over backbones, plans and batch sizes.

    python benchmarks/memory_plan.py [--backbones resnet18,...] [--plans single,...] [--batches 2,4] [--size PX]

Goal (issue 36): predicted within +-25% of measured on every case.

How it measures: each case runs in a fresh subprocess (no allocator state or peak carried over
from another case), one thread, with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc serves every
tensor over 64 KiB with its own mmap and gives it back when freed (by default its threshold grows
after the first frees, and freed tensors then stay in the heap, which RSS would count for ever).
The net is built, one warm-up step creates the optimiser's state, the gradients are dropped (the
trainer's ``zero_grad(set_to_none=True)``); then the process's peak RSS is reset (Linux's
``/proc/self/clear_refs`` 5) and the current RSS read, one more step runs (forward, the tasks'
real losses on a synthetic batch, backward, the optimiser's step), and the peak RSS read
(``VmHWM``). Measured peak = that rise + the bytes of what was already live and the plan counts
(parameters, optimiser state, the input batch): close to what CUDA's ``max_memory_allocated``
counts on a GPU, plus the small buffers and scratch space of the CPU kernels that RSS also sees.
The ``act.`` column is the activations' share of the prediction. RSS rather than torch's
profiler: in torch 2.14 the CPU profiler's memory events carry only frees as ``[memory]`` rows,
the allocations hide in the ops' totals, and a peak cannot be replayed from them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

BACKBONES = {  # a small timm variant of each family, and the input it is measured at
    "resnet18": 128,
    "convnext_atto": 128,
    "efficientnet_b0": 128,
    "vit_tiny_patch16_224": 224,
    "swin_tiny_patch4_window7_224": 224,  # channels-last (NHWC) stages
}
PLANS = ("single", "cross_stitch_default", "nddr_default")


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _nbytes(tensors: object) -> int:
    import torch

    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))  # type: ignore[attr-defined]


def measure(backbone: str, plan: str, batch: int, size: int = 0) -> dict[str, float]:
    """One case, in this process: predicted and measured peak bytes of a training step."""
    import torch

    from fusionsearch.experiment.experiment import Experiment
    from fusionsearch.experiment.recipe import load_recipe
    from fusionsearch.train.loading import train_loader
    from fusionsearch.train.memory import plan_memory
    from fusionsearch.train.trainer import make_optimizer

    torch.set_num_threads(1)
    size = size or BACKBONES.get(backbone, 128)
    r = load_recipe("quick").with_overrides(
        backbone=backbone, data={"name": "synthetic", "size": size, "train_length": 8, "val_length": 2}
    )
    exp = Experiment(r, 0)
    cfg = r.train_config(batch_size=batch, steps=2)
    net = exp.build(exp.plan_for(plan)).train()
    tasks = exp.tasks()
    predicted = plan_memory(net, batch, exp.input_size, cfg.optimizer, cfg.momentum, cfg.checkpoint == "segments")
    data = next(iter(train_loader(exp.datasets()[0], cfg, torch.device("cpu"))))
    opt = make_optimizer(net, cfg)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        preds, extra = net(data["image"], return_extra=True)
        loss = sum((tasks[t].loss_weight * tasks[t].loss(preds[t].float(), data[t]) for t in tasks), extra.float())
        loss.backward()
        opt.step()

    step()
    opt.zero_grad(set_to_none=True)
    state = [v for s in opt.state.values() for v in s.values()]
    live = _nbytes(net.parameters()) + _nbytes(state) + _nbytes([data["image"]])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _rss("VmRSS")
    step()
    measured = _rss("VmHWM") - before + live
    return {"predicted": predicted.total, "measured": measured, "activations": predicted.activations}


def _case(backbone: str, plan: str, batch: int, size: int) -> dict[str, float]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, __file__, "--one", f"{backbone},{plan},{batch},{size}"]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}  # type: ignore[dict-item]
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--plans", default=",".join(PLANS))
    p.add_argument("--batches", default="2,4")
    p.add_argument("--size", type=int, default=0, help="image side (default: 128, 224 for ViT and Swin)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # BACKBONE,PLAN,BATCH,SIZE: one case, this process
    a = p.parse_args()
    if a.one:
        b, plan, n, px = a.one.split(",")
        print(json.dumps(measure(b, plan, int(n), int(px))))
        return
    mib = 1 << 20
    print(f"{'backbone':30} {'plan':22} {'batch':>5} {'predicted':>10} {'measured':>10} {'ratio':>6} {'act.':>5}")
    ratios = []
    for b in a.backbones.split(","):
        for plan in a.plans.split(","):
            for n in map(int, a.batches.split(",")):
                r = _case(b, plan, n, a.size)
                if "error" in r:
                    print(f"{b:30} {plan:22} {n:>5} failed: {r['error']}", flush=True)
                    continue
                ratios.append(r["predicted"] / r["measured"])
                print(
                    f"{b:30} {plan:22} {n:>5} {r['predicted'] / mib:>8.0f}Mi {r['measured'] / mib:>8.0f}Mi"
                    f" {ratios[-1]:>6.2f} {r['activations'] / r['predicted']:>5.0%}",
                    flush=True,
                )
    inside = sum(0.75 <= x <= 1.25 for x in ratios)
    print(f"{inside}/{len(ratios)} cases within +-25%; ratio min {min(ratios):.2f}, max {max(ratios):.2f}")


if __name__ == "__main__":
    main()
