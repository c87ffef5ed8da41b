"""How fast data and training are: synthetic scenes generated per second, and training images per
second of a 2-task stitched network (NDDR at every stage boundary).

    python benchmarks/train_throughput.py                         # resnet18, 128 px, CPU
    python benchmarks/train_throughput.py --device cuda --batch-size 32   # adds AMP + channels_last vs fp32

Generation is timed in the main process over fresh scene indices (what one DataLoader worker
delivers). Training is timed over whole optimizer steps (forward, losses of both tasks, backward,
step) on a fixed batch, after warm-up, so the figure is the model's speed, not the data's. On CUDA
both fp32 and AMP (bf16 where supported) with channels_last are timed.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import fusionsearch as fs
from fusionsearch.data import SyntheticScenes
from fusionsearch.tasks.task import get_task
from fusionsearch.train.config import TrainConfig
from fusionsearch.train.precision import autocast
from fusionsearch.train.trainer import make_optimizer


def generation_rate(size: int, n: int) -> float:
    data = SyntheticScenes("train", length=10_000, size=size, seed=123)
    data[0]
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        data[i]
    return n / (time.perf_counter() - t0)


def training_rate(backbone: str, size: int, batch: int, steps: int, device: torch.device, amp: bool) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = [b.name for b in fs.trace(backbone, (3, size, size)).boundaries]
        net = fs.build(
            backbone, {"seg": SyntheticScenes.num_classes, "normal": 3}, fs.StitchPlan(at=b), input_size=(3, size, size)
        )
    tasks = {"seg": get_task("seg", out_channels=SyntheticScenes.num_classes), "normal": get_task("normal")}
    net.to(device).train()
    if amp:
        net.to(memory_format=torch.channels_last)
    opt = make_optimizer(net, TrainConfig(optimizer="sgd", base_lr=0.001))
    data = SyntheticScenes("train", length=batch, size=size)
    items = [data[i] for i in range(batch)]
    batch_d = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
    image = batch_d["image"].contiguous(memory_format=torch.channels_last) if amp else batch_d["image"]
    times = []
    for i in range(steps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast(device, amp):
            preds, extra = net(image, return_extra=True)
            loss = sum(tasks[t].loss(preds[t].float(), batch_d[t]) for t in tasks) + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--scenes", type=int, default=50, help="scenes to generate for the generation rate")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(f"synthetic scenes generated: {generation_rate(args.size, args.scenes):.1f} images/s at {args.size} px")
    fp32 = training_rate(args.backbone, args.size, args.batch_size, args.steps, device, amp=False)
    print(f"training, 2-task {args.backbone} + NDDR at every boundary, {args.size} px, batch {args.batch_size}:")
    print(f"  fp32: {fp32:.1f} images/s")
    if device.type == "cuda":
        mixed = training_rate(args.backbone, args.size, args.batch_size, args.steps, device, amp=True)
        print(f"  AMP + channels_last: {mixed:.1f} images/s ({mixed / fp32:.2f}x fp32)")
        print(f"  peak memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
