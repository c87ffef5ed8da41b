"""How much of timm's model zoo fusionsearch can trace, cut into stages, and split exactly.

For every model (or the N smallest of each timm module with ``--sample N``), in its own process
(forked from this one after the imports, or ``--start-method spawn``) with a timeout: create it
with random weights, ``fs.trace`` it at its own input size, count cut points and stage
boundaries, split it at the boundaries and at every cut point, and compare ``fs.run_segments``
with ``model.forward_features`` bit for bit (eval mode, no_grad, batch 2). One JSON line per
model goes to ``--out``; a summary is printed at the end.

    python benchmarks/zoo_coverage.py --sample 2 --out /tmp/zoo2.jsonl
    python benchmarks/zoo_coverage.py --filter 'resnet*' --out /tmp/resnets.jsonl --resume

Parameter counts come from building each model on the ``meta`` device (no memory, no init) and
are cached in ``~/.cache/fusionsearch/timm-<version>-params.json``; models are run smallest
first, so a partial run is representative of the cheap end of the zoo.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import re
import signal
import sys
import time
import traceback
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULT_TAG = "@@ZOO_RESULT "
CACHE_DIR = Path(os.environ.get("FUSIONSEARCH_CACHE", Path.home() / ".cache" / "fusionsearch"))


# --------------------------------------------------------------------------------------------------
# model list, families, sizes


def family_of(name: str) -> str:
    """The timm module that defines the model (``resnet``, ``vision_transformer``, ...)."""
    try:
        from timm.models import _registry

        module = _registry._model_to_module.get(name)
        if module:
            return str(module)
    except Exception:  # private API: fall back to the name's prefix
        pass
    return re.split(r"[_\d]", name, maxsplit=1)[0] or name


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:400] if text else ""


def _where(e: BaseException, frames: int = 4) -> list[str]:
    """The innermost frames of an exception's traceback (its root cause's), as ``file:line function``."""
    while e.__cause__ is not None:
        e = e.__cause__
    tb = traceback.extract_tb(e.__traceback__)[-frames:]
    return [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in tb]


def count_params_meta(name: str) -> int | None:
    """Parameter count of a model built on the meta device (None where that fails)."""
    import timm
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
        return sum(p.numel() for p in model.parameters())
    except Exception:
        return None


def param_counts(names: list[str], verbose: bool = True) -> dict[str, int | None]:
    """Parameter counts of ``names``, from the cache where present, else counted (and cached)."""
    import timm

    path = CACHE_DIR / f"timm-{timm.__version__}-params.json"
    cache: dict[str, int | None] = {}
    if path.is_file():
        try:
            cache = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
    missing = [n for n in names if n not in cache]
    if missing:
        if verbose:
            print(f"counting parameters of {len(missing)} models on the meta device (cached in {path})")
        t0 = time.perf_counter()
        for i, n in enumerate(missing, 1):
            cache[n] = count_params_meta(n)
            if verbose and (i % 100 == 0 or i == len(missing)):
                print(f"  {i}/{len(missing)} counted ({time.perf_counter() - t0:.0f} s)", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=0, sort_keys=True))
        tmp.replace(path)
    return {n: cache.get(n) for n in names}


def select_models(
    pattern: str | None, sample: int | None, counts_for: Any
) -> tuple[list[str], dict[str, int | None], dict[str, str]]:
    import timm

    names = timm.list_models(pattern.split(",")) if pattern else timm.list_models()
    counts = counts_for(names)
    families = {n: family_of(n) for n in names}
    # unknown sizes (meta build failed) go last
    key = lambda n: (counts[n] is None, counts[n] or 0, n)
    names = sorted(names, key=key)
    if sample is not None:
        per_family: dict[str, list[str]] = defaultdict(list)
        for n in names:
            if len(per_family[families[n]]) < sample:
                per_family[families[n]].append(n)
        keep = {n for ns in per_family.values() for n in ns}
        names = [n for n in names if n in keep]
    return names, counts, families


# --------------------------------------------------------------------------------------------------
# one model (runs in the subprocess)


def _compare(out: Any, ref: Any, path: str = "out") -> str | None:
    """None when ``out`` equals ``ref`` bit for bit, else what differs first."""
    import torch

    if isinstance(ref, torch.Tensor):
        if not isinstance(out, torch.Tensor):
            return f"{path}: got {type(out).__name__}, expected Tensor"
        if out.shape != ref.shape:
            return f"{path}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
        if out.dtype != ref.dtype:
            return f"{path}: dtype {out.dtype} != {ref.dtype}"
        if torch.equal(out, ref):
            return None
        if out.is_floating_point():
            diff = (out.double() - ref.double()).abs()
            nan = bool(torch.isnan(diff).any())
            return f"{path}: max abs diff {diff.nan_to_num(0).max().item():.3g}" + (" (NaN)" if nan else "")
        return f"{path}: values differ"
    if isinstance(ref, (list, tuple)):
        if not isinstance(out, (list, tuple)) or len(out) != len(ref):
            return f"{path}: got {type(out).__name__}, expected {type(ref).__name__} of {len(ref)}"
        for i, (o, r) in enumerate(zip(out, ref)):
            m = _compare(o, r, f"{path}[{i}]")
            if m:
                return m
        return None
    if isinstance(ref, dict):
        if not isinstance(out, dict) or set(out) != set(ref):
            return f"{path}: dict keys differ"
        for k in ref:
            m = _compare(out[k], ref[k], f"{path}[{k!r}]")
            if m:
                return m
        return None
    return None if out == ref else f"{path}: {out!r} != {ref!r}"


def run_one(name: str, max_params: float, batch: int) -> dict[str, Any]:
    import torch

    import fusionsearch as fs
    from fusionsearch.graph.backbone import example_input

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    rec: dict[str, Any] = {
        "name": name,
        "family": family_of(name),
        "status": "done",
        "params": None,
        "input_size": None,
        "traced": False,
        "n_cut_points": None,
        "n_boundaries": None,
        "boundaries": None,
        "boundaries_ok": False,
        "split_exact_boundaries": None,
        "split_exact_all": None,
        "mismatch_boundaries": None,
        "mismatch_all": None,
        "train_graph_differs": None,
        "notes": None,
        "error_stage": None,
        "error_type": None,
        "error": None,
        "t_create": None,
        "t_trace": None,
        "seconds": None,
    }
    t_start = time.perf_counter()

    def fail(stage: str, e: BaseException) -> dict[str, Any]:
        rec.update(error_stage=stage, error_type=type(e).__name__, error=_first_line(e), where=_where(e))
        rec["seconds"] = round(time.perf_counter() - t_start, 2)
        return rec

    try:
        model = fs.create_backbone(name, pretrained=False)
    except Exception as e:
        return fail("create", e)
    rec["t_create"] = round(time.perf_counter() - t_start, 2)
    rec["params"] = sum(p.numel() for p in model.parameters())
    if rec["params"] > max_params * 1e6:
        rec["status"] = "skipped"
        rec["error"] = f"too big: {rec['params'] / 1e6:.1f}M params > {max_params:g}M"
        return rec

    t0 = time.perf_counter()
    try:
        g = fs.trace(model)
    except Exception as e:
        return fail("trace", e)
    rec["t_trace"] = round(time.perf_counter() - t0, 2)
    rec.update(
        traced=True,
        input_size=list(g.input_size),
        n_cut_points=len(g.cut_points),
        n_boundaries=len(g.boundaries),
        boundaries=[f"{b.name}:{b.layout}:{b.channels}:{b.reduction}" for b in g.boundaries],
        boundaries_ok=len(g.boundaries) >= 3,
        train_graph_differs=g.train_graph_differs,
        notes=list(g.notes),
    )

    model.eval()
    x = example_input(g.input_size, batch=batch, seed=1)
    func = "forward_features" if callable(getattr(model, "forward_features", None)) else "forward"
    try:
        with torch.no_grad():
            ref = getattr(model, func)(x)
            ref2 = getattr(model, func)(x)
    except Exception as e:
        return fail("eager", e)
    if _compare(ref2, ref) is not None:
        rec["notes"].append(f"eager model is not deterministic at batch {batch}: {_compare(ref2, ref)}")

    for key, points in (("boundaries", g.boundaries), ("all", g.cut_points)):
        try:
            segments = g.split(points)
            for s in segments:
                s.eval()
            with torch.no_grad():
                out = fs.run_segments(segments, x)
        except Exception as e:
            rec[f"split_exact_{key}"] = False
            rec[f"mismatch_{key}"] = f"{type(e).__name__}: {_first_line(e)}"
            if rec["error_stage"] is None:
                rec.update(
                    error_stage=f"split_{key}", error_type=type(e).__name__, error=_first_line(e), where=_where(e)
                )
            continue
        mismatch = _compare(out, ref)
        rec[f"split_exact_{key}"] = mismatch is None
        rec[f"mismatch_{key}"] = mismatch
    rec["seconds"] = round(time.perf_counter() - t_start, 2)
    return rec


def safe_run(name: str, max_params: float, batch: int, threads: int) -> dict[str, Any]:
    """``run_one`` that always returns a record: never leave the parent without a result."""
    import torch

    torch.set_num_threads(threads)
    try:
        return run_one(name, max_params, batch)
    except BaseException as e:
        return {
            "name": name,
            "status": "done",
            "traced": False,
            "error_stage": "harness",
            "error_type": type(e).__name__,
            "error": _first_line(e),
        }


def child_main(name: str, max_params: float, batch: int, threads: int) -> None:
    rec = safe_run(name, max_params, batch, threads)
    sys.stdout.write("\n" + RESULT_TAG + json.dumps(rec) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------------
# the driver


def _child_entry(name: str, max_params: float, batch: int, threads: int, conn: Any) -> None:
    """Body of the per-model process: run the model, send the record through ``conn``."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # models that print would garble the progress lines
    os.dup2(devnull, 2)
    conn.send(safe_run(name, max_params, batch, threads))
    conn.close()


class Runner:
    """At most ``jobs`` model processes at a time, each killed after ``timeout`` seconds.

    ``fork`` (default) forks a parent that has already imported torch, timm and fusionsearch, so a
    model costs its own work only, not ten seconds of imports; ``spawn`` starts a fresh
    interpreter per model (slower, fully isolated).
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ctx = mp.get_context(args.start_method)

    def run(self, names: list[str]) -> Iterator[dict[str, Any]]:
        self.running: list[tuple[str, Any, Any, float]] = []
        try:
            yield from self._run(names)
        finally:  # interrupted (Ctrl-C, SIGTERM): take the model processes down too
            for _, proc, _, _ in self.running:
                if proc.is_alive():
                    proc.kill()
                    proc.join()

    def _run(self, names: list[str]) -> Iterator[dict[str, Any]]:
        pending = list(reversed(names))
        running = self.running
        while pending or running:
            while pending and len(running) < max(1, self.args.jobs):
                name = pending.pop()
                recv, send = self.ctx.Pipe(duplex=False)
                a = self.args
                proc = self.ctx.Process(
                    target=_child_entry, args=(name, a.max_params, a.batch, a.threads, send), daemon=True
                )
                proc.start()
                send.close()
                running.append((name, proc, recv, time.perf_counter()))
            ready = mp_connection.wait([r for _, _, r, _ in running], timeout=0.5)
            still = []
            for name, proc, recv, t0 in running:
                elapsed = time.perf_counter() - t0
                rec = None
                if recv in ready:
                    try:
                        rec = recv.recv()
                        rec["wall_seconds"] = round(elapsed, 2)
                    except (EOFError, OSError):  # died without a result: segfault, OOM kill
                        proc.join(5)
                        rec = {
                            "name": name,
                            "status": "crash",
                            "error": f"process died, exit code {proc.exitcode}",
                            "seconds": round(elapsed, 1),
                        }
                elif elapsed > self.args.timeout:
                    rec = {
                        "name": name,
                        "status": "timeout",
                        "error": f"timed out after {self.args.timeout:g} s",
                        "seconds": round(elapsed, 1),
                    }
                if rec is None:
                    still.append((name, proc, recv, t0))
                    continue
                if proc.is_alive():
                    proc.join(2 if rec["status"] != "timeout" else 0)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
                recv.close()
                rec.setdefault("family", family_of(name))
                yield rec
            running[:] = still


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[rec["name"]] = rec  # the last record of a name wins
    return out


def failure_reasons(rec: dict[str, Any]) -> list[str]:
    if rec.get("status") in ("timeout", "crash", "skipped"):
        return [f"{rec['status']}: {rec.get('error')}"]
    if not rec.get("traced"):
        return [f"{rec.get('error_stage')}: {rec.get('error_type')}: {rec.get('error')}"]
    reasons = []
    if not rec.get("boundaries_ok"):
        reasons.append(f"only {rec.get('n_boundaries')} boundaries ({rec.get('n_cut_points')} cut points)")
    for key, label in (("boundaries", "split@boundaries"), ("all", "split@all-cuts")):
        if rec.get(f"split_exact_{key}") is False:
            reasons.append(f"{label} not exact: {rec.get(f'mismatch_{key}')}")
    return reasons


def _pct(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.1f}%)" if n else "0/0"


def summarize(
    names: list[str],
    results: dict[str, dict[str, Any]],
    too_big: dict[str, str],
    counts: dict[str, int | None],
) -> None:
    recs = [results[n] for n in names if n in results and n not in too_big]
    tried = [r for r in recs if r.get("status") != "skipped"]
    skipped = [r for r in recs if r.get("status") == "skipped"]
    n = len(tried)
    traced = [r for r in tried if r.get("traced")]
    bounds = [r for r in tried if r.get("boundaries_ok")]
    exact = [r for r in tried if r.get("split_exact_boundaries") and r.get("split_exact_all")]
    exact_b = [r for r in tried if r.get("split_exact_boundaries")]
    all3 = [r for r in tried if r.get("traced") and r.get("boundaries_ok") and r in exact]
    print()
    print("=" * 100)
    print(f"models selected: {len(names)}   tried: {n}   left out: {len(too_big) + len(skipped)} (too big)")
    print(f"  traced                               {_pct(len(traced), n)}")
    print(f"  >= 3 boundaries                      {_pct(len(bounds), n)}")
    print(f"  split exact at boundaries            {_pct(len(exact_b), n)}")
    print(f"  split exact (boundaries + all cuts)  {_pct(len(exact), n)}")
    print(f"  all three                            {_pct(len(all3), n)}")
    if traced:
        ex_t = sum(1 for r in traced if r in exact)
        print(f"  of the traced: split exact           {_pct(ex_t, len(traced))}")
    secs = [r.get("seconds") or 0 for r in tried]
    print(f"  time per model: total {sum(secs):.0f} s, max {max(secs, default=0):.0f} s")

    failing = [r for r in tried if r not in all3]
    if failing:
        by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in failing:
            by_family[r.get("family") or family_of(r["name"])].append(r)
        print()
        print(f"failures by family ({len(failing)} models in {len(by_family)} families)")
        for fam in sorted(by_family):
            print(f"  {fam}")
            for r in by_family[fam]:
                p = counts.get(r["name"]) or r.get("params")
                size = f"{p / 1e6:.1f}M" if p else "?M"
                for i, reason in enumerate(failure_reasons(r)):
                    head = f"{r['name']} [{size}]" if i == 0 else ""
                    print(f"    {head:44s} {reason}")

    left_out = [(r["name"], f"{r['status']}: {r.get('error')}") for r in tried if r.get("status") != "done"]
    left_out += [(r["name"], str(r.get("error"))) for r in skipped]
    left_out += sorted(too_big.items(), key=lambda kv: counts.get(kv[0]) or 0)
    errors = [(r["name"], f"{r.get('error_type')}: {r.get('error')}") for r in tried if r.get("error_stage")]
    print()
    print(f"left out ({len(left_out)}): timeouts, crashes, too big")
    for name, why in left_out:
        print(f"  {name:44s} {why}")
    print()
    print(f"errors ({len(errors)})")
    for name, why in errors:
        print(f"  {name:44s} {why}")
    missing = [nm for nm in names if nm not in results and nm not in too_big]
    if missing:
        print(f"\nnot run yet: {len(missing)} models (interrupted run; --resume continues)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sample", type=int, default=None, help="the N smallest models of each timm module")
    p.add_argument("--filter", default=None, help="timm.list_models patterns, comma separated: 'resnet*,vit_*'")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per model (default 120)")
    p.add_argument("--jobs", type=int, default=1, help="models run at the same time (default 1)")
    p.add_argument("--max-params", type=float, default=300.0, help="skip models above M million params")
    p.add_argument("--out", default="zoo_results.jsonl", help="JSON lines file, appended to")
    p.add_argument("--resume", action="store_true", help="skip models already in --out")
    p.add_argument("--limit", type=int, default=None, help="run at most this many models")
    p.add_argument("--batch", type=int, default=2, help="batch size of the exactness check")
    p.add_argument("--threads", type=int, default=1, help="torch threads per model process")
    p.add_argument(
        "--start-method",
        choices=("fork", "spawn", "forkserver"),
        default="fork" if sys.platform == "linux" else "spawn",
        help="how model processes start: fork (fast, default on Linux) or spawn",
    )
    p.add_argument("--summary-only", action="store_true", help="print the summary of --out and exit")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.one is not None:
        child_main(args.one, args.max_params, args.batch, args.threads)
        return 0

    names, counts, _ = select_models(args.filter, args.sample, param_counts)
    too_big = {
        n: f"too big: {counts[n] / 1e6:.1f}M params > {args.max_params:g}M"
        for n in names
        if counts[n] is not None and counts[n] > args.max_params * 1e6
    }
    out = Path(args.out)
    done = read_results(out) if (args.resume or args.summary_only) else {}
    todo = [n for n in names if n not in too_big and n not in done]
    n_done = len(names) - len(todo) - len(too_big)
    if args.limit is not None:
        todo = todo[: args.limit]
    results = {n: done[n] for n in names if n in done}
    if args.summary_only:
        summarize(names, results, too_big, counts)
        return 0

    print(
        f"{len(names)} models selected, {len(too_big)} too big, {n_done}"
        f" already in {out}; running {len(todo)} (timeout {args.timeout:g} s, jobs {args.jobs})",
        flush=True,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the Runner's cleanup
    if args.start_method == "fork":
        import fusionsearch  # noqa: F401  (imported once here, inherited by every fork)
    with out.open("a") as fh:
        for i, rec in enumerate(Runner(args).run(todo), 1):
            rec.setdefault("family", family_of(rec["name"]))
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            results[rec["name"]] = rec
            ok = rec.get("status") == "done" and not failure_reasons(rec)
            flag = "ok" if ok else ("SKIP" if rec.get("status") == "skipped" else "FAIL")
            reasons = "" if ok else "; ".join(failure_reasons(rec))
            size = f"{counts[rec['name']] / 1e6:.1f}M" if counts.get(rec["name"]) else "?M"
            print(
                f"[{i}/{len(todo)} {time.perf_counter() - t0:5.0f}s] {rec['name']:40s} {size:>7s}"
                f" {flag:4s} {rec.get('seconds') or 0:6.1f}s"
                f" cuts={rec.get('n_cut_points')} bnd={rec.get('n_boundaries')} {reasons}",
                flush=True,
            )
    summarize(names, results, too_big, counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
