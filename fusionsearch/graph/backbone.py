"""Creating backbones: timm's model factory, local checkpoints, and the input size a model expects.

Everything that turns a user's "resnet101" or a checkpoint path into an ``nn.Module`` lives here,
so the graph and the stitcher never call timm's factory themselves.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from fusionsearch.errors import ArgumentError, CheckpointError, UnknownBackboneError

__all__ = ["create_backbone", "input_size_of", "load_weights", "suggest_names"]

DEFAULT_INPUT_SIZE = (3, 224, 224)


def suggest_names(name: str, n: int = 5) -> list[str]:
    """Closest timm model names to ``name``: substring matches first, then fuzzy ones."""
    names = timm.list_models()
    key = name.lower().split(".")[0]
    close = difflib.get_close_matches(key, names, n=n, cutoff=0.6)
    contains = [m for m in names if key and key in m and m not in close]
    return (close + sorted(contains, key=len))[:n]


def create_backbone(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a timm model by name, without downloading anything unless ``pretrained=True``.

    ``checkpoint`` loads a local state dict (timm's ``load_checkpoint``: plain, ``state_dict`` or
    ``model`` keyed, EMA aware) after creation, which is how users without network access start
    from ImageNet or single-task weights. Extra keyword arguments go to ``timm.create_model``
    (``output_stride=8`` for a dilated DeepLab backbone, ``img_size=...`` for ViTs, ...).
    """
    if not timm.is_model(name) and not name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        raise UnknownBackboneError(name, suggest_names(name))
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (TypeError, ValueError, AssertionError) as e:
        if not kwargs:
            raise
        # a keyword the model does not take (or a value it refuses) is the recipe's, not a bug
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ArgumentError(f"backbone_args {dict(kwargs)!r} are refused by timm's {name}: {first}") from None
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model.eval()


def load_weights(model: nn.Module, checkpoint: str | os.PathLike[str], strict: bool = True) -> None:
    """Load a local checkpoint into ``model`` with ``weights_only=True`` (no pickled code runs)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        timm.models.load_checkpoint(model, str(path), strict=strict, weights_only=True)
    except Exception as e:  # truncated, refused by weights_only (code in the pickle), or another model's
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be loaded: {type(e).__name__}: {first}") from None


def input_size_of(model: nn.Module) -> tuple[int, int, int]:
    """The (C, H, W) input a model was built for: timm's pretrained config, else 3x224x224."""
    if getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None):
        size = timm.data.resolve_model_data_config(model).get("input_size")
        if size is not None and len(size) == 3:
            return (int(size[0]), int(size[1]), int(size[2]))
    return DEFAULT_INPUT_SIZE


def example_input(input_size: tuple[int, int, int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A deterministic random image batch for shape propagation and checks."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *input_size), generator=gen)
