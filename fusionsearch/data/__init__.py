"""Data sets, in a registry: a new one is one class plus one ``@register_dataset`` line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from ..errors import FusionSearchError
from .synthetic import CLASSES, render_scene
from .synthetic_dataset import SyntheticScenes

__all__ = ["DATASETS", "register_dataset", "get_dataset", "SyntheticScenes", "CLASSES", "render_scene"]

DATASETS: dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    def add(factory: Callable[..., Dataset]) -> Callable[..., Dataset]:
        if name in DATASETS:
            raise ValueError(f"data set {name!r} is already registered")
        DATASETS[name] = factory
        return factory

    return add


def get_dataset(name: str, **kwargs: Any) -> Dataset:
    try:
        factory = DATASETS[name]
    except KeyError:
        raise FusionSearchError(f"unknown data set {name!r}; registered: {', '.join(sorted(DATASETS))}") from None
    return factory(**kwargs)


register_dataset("synthetic")(SyntheticScenes)
