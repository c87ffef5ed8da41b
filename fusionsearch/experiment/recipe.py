"""Recipes: one YAML file holds everything a study needs (backbone, tasks, data, training budget,
the default plan, the search space and the study's settings), so that a run is reproducible from
the file alone and a paper's set-up is one file in ``fusionsearch/recipes/`` (``recipes/`` at the
project's root links there).

Unknown keys are errors that name the key: a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fusionsearch.data.partial import check_labelled
from fusionsearch.errors import FusionSearchError, PluginError
from fusionsearch.experiment.limits import check_limits, image_size
from fusionsearch.experiment.sections import (
    MAX_SEED,
    CompareSection,
    ConfirmSection,
    DataSection,
    PaperSection,
    StudySection,
)
from fusionsearch.experiment.space import SearchSpace
from fusionsearch.paths import read_input_text
from fusionsearch.plugins import load_plugins
from fusionsearch.tasks.delta import DeltaM, primary_metric
from fusionsearch.tasks.task import task_arguments, task_class
from fusionsearch.train.config import TrainConfig
from fusionsearch.validation import check_call, check_fields, did_you_mean

__all__ = ["Recipe", "RecipeError", "load_recipe", "load_yaml", "recipe_dirs", "list_recipes", "parse_data"]

DEFAULT_RECIPE = "quick"
CONFIRM_DEFAULTS: dict[str, Any] = {"top": 2, "seeds": 3, "per": None}


T = TypeVar("T")


class RecipeError(FusionSearchError, ValueError):
    """A recipe that can't be read or has a wrong or unknown field."""


@dataclass
class Recipe:
    """A study's set-up, read from a recipe file (``load_recipe``).

    ``data`` keys other than ``name``, ``size``, ``train_length`` and ``val_length`` go to the
    data set's constructor (``root``, ``layout``, ...).

    The fields hold the sections as written, which is what a study stores and compares when it
    is resumed (``to_dict``). Each section is parsed once, when the recipe is made, into the
    typed object the code reads by attribute: ``space`` (``search``), ``training`` (``train``),
    ``gain`` (``delta_m``), ``defaults`` (``study``) and ``confirmation`` (``confirm``). A
    section assigned anew (a command's override: ``r.train = {**r.train, "steps": 5}``) is
    parsed again when next read."""

    name: str = "custom"
    about: str = ""
    reproduces: str = ""
    paper: dict[str, Any] = field(default_factory=dict)
    backbone: str = "resnet18"
    backbone_args: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    tasks: list[str] = field(default_factory=lambda: ["seg", "normal"])
    task_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=lambda: {"name": "synthetic"})
    train: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=lambda: {"at": "boundaries", "unit": "nddr"})
    search: dict[str, Any] = field(default_factory=dict)
    study: dict[str, Any] = field(default_factory=dict)
    compare: dict[str, Any] = field(default_factory=dict)
    delta_m: dict[str, Any] = field(default_factory=dict)
    confirm: dict[str, Any] = field(default_factory=dict)
    plugins: list[str] = field(default_factory=list)  # modules or .py files loaded first (fusionsearch.plugins)
    path: str | None = None
    # section name -> (the section as it was parsed, its typed form): see ``_parsed``
    _views: dict[str, tuple[Any, Any]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"recipe {self.name!r}:" if isinstance(self.name, str) else "recipe:"
        self._load_plugins(where)
        if isinstance(self.tasks, str):
            self.tasks = [t.strip() for t in self.tasks.split(",") if t.strip()]
        self._check_types(where)
        if not self.tasks:
            raise RecipeError(f"{where} tasks is empty: name at least one task, e.g. [seg, normal]")
        twice = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        if twice:
            raise RecipeError(f"{where} tasks name {', '.join(twice)} more than once: each task is one column")
        if "name" not in self.data:
            raise RecipeError(f"{where} data needs a name (synthetic, nyuv2, imdb_wiki, ...)")
        seed = self.defaults.seed
        if not 0 <= seed <= MAX_SEED:
            raise RecipeError(f"{where} study.seed must be in 0..{MAX_SEED:,}, got {seed}")
        try:
            check_limits(self.data, self.tasks, self.training)  # sizes a machine holds, its data makes
            check_labelled(self.data.get("labelled"), self.tasks)
        except FusionSearchError as e:
            raise RecipeError(f"{where} {e}") from None
        for t in self.task_args:
            if t not in self.tasks:
                raise RecipeError(f"recipe {self.name!r}: task_args names {t!r}, which is not in tasks {self.tasks}")
        self._check_arguments(where)
        try:
            if self.gain.metrics == "primary":
                for t in self.tasks:
                    primary_metric(t, self.task_types())
        except FusionSearchError as e:
            raise RecipeError(f"recipe {self.name!r}: {e}") from None
        self.confirmation  # noqa: B018  # parsed now: a bad field stops the recipe, not the confirmation

    @classmethod
    def stored_fields(cls) -> list[str]:
        """The fields a recipe file may set and a study stores (``path`` is where it was read)."""
        return [f.name for f in fields(cls) if f.init and f.name != "path"]

    def _parsed(self, section: str, parse: Callable[[Any], T]) -> T:
        """``parse`` of the raw ``section``: run when first read and again only after the section
        changed, so each typed section is built once however often the code reads it."""
        raw = getattr(self, section)
        held = self._views.get(section)
        if held is None or held[0] != raw:
            held = (copy.deepcopy(raw), parse(raw))
            self._views[section] = held
        return held[1]

    @property
    def space(self) -> SearchSpace:
        """The search space of ``search`` (read-only: shared by every reader of this recipe)."""
        return self._parsed("search", SearchSpace.from_dict)

    @property
    def training(self) -> TrainConfig:
        """``train`` as a ``TrainConfig`` (read-only; ``train_config`` gives a copy to change)."""
        return self._parsed("train", lambda d: TrainConfig(**d))

    @property
    def gain(self) -> DeltaM:
        """The recipe's Delta-m convention (``delta_m: {average: tasks|metrics, metrics: all|primary}``)."""
        return self._parsed("delta_m", DeltaM.from_dict)

    @property
    def defaults(self) -> StudySection:
        """The ``study`` section: how ``fusionsearch run`` searches when no option says otherwise."""
        return self._parsed("study", lambda d: StudySection(**d))

    @property
    def confirmation(self) -> ConfirmSection:
        """The ``confirm`` section with its defaults (``confirm_config``)."""
        return self._parsed("confirm", lambda d: ConfirmSection(**self.confirm_config()))

    def _load_plugins(self, where: str) -> None:
        """Before anything is checked: the recipe's names (data set, tasks, units, weightings) may
        be a plugin's. Stored absolute, so the study's copy of the recipe finds them anywhere."""
        if isinstance(self.plugins, str):
            self.plugins = [self.plugins]
        if not isinstance(self.plugins, list) or not all(isinstance(p, str) for p in self.plugins):
            raise RecipeError(f"{where} plugins must be a list of module names or .py files, got {self.plugins!r}")
        try:
            self.plugins = load_plugins(self.plugins, Path(self.path).parent if self.path else None)
        except PluginError as e:
            raise PluginError(f"{where} plugins: {e}") from e

    def _check_types(self, where: str) -> None:
        """Every section against its dataclass: a wrong type or an unknown field names itself."""

        def check(values: Any, cls: type, name: str) -> None:
            try:
                check_fields(values, cls, name, RecipeError)
            except RecipeError as e:
                raise RecipeError(f"{where} {e}") from None

        check({f: getattr(self, f) for f in self.stored_fields()}, type(self), "recipe")
        check({k: v for k, v in self.data.items() if k in DataSection.__dataclass_fields__}, DataSection, "data")
        check(self.train, TrainConfig, "train")
        check(self.study, StudySection, "study")
        check(self.compare, CompareSection, "compare")
        check(self.paper, PaperSection, "paper")
        check(self.search, SearchSpace, "search")

    def _check_arguments(self, where: str) -> None:
        """The nested arguments against the constructors they go to (``validation.check_call``), then
        built once so that each constructor's own range checks run: the data set's, each task's,
        the search space's. Nothing is read from disk and no network is built."""
        from fusionsearch.data import DATASETS

        try:
            data = DATASETS.get(str(self.data["name"]))
            args = self.data_args()
            check_call(
                data, args, "data", RecipeError, given=("split", "length"), what=f"the {self.data['name']} data set"
            )
            # the outputs each task gets, where the data set's class can say without its files
            try:
                sizes = data.tasks_for(**args) if hasattr(data, "tasks_for") else getattr(data, "tasks", {})
            except FusionSearchError:  # only its files say (NYUv2 without a layout)
                sizes = {}
            types = self.task_types()
            for t in self.tasks:
                self._check_task(t, types, sizes)
            self.space  # noqa: B018  # parsed now, inside this check: its errors name the recipe
            for t, metrics in dict(self.compare.get("columns") or {}).items():
                known = list(task_class(t, types).metrics) if t in self.tasks else None
                if known is None:
                    raise RecipeError(
                        f"compare.columns names {t!r}, not a task of this recipe ({', '.join(self.tasks)})"
                    )
                bad = [m for m in metrics if m not in known]
                if bad:
                    raise RecipeError(f"compare.columns.{t} names {bad[0]!r}; {t} has {', '.join(known)}")
        except FusionSearchError as e:
            raise RecipeError(f"{where} {e}") from None

    def _check_task(self, t: str, types: Mapping[str, str], sizes: Mapping[str, int]) -> None:
        """Task ``t``'s arguments against its class's constructor, then the constructor itself
        (its own range checks) where the data set's class says the task's size without files."""
        cls = task_class(t, types)
        args = task_arguments(self.task_args.get(t, {}))
        check_call(cls, args, f"task_args.{t}", RecipeError, given=("out_channels",), what=f"task {t!r}")
        if t in sizes:
            args["out_channels"] = int(sizes[t])
        elif getattr(inspect.signature(cls).parameters.get("out_channels"), "default", None) is inspect.Parameter.empty:
            return  # its size comes from the data: the constructor runs when it is known
        try:
            cls(**args)
        except (TypeError, ValueError) as e:
            raise RecipeError(f"task_args.{t}: {e}") from None

    def data_args(self) -> dict[str, Any]:
        """The ``data`` fields that go to the data set's constructor (and its ``tasks_for``)."""
        return {k: v for k, v in self.data.items() if k not in ("name", "labelled", "train_length", "val_length")}

    def task_types(self) -> dict[str, str]:
        """Each task's registered type where its name is not one: the data set's declaration
        (``MultiTaskDataset.task_types_for``: a folder's ``tasks.yaml``), then the recipe's own
        ``task_args: {NAME: {task: TYPE}}``, which wins."""
        from fusionsearch.data import DATASETS

        data = DATASETS.get(str(self.data["name"]))
        declared = data.task_types_for(**self.data_args()) if hasattr(data, "task_types_for") else {}
        own = {t: a["task"] for t, a in self.task_args.items() if isinstance(a, Mapping) and "task" in a}
        return {t: str(v) for t, v in {**declared, **own}.items() if t in self.tasks and v != t}

    def confirm_config(self) -> dict[str, Any]:
        """``confirm: {top: N, seeds: S, per: PARAM}``: after the search, the N best searched plans
        (the N best for each value of the search parameter ``per``, e.g. ``weighting``) and every
        baseline are trained again with S fresh seeds (defaults 2 and 3; ``seeds: 0`` skips it)."""
        unknown = set(self.confirm) - set(CONFIRM_DEFAULTS)
        if unknown:
            raise RecipeError(
                f"recipe {self.name!r}: unknown confirm field(s) {sorted(unknown)}; known: top, seeds, per"
            )
        out = {**CONFIRM_DEFAULTS, **self.confirm}
        for k in ("top", "seeds"):
            v = out[k]
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise RecipeError(f"recipe {self.name!r}: confirm {k} must be a whole number >= 0, got {v!r}")
        if out["per"] is not None and not isinstance(out["per"], str):
            raise RecipeError(f"recipe {self.name!r}: confirm per must be a search parameter name, got {out['per']!r}")
        return out

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the images: ``data.size`` is a side or [height, width] (default 128)."""
        return image_size(self.data)

    def train_config(self, **overrides: Any) -> TrainConfig:
        """A new ``TrainConfig`` of ``train`` with ``overrides`` (None values are ignored), to change."""
        args = {**self.train, **{k: v for k, v in overrides.items() if v is not None}}
        return TrainConfig(**args)

    def with_overrides(self, **changes: Any) -> Recipe:
        """A copy with top-level fields replaced (None values are ignored)."""
        r = copy.deepcopy(self)
        for k, v in changes.items():
            if v is not None:
                setattr(r, k, v)
        r.__post_init__()
        return r

    def to_dict(self) -> dict[str, Any]:
        """The sections as written: what a study stores and compares when it is resumed."""
        return {name: copy.deepcopy(getattr(self, name)) for name in self.stored_fields()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str | None = None) -> Recipe:
        """A recipe from plain data (a parsed YAML file: ``path`` names it in errors)."""
        if not isinstance(d, Mapping):
            where = f"recipe {path}" if path else "a recipe"
            raise RecipeError(f"{where} must be a mapping of fields (name: value), got a {type(d).__name__}")
        names = set(cls.stored_fields())
        unknown = set(d) - names
        if unknown:
            where = f" in {path}" if path else ""
            hint = did_you_mean(sorted(unknown)[0], sorted(names))
            raise RecipeError(
                f"unknown recipe field(s) {sorted(unknown)}{where}{hint}; known: {', '.join(sorted(names))}"
            )
        return cls(**dict(d), path=path)


def recipe_dirs() -> list[Path]:
    """Where recipe names are looked up: ``$FUSIONSEARCH_RECIPES``, ./recipes, then the recipes
    shipped inside the package (``importlib.resources``: a wheel install has them too)."""
    from importlib.resources import files

    dirs = [Path(p) for p in os.environ.get("FUSIONSEARCH_RECIPES", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "recipes", Path(str(files("fusionsearch").joinpath("recipes")))]
    return list(dict.fromkeys(d for d in dirs))


def list_recipes() -> dict[str, Path]:
    """The recipes found, name -> file, from ``recipe_dirs()``: a name's first directory wins."""
    out: dict[str, Path] = {}
    for d in recipe_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.yaml")):
                out.setdefault(p.stem, p)
    return out


def load_recipe(name_or_path: str | os.PathLike[str] = DEFAULT_RECIPE) -> Recipe:
    """A recipe by file path or by name (``quick`` -> ``recipes/quick.yaml``)."""
    p = Path(name_or_path)
    if not p.is_file():
        found = list_recipes().get(str(name_or_path))
        if found is None and not p.exists():
            names = ", ".join(list_recipes()) or "none found"
            raise RecipeError(f"no recipe {str(name_or_path)!r}: not a file, nor a known recipe ({names})")
        p = found or p  # a FIFO or a device by that name: refused by read_input_text, never read
    try:
        d = load_yaml(read_input_text(p, f"recipe {str(p)!r}", MAX_RECIPE_BYTES, RecipeError), str(p))
    except yaml.YAMLError as e:
        raise RecipeError(f"{p} is not valid YAML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe {p} cannot be read: {e}") from None
    if not isinstance(d, Mapping):  # an empty file too: it would train the defaults, not what the file says
        got = "an empty file" if d is None else f"a {type(d).__name__}"
        raise RecipeError(f"recipe {p} must be a mapping of fields (name: value), got {got}")
    d = dict(d)
    d.setdefault("name", p.stem)
    return Recipe.from_dict(d, str(p))


# A recipe is a page of settings. These bounds stop a hostile file before it costs memory: a YAML
# alias bomb ("billion laughs": 9 levels of 10 aliases each stand for 10^9 strings) is refused by
# its expanded size, and nesting thousands of levels deep by its depth, before anything is built.
MAX_RECIPE_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a bound on the nesting depth while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise RecipeError(f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A key written twice is an error: YAML would keep the last one silently, so a setting
        added at the end of a file would quietly override the one the reader sees first."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                line = key_node.start_mark.line + 1
                raise RecipeError(f"line {line}: the key {key!r} is written twice in one mapping")
            seen.add(key) if isinstance(key, (str, int, float, bool)) else None
        return super().construct_mapping(node, deep=deep)


def _expanded(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many nodes ``node`` stands for with every alias written out (shared nodes count each
    time). A node that contains itself (``&a [*a]``) has no written-out form: no setting needs
    one, and the study's stored copy (JSON) cannot hold it."""
    key = id(node)
    if memo.get(key) == -1:
        raise RecipeError("holds a recursive alias (a value that contains itself)")
    if key not in memo:
        memo[key] = -1  # on the current path
        if isinstance(node, yaml.SequenceNode):
            memo[key] = 1 + sum(_expanded(v, memo) for v in node.value)
        elif isinstance(node, yaml.MappingNode):
            memo[key] = 1 + sum(_expanded(k, memo) + _expanded(v, memo) for k, v in node.value)
        else:
            memo[key] = 1
    return memo[key]


def load_yaml(text: str, source: str = "recipe") -> Any:
    """YAML with bounds on depth (``MAX_DEPTH``) and expanded size (``MAX_NODES``, aliases
    counted each time they are used), so a hostile recipe fails fast instead of eating memory."""
    loader = _BoundedLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecipeError as e:
            raise RecipeError(f"{source}: {e}") from None
        if node is None:
            return None
        try:
            size = _expanded(node, {})
            if size <= MAX_NODES:
                return loader.construct_document(node)
        except RecipeError as e:
            raise RecipeError(f"{source}: {e}") from None
        raise RecipeError(
            f"{source} expands to {size:,} values with its aliases written out, over the limit of {MAX_NODES:,}"
            " (a YAML alias bomb?)"
        )
    finally:
        loader.dispose()


def parse_data(spec: str | None, base: Mapping[str, Any]) -> dict[str, Any]:
    """``--data NAME[:ROOT]``: the recipe's own data set moves to ROOT, keeping its settings (CelebA's
    groups, NYUv2's layout); another replaces it, keeping size, lengths and labelled shares."""
    name, sep, root = (spec or "").partition(":")
    if not spec or name == base.get("name"):
        return {**base, **({"root": root} if sep else {})}
    keep = {k: v for k, v in base.items() if k in ("size", "train_length", "val_length")}
    shares = base.get("labelled") or {}
    if shares and all(isinstance(v, (int, float)) for v in shares.values()):
        keep["labelled"] = dict(shares)  # shares mean the same on any data set; id lists do not
    return {**keep, "name": name, **({"root": root} if sep else {})}
