"""The data set contract and its registry.

A data set is one ``MultiTaskDataset`` subclass with ``@register_dataset("name")`` in one file;
``Experiment`` builds it from a recipe's ``data`` section, and the command line's
``--data NAME[:ROOT]`` picks it, with no list to edit anywhere else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor
from torch.utils.data import Dataset

from fusionsearch.errors import FusionSearchError
from fusionsearch.registry import Registry

__all__ = ["MultiTaskDataset", "DATASETS", "register_dataset", "get_dataset"]


class MultiTaskDataset(Dataset, ABC):
    """A data set of images labelled for several tasks. This docstring is the contract.

    Constructor: ``Cls(split="train" | "val", length=None, size=None, **own)``. ``length`` takes
    the first N items (None: all, or ``default_lengths[split]``); ``size`` is the (H, W) or side
    every item is resized to (None: native); ``own`` comes from the recipe's ``data`` section
    (``root``, ``layout``, ...) and, when ``takes_seed``, ``seed`` is the study's seed.

    Class attributes:

    - ``tasks``: task name -> output size (classes, channels) that this set labels (an instance
      may narrow it, e.g. by layout);
    - ``tasks_for(**own)`` (static, optional): the same without reading files, so a recipe's
      network can be built before its data is on disk;
    - ``task_types_for(**own)`` (static, optional): task name -> registered task type for labels
      whose name is not a registered task (a folder's ``tasks.yaml`` declares ``quality: {task: cls}``);
      recipes, heads and Delta-m read the type from it;
    - ``label_kinds`` (optional, may be per instance): task name -> ``LabelKind`` for a label whose
      kind is not its registered task's (a task declared under another name, a kind with the
      data's own parameters); the transforms, partial labels and batching read it first;
    - ``default_lengths``: split -> length for sets with no natural length (generated ones);
    - ``max_length``: the most items such a set makes in a split (None: what its files hold), so
      that a recipe's length is bounded before any item is made;
    - ``takes_seed``: whether the items depend on the study's seed.

    ``__getitem__(i)`` returns ``{"image": (3, H, W) float, TASK: label, ...}`` with one label per
    task under the task's name, each as its label kind says (``tasks.labels``), so that the shared
    transforms can resize, flip and collate it. An image without a task's label holds its kind's
    "no label here" value (``LabelKind.unlabelled_like``: 255, zeros, -1 for a class or attribute). Random augmentation
    draws from torch's global generator, and only from it: the training loader seeds it for each
    item (``train.item_seed``), so that a flip is the same in every loader worker and on resume.
    A set must be picklable (loader workers started with ``spawn`` receive a copy).

    ``item_ids()`` (optional): a stable string id per item, in order, by which a recipe's
    ``data.labelled`` lists the images that carry a task's label (``data.partial``); without it
    the ids are the indices.
    """

    tasks: dict[str, int] = {}
    default_lengths: ClassVar[dict[str, int]] = {}
    max_length: ClassVar[int | None] = None
    takes_seed: ClassVar[bool] = False

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> dict[str, Tensor]: ...


DATASETS: Registry[Callable[..., Dataset]] = Registry("data set", FusionSearchError)
"""The registered data sets: name -> class (``register_dataset`` adds one)."""


def register_dataset(name: str) -> Callable[[Any], Any]:
    """Class decorator: make a data set available to recipes and ``--data`` by ``name``."""
    return DATASETS.register(name)


def get_dataset(name: str, **kwargs: Any) -> Dataset:
    """A data set by registered name (``fusionsearch list datasets``); keyword arguments go to its constructor."""
    return DATASETS.get(name)(**kwargs)
