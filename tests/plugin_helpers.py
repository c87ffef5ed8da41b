"""A user's plugin file, written where the package never looks, and a context that forgets every
plugin a test loaded in this process (modules, registry names, ``sys.path``), so tests stay
independent although a plugin's import lasts for the process."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from helpers import tiny_recipe

import fusionsearch.plugins as plugins
from fusionsearch.data import DATASETS
from fusionsearch.experiment.recipe import Recipe
from fusionsearch.nets.fusion import FUSION_UNITS
from fusionsearch.tasks import TASKS
from fusionsearch.tasks.weighting import WEIGHTINGS

SOURCE = '''"""A data set of the user's: the synthetic scenes under another name."""

from fusionsearch.data import MultiTaskDataset, SyntheticScenes, register_dataset


@register_dataset("{name}")
class PluginScenes(MultiTaskDataset):
    """Scenes registered by a plugin file."""

    tasks = dict(SyntheticScenes.tasks)
    default_lengths = {{"train": 16, "val": 4}}
    takes_seed = True
    deterministic = True

    def __init__(self, split="train", length=None, size=32, seed=0):
        self.scenes = SyntheticScenes(split, length or self.default_lengths[split], size, seed)

    def __len__(self):
        return len(self.scenes)

    def __getitem__(self, i):
        return self.scenes[i]
'''


def write_plugin(folder: Path, stem: str = "user_scenes", name: str = "plugin_scenes") -> Path:
    """A plugin file ``folder/STEM.py`` that registers the data set ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.py"
    path.write_text(SOURCE.format(name=name))
    return path


def plugin_recipe(plugin: Path, name: str = "plugin_scenes") -> Recipe:
    """The tests' tiny recipe (test_resnet, 32 px, 4 steps) on the plugin's data set."""
    tiny = tiny_recipe()
    return tiny.with_overrides(data={**tiny.data, "name": name}, plugins=[str(plugin)])


@contextlib.contextmanager
def forgetting_plugins() -> Iterator[None]:
    """Undo what loading plugins did to this process: their modules, the names they registered,
    the folders they put on ``sys.path`` and the plugins' records."""
    registries = (DATASETS, TASKS, FUSION_UNITS, WEIGHTINGS)
    names = [set(r) for r in registries]
    loaded, owner, path = dict(plugins._loaded), dict(plugins._owner), list(sys.path)
    try:
        yield
    finally:
        for spec, module in list(plugins._loaded.items()):
            if spec not in loaded:
                sys.modules.pop(module, None)
        for registry, before in zip(registries, names):
            for name in set(registry) - before:
                registry.pop(name)
        plugins._loaded.clear()
        plugins._loaded.update(loaded)
        plugins._owner.clear()
        plugins._owner.update(owner)
        sys.path[:] = path
