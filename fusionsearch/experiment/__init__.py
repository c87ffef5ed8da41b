"""A study's set-up, between training and the search: the recipe file parsed once into typed
sections (``recipe``, ``sections``), the search space it declares (``space``), the bounds on its
sizes (``limits``), and the recipe made concrete as data, tasks and a traced backbone, ready to
train plans (``experiment``). The hand-run ``train`` command, ``compare`` and the search all start
here; it holds no study (Optuna appears only as the trial ``SearchSpace.sample`` draws from).
Built on ``train``, ``nets``, ``tasks``, ``graph`` and ``data``.

The names load on first use (PEP 562), so that ``fusionsearch list``, which reads recipes, does not
import torch's training stack with them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusionsearch.registry import lazy_exports

if TYPE_CHECKING:
    from fusionsearch.experiment.experiment import Experiment, TrialResult, WarmStart
    from fusionsearch.experiment.recipe import Recipe, RecipeError, list_recipes, load_recipe
    from fusionsearch.experiment.space import Sampled, SearchSpace

_HOMES = {
    "Recipe": "fusionsearch.experiment.recipe",
    "RecipeError": "fusionsearch.experiment.recipe",
    "load_recipe": "fusionsearch.experiment.recipe",
    "list_recipes": "fusionsearch.experiment.recipe",
    "SearchSpace": "fusionsearch.experiment.space",
    "Sampled": "fusionsearch.experiment.space",
    "Experiment": "fusionsearch.experiment.experiment",
    "TrialResult": "fusionsearch.experiment.experiment",
    "WarmStart": "fusionsearch.experiment.experiment",
}

__all__ = [
    "Recipe",
    "RecipeError",
    "load_recipe",
    "list_recipes",
    "SearchSpace",
    "Sampled",
    "Experiment",
    "TrialResult",
    "WarmStart",
]

__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
