"""The saved file of a stitched net: ``save`` writes weights, plan, tasks and backbone names under a
format header; ``load`` reads it with ``weights_only=True``, refuses what an untrusted file could
use to steer timm (``SAFE_CREATE_KWARGS``), migrates version-1 files and rebuilds the net.

Cut here because the file format is a contract with files already on disk (its version, its
migration, its trust rules), which changes on its own schedule, apart from the net and its build.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from fusionsearch.errors import PlanError, UntrustedFileError
from fusionsearch.nets.builder import build
from fusionsearch.nets.net import StitchedNet
from fusionsearch.nets.plan import StitchPlan
from fusionsearch.paths import write_atomic

__all__ = ["save", "load", "SAFE_CREATE_KWARGS"]

FORMAT = "fusionsearch.stitched"
FORMAT_VERSION = 2  # 2: the shortcut became conv-BN-ReLU (version 1 files load with the old one)


def save(net: StitchedNet, path: str | os.PathLike[str], weighting: Mapping[str, Any] | None = None) -> None:
    """Save a stitched net to one file: weights, plan, tasks and backbone names (``load`` reads it).

    Args:
        net: the network.
        path: the file to write.
        weighting: the training's weighting method and its learned state (``fit``'s
            ``history["weighting"]``), kept beside the net (e.g. uncertainty's log-variances).
    """
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "tasks": dict(net.tasks),
        "plan": net.plan.to_dict(),
        "backbones": list(net.meta.backbones),
        "backbone_is_module": list(net.meta.backbone_is_module),
        "input_size": list(net.meta.input_size),
        "create_kwargs": dict(net.meta.create_kwargs),
        "leaf": {t: list(v) for t, v in leaf.items()} if isinstance(leaf := net.meta.leaf, dict) else list(leaf),
        "task_args": dict(net.meta.task_args),
        "state_dict": net.state_dict(),
    }
    if weighting is not None:
        payload["weighting"] = {"name": str(weighting["name"]), "state_dict": dict(weighting.get("state_dict", {}))}
    write_atomic(path, lambda f: torch.save(payload, f))  # whole or not at all


# timm.create_model arguments a saved net may carry without ``trust``: shapes and regularisation,
# nothing that names a file, a URL, a hub repository or pretrained weights to fetch
SAFE_CREATE_KWARGS = frozenset(
    {
        "output_stride",
        "img_size",
        "in_chans",
        "patch_size",
        "num_classes",
        "global_pool",
        "drop_rate",
        "drop_path_rate",
        "dynamic_img_size",
        "dynamic_img_pad",
        "class_token",
        "reg_tokens",
        "no_embed_class",
        "window_size",
    }
)


def _plain(value: Any) -> bool:
    """A number, a bool, a short string without a path, or a list of them."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, str):
        return len(value) < 64 and not any(c in value for c in "/\\:")
    return isinstance(value, (int, float, bool)) or value is None


def _check_untrusted(payload: Mapping[str, Any], where: str) -> None:
    """Refuse what a crafted file could use to steer timm (see ``load``)."""
    hint = "load it with trust=True (--trust) only if you made the file yourself"
    for name in payload.get("backbones", []):
        if not isinstance(name, str) or not _plain(name) or not timm.is_model(name):
            raise UntrustedFileError(f"{where} names backbone {name!r}, not a plain timm model name: {hint}")
    kwargs = payload.get("create_kwargs", {})
    if not isinstance(kwargs, Mapping):
        raise UntrustedFileError(f"{where} has malformed create_kwargs: {hint}")
    bad = sorted(k for k, v in kwargs.items() if k not in SAFE_CREATE_KWARGS or not _plain(v))
    if bad:
        raise UntrustedFileError(f"{where} asks timm for {', '.join(map(str, bad))}: {hint}")
    size = payload.get("input_size", [])
    if not (
        isinstance(size, (list, tuple)) and len(size) == 3 and all(isinstance(v, int) and 0 < v <= 8192 for v in size)
    ):
        raise UntrustedFileError(
            f"{where} has input size {size!r}: three whole numbers from 1 to 8192 expected: {hint}"
        )


def load(
    path: str | os.PathLike[str],
    backbone: nn.Module | Sequence[nn.Module] | None = None,
    map_location: str | torch.device = "cpu",
    trust: bool = False,
) -> StitchedNet:
    """Rebuild a saved stitched net (read with ``weights_only=True``: no pickled code runs).

    A net built from timm names needs nothing else; one built from ``nn.Module`` backbones needs
    the same module(s) again as ``backbone`` (their weights are overwritten by the saved ones).

    The file says which timm models to create, and a file from elsewhere is not to be trusted
    with that: unless ``trust=True``, only names ``timm.is_model`` knows and the shape arguments
    in ``SAFE_CREATE_KWARGS`` are accepted, and pretrained weights are never fetched (no hub name,
    checkpoint path or ``pretrained_cfg_overlay`` comes from the file).
    """
    p = Path(path)
    payload = _read(p, map_location)
    specs: Any = payload["backbones"]
    if any(payload.get("backbone_is_module", [])):
        if backbone is None:
            raise PlanError(
                f"{str(p)!r} was built from nn.Module backbones ({', '.join(map(str, specs))}): pass them again as"
                " load(path, backbone=...)"
            )
        specs = backbone
    elif not trust:
        _check_untrusted(payload, repr(str(p)))
    net = _rebuild(payload, specs, p)
    _load_weights(net, payload["state_dict"], p)
    return net.eval()


def _read(p: Path, map_location: str | torch.device) -> dict[str, Any]:
    """The file's payload, checked to be a whole stitched network this version can read."""
    if not p.is_file():
        raise FileNotFoundError(f"stitched network {str(p)!r} does not exist")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated, or a pickle with code in it
        raise PlanError(f"{str(p)!r} cannot be read as a stitched network: {type(e).__name__}: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PlanError(f"{str(p)!r} is not a fusionsearch stitched network (no {FORMAT!r} header)")
    if not isinstance(payload.get("version", 0), int) or payload.get("version", 0) > FORMAT_VERSION:
        raise PlanError(f"{str(p)!r} was saved by a newer fusionsearch (format {payload.get('version')!r})")
    missing = [k for k in ("tasks", "plan", "backbones", "input_size", "state_dict") if k not in payload]
    if missing:
        raise PlanError(f"{str(p)!r} is an incomplete stitched network: it lacks {', '.join(missing)}")
    return payload


def _plan_dict(payload: Mapping[str, Any]) -> Any:
    """The saved plan as a dict; a version-1 file's plan gets the defaults it was trained with,
    from before the official ones (identity shortcut, half-pixel resizing, torch's NDDR BatchNorm)."""
    plan_d = dict(payload["plan"]) if isinstance(payload["plan"], Mapping) else payload["plan"]
    if payload.get("version", 0) < 2 and isinstance(plan_d, dict):  # saved before the official defaults
        plan_d.setdefault("shortcut_init", "identity")
        plan_d.setdefault("shortcut_resize", "half_pixel")
        old_bn = {"bn_momentum": 0.1, "bn_eps": 1e-5}  # torch's, NDDR's before version 2
        if plan_d.get("unit", "nddr") == "nddr":
            plan_d["unit_args"] = {**old_bn, **dict(plan_d.get("unit_args") or {})}
        plan_d["per_point"] = {
            k: ({**old_bn, **v} if v.get("unit", plan_d.get("unit", "nddr")) == "nddr" else v)
            for k, v in dict(plan_d.get("per_point") or {}).items()
        }
    return plan_d


def _rebuild(payload: Mapping[str, Any], specs: Any, p: Path) -> StitchedNet:
    """The saved net rebuilt without weights (never pretrained), a failure as a ``PlanError``."""
    plan_d = _plan_dict(payload)
    try:
        return build(
            specs,
            payload["tasks"],
            StitchPlan.from_dict(plan_d),
            input_size=payload["input_size"],
            leaf=payload.get("leaf", []),
            task_args=payload.get("task_args") or None,
            pretrained=False,
            **{k: v for k, v in (payload.get("create_kwargs") or {}).items() if k != "pretrained"},
        )
    except PlanError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise PlanError(f"{str(p)!r} holds a network that cannot be rebuilt: {type(e).__name__}: {e}") from None


def _load_weights(net: StitchedNet, state: Any, p: Path) -> None:
    """The saved weights into the rebuilt net; ones that do not fit are a ``PlanError``."""
    if not isinstance(state, Mapping):
        raise PlanError(f"{str(p)!r} holds no weights (state_dict is a {type(state).__name__})")
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "mismatch"
        raise PlanError(f"{str(p)!r} holds weights that do not fit its network: {first}") from None
