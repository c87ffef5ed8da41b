"""Data sets, in a registry: a new one is one class plus one ``@register_dataset`` line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from ..errors import FusionSearchError
from ..registry import Registry
from .imdb_wiki import IMDBWiki
from .nyuv2 import NYUv2
from .synthetic import CLASSES, render_scene
from .synthetic_dataset import SyntheticScenes
from .transforms import DataError, MissingDataError

__all__ = [
    "DATASETS",
    "register_dataset",
    "get_dataset",
    "SyntheticScenes",
    "NYUv2",
    "IMDBWiki",
    "DataError",
    "MissingDataError",
    "CLASSES",
    "render_scene",
]

DATASETS: Registry[Callable[..., Dataset]] = Registry("data set", FusionSearchError)


def register_dataset(name: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Decorator: make a data set class (or factory) available by ``name``."""
    return DATASETS.register(name)


def get_dataset(name: str, **kwargs: Any) -> Dataset:
    return DATASETS.get(name)(**kwargs)


register_dataset("synthetic")(SyntheticScenes)
register_dataset("nyuv2")(NYUv2)
register_dataset("imdb_wiki")(IMDBWiki)
