"""Data sets, in a registry: a new one is one class plus one ``@register_dataset`` line."""

from __future__ import annotations

from .base import DATASETS, MultiTaskDataset, get_dataset, register_dataset
from .imdb_wiki import IMDBWiki
from .nyuv2 import NYUv2
from .partial import PartialLabels, check_labelled, describe_labelled, item_ids, labelled_mask
from .synthetic import CLASSES, render_scene
from .synthetic_dataset import SyntheticScenes
from .transforms import DataError, MissingDataError

__all__ = [
    "DATASETS",
    "MultiTaskDataset",
    "register_dataset",
    "get_dataset",
    "SyntheticScenes",
    "NYUv2",
    "IMDBWiki",
    "PartialLabels",
    "check_labelled",
    "describe_labelled",
    "item_ids",
    "labelled_mask",
    "DataError",
    "MissingDataError",
    "CLASSES",
    "render_scene",
]
