"""The data of a run: the training batches as a function of (seed, step), each item drawn with its
own seed, and the loaders and their worker processes for training and evaluation.

Cut from the trainer so that the order of the data, which a resumed run and paired plans rely
on, is one module: ``fit`` and the calibration before it read the same stream from here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from fusionsearch.data.batching import collate_for
from fusionsearch.data.transforms import kind_of
from fusionsearch.train.config import TrainConfig
from fusionsearch.train.partial import batches_of, labelled_indices

__all__ = [
    "item_seed",
    "StepSampler",
    "Seeded",
    "TaskBatches",
    "OneTaskAtATime",
    "loader_workers",
    "train_loader",
    "eval_loader",
    "AUTO_LOADER_WORKERS",
]

AUTO_LOADER_WORKERS = 4  # num_workers=None on a GPU: at most this many per trial (fewer on fewer cores)


def item_seed(seed: int, position: int) -> int:
    """The seed of the random draws (flips) of the ``position``-th item of a run's training stream:
    a function of the two alone, so that no worker count, prefetching or resume changes a flip,
    and paired plans, which draw differently in their forward passes, still see the same images."""
    return (seed * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 63)


class StepSampler(Sampler[list[tuple[int, int]]]):
    """Batches as a function of the step: epoch e is randperm(seed + e), and the item at stream
    position k comes with its draw seed ``item_seed(seed, k)``."""

    def __init__(self, n: int, batch: int, seed: int, start: int, steps: int) -> None:
        self.n, self.batch, self.seed, self.start, self.steps = n, batch, seed, start, steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perms: dict[int, Tensor] = {}
        for step in range(self.start, self.steps):
            out = []
            for k in range(step * self.batch, (step + 1) * self.batch):
                epoch, pos = divmod(k, self.n)
                if epoch not in perms:
                    perms.clear()
                    perms[epoch] = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
                out.append((int(perms[epoch][pos]), item_seed(self.seed, k)))
            yield out

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


class Seeded(Dataset):
    """Item ``(i, s)`` is ``data[i]`` drawn with torch's generator seeded to ``s`` (the data sets
    augment with the global generator), and the caller's generator left as it was. Picklable: a
    spawned loader worker rebuilds it from ``data``."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.data[index]


class TaskBatches(Sampler[list[tuple[tuple[int, int], int]]]):
    """``batches: per_task``: step s holds, for each task k in order, the step-s batch of a
    ``StepSampler`` over that task's labelled items (its own seed), as keys ``((k, index), item
    seed)`` for ``OneTaskAtATime``; a function of (seed, step), so a resumed run continues it. A
    task without a labelled item has no part (it takes no part in any step, as in mixed batches)."""

    def __init__(self, indices: Sequence[Sequence[int]], batch: int, seed: int, start: int, steps: int) -> None:
        self.indices = {k: list(i) for k, i in enumerate(indices) if len(i)}
        self.streams = {
            k: StepSampler(len(i), batch, seed + 1_000_003 * k, start, steps) for k, i in self.indices.items()
        }
        self.start, self.steps = start, steps

    def __iter__(self) -> Iterator[list[tuple[tuple[int, int], int]]]:
        for parts in zip(*self.streams.values()):
            yield [((k, self.indices[k][i]), s) for k, part in zip(self.streams, parts) for i, s in part]

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


class OneTaskAtATime(Dataset):
    """Item ``(k, i)`` is ``data[i]`` labelled for ``tasks[k]`` alone: every other task's label is
    its kind's ``unlabelled_like`` value, so that task's loss skips the image."""

    def __init__(self, data: Dataset, tasks: Sequence[str]) -> None:
        self.data, self.order = data, list(tasks)
        own = getattr(data, "label_kinds", None)
        self.kinds = {t: kind_of(t, own) for t in self.order}

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # tasks, label_kinds, ... of the wrapped set
        if name in ("data", "order", "kinds"):
            raise AttributeError(name)
        return getattr(self.data, name)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        k, index = key
        item = dict(self.data[index])
        for task in self.order:
            if task != self.order[k] and task in item:
                item[task] = self.kinds[task].unlabelled_like(item[task])
        return item


def loader_workers(data: Dataset, cfg: TrainConfig, device: torch.device) -> int:
    """The data-loader processes of a run: ``cfg.num_workers`` if set; else (auto) none on the CPU,
    where they would take the cores the training needs, and none for a data set held in memory
    (``in_memory``: the generated sets, un-augmented splits), whose items cost nothing to read
    and whose cache each worker process would rebuild; else, on a GPU, up to 4, within this
    process's share of the cores (torch's thread count: ``--threads``, which ``run --workers``
    divides among its worker processes), one of them left to the training loop."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    if device.type != "cuda" or getattr(data, "in_memory", False):
        return 0
    return max(0, min(AUTO_LOADER_WORKERS, torch.get_num_threads() - 1))


def _loader_args(data: Dataset, cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    workers = loader_workers(data, cfg, device)
    args: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers:
        args["persistent_workers"] = True  # an evaluation loader is iterated many times per run
        if cfg.loader_start is not None:
            args["multiprocessing_context"] = cfg.loader_start
    return args


def train_loader(
    data: Dataset, cfg: TrainConfig, device: torch.device, start: int = 0, tasks: Sequence[str] | None = None
) -> DataLoader:
    """The batches that ``fit`` trains on from step ``start``: this seed's training order, each item
    drawn with its own seed (``item_seed``), in ``loader_workers`` processes. The same batches,
    flips included, for any worker count and after a resume. ``batches: per_task``: a full batch of
    each of ``tasks``' labelled images a step (default: every task of ``data``)."""
    if batches_of(cfg.batches, data) == "per_task":  # each task's own full batch of its labelled images (train.partial)
        tasks = list(tasks or getattr(data, "tasks", {}))
        indices = [labelled_indices(data, t) for t in tasks]
        per_task = TaskBatches(indices, cfg.batch_size, cfg.seed, start, cfg.steps)
        return DataLoader(
            Seeded(OneTaskAtATime(data, tasks)),
            batch_sampler=per_task,
            collate_fn=collate_for(data),
            **_loader_args(data, cfg, device),
        )
    sampler = StepSampler(len(data), cfg.batch_size, cfg.seed, start, cfg.steps)  # type: ignore[arg-type]
    return DataLoader(
        Seeded(data), batch_sampler=sampler, collate_fn=collate_for(data), **_loader_args(data, cfg, device)
    )


def eval_loader(data: Dataset, cfg: TrainConfig, device: torch.device) -> DataLoader:
    """The loader of ``fit``'s evaluations: built once per run, its worker processes kept between
    evaluations instead of started again at each."""
    return DataLoader(data, batch_size=cfg.batch_size, collate_fn=collate_for(data), **_loader_args(data, cfg, device))
