"""Data sets, in a registry: a new one is one class plus one ``@register_dataset`` line.

Exported: the contract, its registry, the collation a loader needs, the synthetic scenes, the
partial-labels wrapper, and the errors a missing or malformed data set raises; the built-in data
sets are found by name (``get_dataset``) or imported from their modules. Importing the package
registers every built-in data set. Names load on first use (``registry.lazy_exports``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusionsearch.registry import lazy_exports

if TYPE_CHECKING:
    from fusionsearch.data.base import DATASETS, MultiTaskDataset, get_dataset, register_dataset
    from fusionsearch.data.batching import collate_for
    from fusionsearch.data.partial import PartialLabels
    from fusionsearch.data.synthetic_dataset import SyntheticScenes
    from fusionsearch.data.transforms import DataError, MissingDataError
else:
    __getattr__, __dir__, __all__ = lazy_exports(__name__)

# importing these registers the built-in data sets (in this order, which `fusionsearch list` shows)
from fusionsearch.data import (
    apascal,
    celeba,
    cityscapes,
    folder,
    imdb_wiki,
    nyuv2,
    pascal_context,
    synthetic_dataset,
)
