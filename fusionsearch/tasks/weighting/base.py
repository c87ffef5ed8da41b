"""The weighting contract (``Weighting``), the registry that training, recipes, the command line and
the search find methods in, and the argument range check the methods share.

Cut from the methods so that a new method, at either level, needs this module and nothing of the
others; a method is built from a recipe's spec in ``spec``, which knows both levels.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fusionsearch.errors import PlanError
from fusionsearch.registry import Registry
from fusionsearch.tasks.weighting.arguments import Argument

__all__ = [
    "WEIGHTINGS",
    "Weighting",
    "register_weighting",
    "get_weighting",
    "check_range",
    "LOSS_LEVEL",
    "GRADIENT_LEVEL",
]

WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting method", PlanError, name_attr="weighting_name")
LOSS_LEVEL, GRADIENT_LEVEL = "loss", "gradient"


def register_weighting(name: str) -> Callable[[type[Weighting]], type[Weighting]]:
    """Class decorator: make a weighting method available by ``name``."""
    return WEIGHTINGS.register(name)


def get_weighting(name: str) -> type[Weighting]:
    return WEIGHTINGS.get(name)


def check_range(
    method: str,
    name: str,
    value: float,
    low: float,
    high: float = float("inf"),
    *,
    open_low: bool = False,
    open_high: bool = True,
) -> None:
    """``value`` within [low, high) (``open_low``: (low, ...)), else a PlanError naming the argument."""
    below = value <= low if open_low else value < low
    above = value >= high if open_high else value > high
    if below or above:
        lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
        raise PlanError(f"weighting {method!r}: {name} must be in {lo}{low:g}, {high:g}{hi}, got {value!r}")


class Weighting(nn.Module, ABC):
    """A weighting method. This docstring is the contract.

    Constructor: ``Method(tasks, *, seed=0, **own)``: the task names in the net's order, a seed
    for methods that draw (``rlw``), and the method's own arguments (recipe ``args``).

    Class attributes: ``level`` (``"loss"`` or ``"gradient"``), ``lr_mult`` (learning-rate
    multiplier of its learned parameters, if any), ``search_args`` (argument -> [low, high], drawn
    log-uniformly when a study searches the method), ``arguments`` (argument -> its type and bounds,
    ``arguments.Number``, ``Choice`` or ``TaskVector``: what a recipe may give, checked when the
    recipe is loaded; None, a plugin's default, checks the constructor's signature instead).

    Methods:

    - ``backward(losses, extra, net, step, scale)``: put the update's gradient in the ``.grad`` of
      the net's parameters (and of the method's own, if it learns any); ``losses`` maps each task
      that the step's batch labels to its loss (``loss_weight`` applied; never empty, and a task
      with no label in the batch is absent, see the package docstring), ``extra`` is the units'
      extra loss, ``scale`` the AMP scaler's ``scale``. Returns the scalar that stands for the
      step's loss (for logging and the NaN check). Loss-level methods implement
      ``combine(losses, step)`` instead and inherit this.
    - ``observe(losses, step)``: the step's detached task losses (the tasks present), after the
      optimiser's step (loss histories of ``dwa``, ``famo``'s weight update).
    - ``weights()``: the effective weight of each task at the last step (what the report plots).
    - ``param_groups(base_lr)``: optimiser groups of its learned parameters (none by default).

    Its state (learned parameters, histories) is in ``state_dict``: checkpoints save it.
    """

    weighting_name = "base"  # set by ``register_weighting``
    level: ClassVar[str] = LOSS_LEVEL
    lr_mult: ClassVar[float] = 1.0
    # arguments a search may draw, as log-uniform [low, high] ranges (conditional on the method)
    search_args: ClassVar[dict[str, tuple[float, float]]] = {}
    arguments: ClassVar[dict[str, Argument] | None] = None

    def __init__(self, tasks: Sequence[str], *, seed: int = 0) -> None:
        super().__init__()
        if not tasks:
            raise PlanError("a weighting needs at least one task")
        self.tasks = list(tasks)
        self.seed = seed
        self._weights: dict[str, float] = {t: 1.0 for t in self.tasks}

    def combine(self, losses: Mapping[str, Tensor], step: int) -> Tensor:
        raise NotImplementedError(f"{self.weighting_name} is a gradient-level method: it has no combined loss")

    def backward(
        self, losses: Mapping[str, Tensor], extra: Tensor, net: nn.Module, step: int, scale: Callable[[Tensor], Tensor]
    ) -> Tensor:
        total = self.combine(losses, step) + extra
        scale(total).backward()
        return total

    def observe(self, losses: Mapping[str, float], step: int) -> None:
        """Called after each optimiser step with the step's task losses."""

    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return []
        return [{"name": f"weighting:{self.weighting_name}", "params": params, "lr": base_lr * self.lr_mult,
                 "lr_mult": self.lr_mult, "weight_decay": 0.0}]  # fmt: skip

    def _present(self, losses: Mapping[str, Tensor]) -> list[int]:
        """Indices (in ``self.tasks``) of the tasks this step labels, in the net's order."""
        return [i for i, t in enumerate(self.tasks) if t in losses]

    def _stack(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The present tasks' losses, in the net's order."""
        return torch.stack([losses[t].float() for t in self.tasks if t in losses])

    def _set_weights(self, idx: Sequence[int], w: Tensor) -> None:
        """Log the step's weights: ``w`` for the present tasks ``idx``, 0 for the absent."""
        values = w.detach().float().tolist()
        self._weights = {t: 0.0 for t in self.tasks}
        self._weights.update({self.tasks[i]: v for i, v in zip(idx, values)})

    def _history_row(self, losses: Mapping[str, float]) -> list[float]:
        return [float(losses[t]) if t in losses else float("nan") for t in self.tasks]
