"""Data sets, in a registry: a new one is one class plus one ``@register_dataset`` line."""

from __future__ import annotations

from fusionsearch.data.apascal import APascal
from fusionsearch.data.base import DATASETS, MultiTaskDataset, get_dataset, register_dataset
from fusionsearch.data.batching import KindCollate, collate_for, label_kinds_of
from fusionsearch.data.celeba import CelebA
from fusionsearch.data.cityscapes import Cityscapes
from fusionsearch.data.folder import FolderData
from fusionsearch.data.imdb_wiki import IMDBWiki
from fusionsearch.data.nyuv2 import NYUv2
from fusionsearch.data.partial import PartialLabels, check_labelled, describe_labelled, item_ids, labelled_mask
from fusionsearch.data.pascal_context import PASCALContext
from fusionsearch.data.synthetic import CLASSES, render_scene
from fusionsearch.data.synthetic_dataset import SyntheticScenes
from fusionsearch.data.transforms import DataError, MissingDataError

__all__ = [
    "DATASETS",
    "MultiTaskDataset",
    "register_dataset",
    "get_dataset",
    "KindCollate",
    "collate_for",
    "label_kinds_of",
    "SyntheticScenes",
    "NYUv2",
    "Cityscapes",
    "IMDBWiki",
    "FolderData",
    "PASCALContext",
    "CelebA",
    "APascal",
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
