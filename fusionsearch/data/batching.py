"""Batches of items, each label collated by its kind.

Torch's default collate stacks every tensor, which is right for maps and per-image labels but not
for a label whose size varies by image (a list of boxes): ``collate_for`` asks each label's kind
(``LabelKind.collate``) and is torch's own ``default_collate`` whenever no kind needs more, so the
batches of the built-in data are made exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset, default_collate

from fusionsearch.data.transforms import kind_of
from fusionsearch.tasks.labels import LabelKind

__all__ = ["KindCollate", "collate_for", "label_kinds_of"]


def label_kinds_of(data: Dataset) -> dict[str, LabelKind]:
    """The kind of each label a data set provides (``tasks``), its own ``label_kinds`` first."""
    own = getattr(data, "label_kinds", None)
    return {t: kind_of(t, own) for t in getattr(data, "tasks", {}) or {}}


class KindCollate:
    """Collates a list of items key by key: a label by its kind, everything else by torch's
    ``default_collate``. Picklable (loader workers started with ``spawn`` receive a copy)."""

    def __init__(self, kinds: Mapping[str, LabelKind]) -> None:
        self.kinds = dict(kinds)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        out = {}
        for key in items[0]:
            values = [item[key] for item in items]
            kind = self.kinds.get(key)
            out[key] = kind.collate(values) if kind is not None else default_collate(values)
        return out


def collate_for(data: Dataset) -> Callable[[Any], Any]:
    """The ``collate_fn`` of ``data``'s loaders: ``default_collate`` unless a label's kind collates
    otherwise (``LabelKind.collate`` overridden), then a ``KindCollate`` for those labels."""
    kinds = {k: v for k, v in label_kinds_of(data).items() if type(v).collate is not LabelKind.collate}
    return KindCollate(kinds) if kinds else default_collate
