"""A study's set-up, between training and the search: the recipe file parsed once into typed
sections (``recipe``, ``sections``), the search space it declares (``space``), the bounds on its
sizes (``limits``), and the recipe made concrete as data, tasks and a traced backbone, ready to
train plans (``experiment``). The hand-run ``train`` command, ``compare`` and the search all start
here; it holds no study (Optuna appears only as the trial ``SearchSpace.sample`` draws from).
Built on ``train``, ``nets``, ``tasks``, ``graph`` and ``data``.

The names load on first use (``registry.lazy_exports``), so that ``fusionsearch list``, which reads recipes, does not
import torch's training stack with them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusionsearch.registry import lazy_exports

if TYPE_CHECKING:
    from fusionsearch.experiment.experiment import Experiment, TrialResult, WarmStart
    from fusionsearch.experiment.recipe import Recipe, RecipeError, list_recipes, load_recipe
    from fusionsearch.experiment.space import Sampled, SearchSpace
else:
    __getattr__, __dir__, __all__ = lazy_exports(__name__)
