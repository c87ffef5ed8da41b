"""Cost of fusion: a K-task stitched net with a unit at every stage boundary vs K plain columns.

    python benchmarks/fusion_overhead.py --backbone resnet50 --tasks 2
    python benchmarks/fusion_overhead.py --backbone resnet50 --tasks 2 --unit cross_stitch --device cuda

One timm model (random weights) is created; the stitched net (``st.build`` from that model, so the
columns hold its weights) and one plain column (the same model traced and split at the same
boundaries, run with ``run_segments``, no fusion) are timed on a train-mode forward + backward of
``sum(feature.float().mean())`` over ``forward_features``. After warm-up, repeats alternate
stitched, column, stitched, column, ... and the medians are compared:

    time ratio = stitched / (K x column)        goal: <= 1.03

The unsplit timm ``forward_features`` is timed in the same rotation as a reference for the cost of
splitting alone. Parameter overhead is fusion parameters / (K x column parameters); FLOP overhead
comes from ``torch.utils.flop_counter.FlopCounterMode`` on one forward of each (it counts matmuls
and convolutions only: BatchNorm, ReLU and cross-stitch's elementwise mixing count as zero).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import fusionsearch as fs
import fusionsearch.nets as st

GOAL = 1.03


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_fn(features: Callable[[torch.Tensor], object], params: list[torch.nn.Parameter], x: torch.Tensor):
    """One forward + backward; gradients are dropped after each step so memory stays flat."""

    def step() -> None:
        out = features(x)
        feats = out if isinstance(out, (list, tuple)) else [out]
        loss = sum(f.float().mean() for f in feats)
        loss.backward()
        for p in params:
            p.grad = None

    return step


def _time(step: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - t0


def _flops(fn: Callable[[torch.Tensor], object], x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(x)
    return int(counter.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet50", help="timm model name (default resnet50)")
    p.add_argument("--tasks", type=int, default=2, help="number of tasks K (default 2)")
    p.add_argument("--unit", default="nddr", help="fusion unit at every boundary (default nddr)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--size", type=int, default=128, help="input height = width (default 128)")
    p.add_argument("--repeats", type=int, default=10, help="timed repeats of each (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each first (default 2)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    if args.tasks < 2:
        p.error("--tasks must be at least 2 (fusion mixes two or more columns)")

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but CUDA is not available")
    k = args.tasks
    input_size = (3, args.size, args.size)

    model = fs.create_backbone(args.backbone, pretrained=False)
    graph = fs.trace(model, input_size)
    points = [b.name for b in graph.boundaries]
    tasks = {f"t{i}": 3 for i in range(k)}
    net = st.build(model, tasks, st.StitchPlan(at=points, unit=args.unit), input_size=input_size)
    column = torch.nn.ModuleList(graph.split(points))

    net.to(device).train()
    column.to(device).train()
    model.to(device).train()
    x = torch.randn(args.batch, *input_size, device=device)

    runs = {
        "stitched": _step_fn(net.forward_features, list(net.parameters()), x),
        "column": _step_fn(lambda t: fs.run_segments(column, t), list(column.parameters()), x),
        "timm": _step_fn(model.forward_features, list(model.parameters()), x),
    }
    for _ in range(args.warmup):
        for step in runs.values():
            step()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, step in runs.items():
            times[name].append(_time(step, device))
    med = {name: statistics.median(ts) for name, ts in times.items()}

    params = net.describe()["params"]
    col_params = sum(q.numel() for q in column.parameters())
    assert params["backbone"] == k * col_params, (params["backbone"], k, col_params)
    flops_net = _flops(net.forward_features, x)
    flops_col = _flops(lambda t: fs.run_segments(column, t), x)

    ratio = med["stitched"] / (k * med["column"])
    ratio_min = min(times["stitched"]) / (k * min(times["column"]))
    p_over = params["fusion"] / (k * col_params)
    f_over = flops_net / (k * flops_col) - 1.0

    where = f"{device.type}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    print(
        f"{args.backbone}, K={k}, unit={args.unit} at {len(points)} boundaries ({', '.join(points)}),"
        f" batch {args.batch} x {input_size}, {where}, torch threads {torch.get_num_threads()},"
        f" train-mode forward+backward, median of {args.repeats} interleaved repeats"
    )
    print()
    print(f"{'':28s}{'step ms':>10s}{'min ms':>10s}{'params':>14s}{'fwd GFLOP':>12s}")
    rows = [
        ("stitched net (K columns)", "stitched", params["backbone"] + params["fusion"], flops_net),
        ("one column (split)", "column", col_params, flops_col),
        ("timm forward_features", "timm", None, None),
        (f"K x column (K={k})", None, k * col_params, k * flops_col),
        ("fusion units", None, params["fusion"], flops_net - k * flops_col),
    ]
    for label, key, n_params, flops in rows:
        t = f"{med[key] * 1e3:10.1f}{min(times[key]) * 1e3:10.1f}" if key else f"{'':10s}{'':10s}"
        if key is None and label.startswith("K x"):
            t = f"{k * med['column'] * 1e3:10.1f}{'':10s}"
        n = f"{n_params / 1e6:13.2f}M" if n_params is not None else f"{'':14s}"
        f = f"{flops / 1e9:12.2f}" if flops is not None else f"{'':12s}"
        print(f"{label:28s}{t}{n}{f}")
    print()
    status = "MET" if ratio <= GOAL else "NOT MET"
    print(f"time ratio  stitched / (K x column) = {ratio:.4f}   (goal <= {GOAL:.2f}: {status})")
    print(f"            same on the fastest repeats = {ratio_min:.4f}   (less sensitive to CPU contention)")
    print(f"param overhead  fusion / (K x column) = {p_over * 100:.2f}%")
    print(f"FLOP overhead   stitched / (K x column) - 1 = {f_over * 100:.2f}%  (matmul/conv FLOPs only)")
    print(f"split cost      column / timm forward_features = {med['column'] / med['timm']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
