"""Time to trace a backbone and find its cut points and stage boundaries.

    python benchmarks/trace_time.py                       # resnet101 at its own input size
    python benchmarks/trace_time.py --backbone convnext_tiny --input-size 3 224 224 --repeats 10

``fs.trace(model)`` is timed on a model created once, outside the timing; the time including
``create_model`` (random weights, no download) is timed separately.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch

import fusionsearch as fs


def _stats(times: list[float]) -> str:
    med, best = statistics.median(times) * 1e3, min(times) * 1e3
    return f"median {med:8.1f} ms   min {best:8.1f} ms   (n={len(times)})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet101", help="timm model name (default resnet101)")
    p.add_argument("--input-size", type=int, nargs=3, default=None, metavar=("C", "H", "W"))
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-check", action="store_true", help="trace with check=False")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    check = not args.no_check

    t0 = time.perf_counter()
    model = fs.create_backbone(args.backbone, pretrained=False)
    t_create = time.perf_counter() - t0
    g = fs.trace(model, args.input_size, check=check)  # warm-up (imports, first-call overheads)

    trace_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        g = fs.trace(model, args.input_size, check=check)
        trace_times.append(time.perf_counter() - t0)

    total_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        g = fs.trace(fs.create_backbone(args.backbone, pretrained=False), args.input_size, check=check)
        total_times.append(time.perf_counter() - t0)

    params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.backbone}: {params / 1e6:.1f}M params, input {tuple(g.input_size)}, torch threads"
        f" {torch.get_num_threads()}, check={check}"
    )
    names = [b.name for b in g.boundaries]
    print(f"  {len(g.cut_points)} cut points, {len(g.boundaries)} boundaries: {names}")
    print(f"  create_model (first)    {t_create * 1e3:8.1f} ms")
    print(f"  fs.trace(model)         {_stats(trace_times)}")
    print(f"  create + fs.trace       {_stats(total_times)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
