"""Label kinds: what a task's label is, as objects in a registry.

A kind says everything the rest of the package needs to know about one item's label without
knowing the task: its "no label here" value (a data set's unlabelled image; a partial-labels share
blanking it), which images of a batch carry a label, how the label follows its image through a
resize and a left-right flip, how a batch of labels is collated, and whether the head that predicts
it sees a map or pooled features. The data transforms, ``Task.labelled``, partial labels and the
heads ask the kind; nothing asks a task's name.

A new kind is one ``LabelKind`` subclass with ``@register_label_kind("name")`` in one file. Kinds
are small value objects: a kind with parameters (a segmentation's ignore value) compares equal to
another with the same parameters, so a task class and a data set can each hold one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import default_collate

from fusionsearch.errors import PlanError
from fusionsearch.registry import Registry

__all__ = [
    "LabelKind",
    "LABEL_KINDS",
    "register_label_kind",
    "get_label_kind",
    "IndexMap",
    "ScalarMap",
    "VectorMap",
    "ClassLabel",
    "MultiLabel",
    "IGNORE_INDEX",
    "UNLABELLED_CLASS",
    "MIN_VECTOR_NORM",
]

IGNORE_INDEX = 255  # an index map's "no class here" (NYUD, the official NDDR code)
UNLABELLED_CLASS = -1  # a per-image label's, and a multi-label entry's, "no label here"
# A stored vector (a normal) is a unit vector, or (near) zero where unlabelled; anything shorter
# than this is unlabelled, which also covers 8-bit encodings whose "zero" decodes to ~0.004.
MIN_VECTOR_NORM = 0.5


class LabelKind(ABC):
    """What a task's label is. This docstring is the contract.

    Class attributes:

    - ``name``: the registered name (set by ``register_label_kind``); ``str(kind)`` is it.
    - ``spatial``: True when the head needs the features laid out as a map (a per-pixel label,
      boxes); False when it predicts from features pooled over the image (one label per image).

    Methods, on one item's label (as a data set returns it) unless said otherwise:

    - ``unlabelled_like(label)``: the kind's "no label here" value in the form of ``label``: how a
      data set says that an image carries no label for a task, and what a partial-labels share
      puts in place of a label it takes away. An image holding it adds nothing to a loss or a metric.
    - ``labelled(batch)``: a (B,) bool tensor over a collated batch, True for the images that
      carry a label. "No objects" can be a label; "not labelled" is not.
    - ``resize(label, src, dst)``: the label of the image resized from (H, W) ``src`` to ``dst``.
    - ``flip(label, width)``: the label of the image mirrored left-right (``width`` in pixels).
    - ``collate(labels)``: one batch from a list of labels: stacked by default; a kind of
      variable size (a list of boxes per image) keeps a list.

    Instances are value objects: equal when of the same class with the same parameters.
    """

    name: ClassVar[str] = "kind"  # set by ``register_label_kind``
    spatial: ClassVar[bool] = True

    @abstractmethod
    def unlabelled_like(self, label: Any) -> Any:
        """The kind's "no label here" value, shaped as ``label``."""

    @abstractmethod
    def labelled(self, batch: Any) -> Tensor:
        """(B,) bool: which images of a collated batch carry a label."""

    def resize(self, label: Any, src: tuple[int, int], dst: tuple[int, int]) -> Any:
        """The label of an image resized from ``src`` to ``dst``; unchanged by default."""
        return label

    def flip(self, label: Any, width: int) -> Any:
        """The label of an image mirrored left-right; unchanged by default."""
        return label

    def collate(self, labels: Sequence[Any]) -> Any:
        """A batch of labels: stacked (torch's ``default_collate``) by default."""
        return default_collate(list(labels))

    def _params(self) -> tuple[Any, ...]:
        return tuple(sorted(vars(self).items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelKind) and type(other) is type(self) and other._params() == self._params()

    def __hash__(self) -> int:
        return hash((type(self), self._params()))

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params())
        return f"{type(self).__name__}({args})"


LABEL_KINDS: Registry[type[LabelKind]] = Registry("label kind", PlanError, name_attr="name")
"""The registered label kinds: name -> class (``register_label_kind`` adds one)."""


def register_label_kind(name: str) -> Callable[[type[LabelKind]], type[LabelKind]]:
    """Class decorator: make a label kind available by ``name`` (``tasks.yaml``, ``list``)."""
    return LABEL_KINDS.register(name)


def get_label_kind(kind: str | LabelKind, **kwargs: Any) -> LabelKind:
    """A kind instance: ``kind`` itself, or the registered kind of that name built with ``kwargs``."""
    return kind if isinstance(kind, LabelKind) else LABEL_KINDS.get(kind)(**kwargs)


def _any_per_image(valid: Tensor) -> Tensor:
    return valid.reshape(valid.shape[0], -1).any(1) if valid.dim() > 1 else valid


def _resize_masked(x: Tensor, valid: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Bilinear over valid pixels only: invalid pixels (zeros) would otherwise drag depths toward 0
    and shorten normals at every hole's border. A target pixel stays valid where at least half its
    interpolation weight lies on valid source pixels."""
    w = valid.to(x.dtype)[None]
    num = F.interpolate((x * w)[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    den = F.interpolate(w[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0]
    ok = den >= 0.5
    return torch.where(ok, num / den.clamp_min(1e-6), torch.zeros_like(num)), ok


@register_label_kind("index_map")
class IndexMap(LabelKind):
    """A per-pixel class index map, (H, W) int64, 255 = no label.

    (H, W) int64 class indices, ``ignore_index`` (255) = no label: resized nearest (classes
    must not blend), flipped as it is."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = int(ignore_index)

    def unlabelled_like(self, label: Tensor) -> Tensor:
        return torch.full_like(label, self.ignore_index)

    def labelled(self, batch: Tensor) -> Tensor:
        return _any_per_image(batch != self.ignore_index)

    def resize(self, label: Tensor, src: tuple[int, int], dst: tuple[int, int]) -> Tensor:
        return F.interpolate(label[None, None].float(), size=dst, mode="nearest-exact")[0, 0].to(label.dtype)

    def flip(self, label: Tensor, width: int) -> Tensor:
        return label.flip(-1)


@register_label_kind("scalar_map")
class ScalarMap(LabelKind):
    """(1, H, W) float, 0 = no label (a depth): resized bilinear over the labelled pixels."""

    def unlabelled_like(self, label: Tensor) -> Tensor:
        return torch.zeros_like(label)

    def labelled(self, batch: Tensor) -> Tensor:
        return _any_per_image(batch > 0)

    def resize(self, label: Tensor, src: tuple[int, int], dst: tuple[int, int]) -> Tensor:
        return _resize_masked(label, label[0] > 0, dst)[0]

    def flip(self, label: Tensor, width: int) -> Tensor:
        return label.flip(-1)


@register_label_kind("vector_map")
class VectorMap(LabelKind):
    """A per-pixel unit vector map, (C, H, W), the zero vector = no label (normals).

    (C, H, W) unit vectors, the zero vector = no label, channel 0 the image's x axis (normals):
    resized bilinear over the labelled pixels and renormalised; a mirrored vector field points the
    other way in x, so a flip negates channel 0."""

    def unlabelled_like(self, label: Tensor) -> Tensor:
        return torch.zeros_like(label)

    def labelled(self, batch: Tensor) -> Tensor:
        return _any_per_image(batch.norm(dim=1) > MIN_VECTOR_NORM)

    def resize(self, label: Tensor, src: tuple[int, int], dst: tuple[int, int]) -> Tensor:
        v, ok = _resize_masked(label, label.norm(dim=0) > MIN_VECTOR_NORM, dst)
        return F.normalize(v, dim=0) * ok

    def flip(self, label: Tensor, width: int) -> Tensor:
        out = label.flip(-1)
        sign = torch.ones(out.shape[0], 1, 1, dtype=out.dtype)
        sign[0] = -1
        return out * sign


@register_label_kind("class")
class ClassLabel(LabelKind):
    """One value per image: a class index or a number, -1 = no label.

    One value per image (a class index, or a number such as an age), -1 = no label: not
    resized, not flipped; predicted from pooled features."""

    spatial = False

    def unlabelled_like(self, label: Tensor) -> Tensor:
        return torch.full_like(label, UNLABELLED_CLASS)

    def labelled(self, batch: Tensor) -> Tensor:
        return batch.reshape(-1) >= 0


@register_label_kind("multi_label")
class MultiLabel(LabelKind):
    """Several binary attributes per image, (A,), -1 = not labelled.

    (A,) per image, one entry per attribute: 1 present, 0 absent, -1 = this attribute is not
    labelled (CelebA's 40 attributes, aPascal's 64). An image is labelled where any attribute is.
    Not resized or flipped (an attribute belongs to the whole image); predicted from pooled features."""

    spatial = False

    def unlabelled_like(self, label: Tensor) -> Tensor:
        return torch.full_like(label, UNLABELLED_CLASS)

    def labelled(self, batch: Tensor) -> Tensor:
        return (batch >= 0).reshape(batch.shape[0], -1).any(1)
