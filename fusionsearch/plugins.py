"""Plugins: a user's data sets, tasks, fusion units and weightings, written outside the package
and loaded into every process that needs them.

A registry is filled by importing the module that defines a class (``@register_dataset("x")``
runs at import), so a name a recipe uses must be imported before the recipe is checked, in every
process that reads it: the command, each ``run --workers N`` worker, a ``fusionsearch worker`` on
another machine, and each DataLoader worker process. A plugin is a module name (``mypkg.plugin``)
or a ``.py`` file; installed packages can also declare one under the entry-point group
``fusionsearch.plugins``, which every command loads. A study stores the plugins it was made with,
so a worker loads them from the study before it reads the recipe (``require_plugins``).

A file is imported as the top-level module named by its stem, with its folder put first on
``sys.path``: pickling refers to a class by module and name, and a process started with
``spawn`` (a DataLoader worker) copies the parent's ``sys.path`` before it unpickles, so it finds
the file by the same name. That is also why a file may not share its stem with another module:
it would hide that module, or be hidden by it, in some process but not in another.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from fusionsearch.errors import PluginError

__all__ = [
    "ENTRY_POINT_GROUP",
    "load_plugins",
    "loaded_plugins",
    "load_entry_points",
    "require_plugins",
    "origin",
    "is_file_spec",
]

ENTRY_POINT_GROUP = "fusionsearch.plugins"

_loaded: dict[str, str] = {}  # canonical spec -> the module it names, in load order
_owner: dict[str, str] = {}  # module name -> the plugin spec whose import first imported it
_entry_points: list[str] | None = None  # the entry-point plugins, once loaded in this process


def is_file_spec(spec: str) -> bool:
    """A spec that names a file (``x.py``, ``dir/x``) rather than a module (``mypkg.x``): a
    module name never holds a path separator nor ends in ``.py``."""
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def load_plugins(specs: Iterable[str], base: str | os.PathLike[str] | None = None) -> list[str]:
    """Import each plugin once (the same spec twice is one import) and return their canonical
    specs: a file's absolute path (a relative one is taken from ``base``, else the working
    folder), a module's name as given. A file missing at its path whose name a plugin file already
    loaded from another path is that plugin (``require_plugins``). Every failure is one
    ``PluginError`` naming the plugin."""
    out = [_load_file(spec, base) if _names_file(spec, base) else _load_module(spec) for spec in specs]
    return list(dict.fromkeys(out))


def loaded_plugins() -> list[str]:
    """The canonical spec of every plugin this process loaded, in load order: what a study stores
    so that its workers load the same."""
    return list(_loaded)


def load_entry_points() -> list[str]:
    """Load the installed packages' plugins (entry-point group ``fusionsearch.plugins``, each
    ``name = "module"``), once per process; they are recorded as module specs. A broken one is a
    ``PluginError`` naming it and its distribution, so every command fails with one line instead
    of a traceback from the import."""
    global _entry_points
    if _entry_points is None:
        found = []
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            owner = getattr(ep, "dist", None)
            dist = f" of {owner.name}" if owner is not None else ""
            _import(ep.module, ep.module, ep.load, f"entry-point plugin {ep.name!r} ({ep.value}{dist})")
            found.append(ep.module)
        _entry_points = list(dict.fromkeys(found))
    return list(_entry_points)


def require_plugins(specs: Iterable[str], needed_by: str) -> list[str]:
    """Load the plugins a stored study (``needed_by``: "study 'S'") was made with, before its
    recipe is read: the recipe names what they register. A file that is not at its stored path
    stands for the plugin of the same name already loaded here from another path (a worker on
    another machine given ``--plugin`` with its own copy). Anything else that cannot be loaded is
    one ``PluginError`` that says what to do, raised before a worker takes a trial."""
    out = []
    for spec in specs:
        try:
            out += load_plugins([spec])
        except PluginError as e:
            hint = "copy it to this machine and pass --plugin PATH"
            if not is_file_spec(spec):
                hint = "install it here, or pass --plugin MODULE_OR_FILE.py"
            raise PluginError(
                f"{needed_by} needs the plugin {spec!r}, which cannot be loaded here ({e}): {hint}"
            ) from e
    return out


def origin(obj: Any) -> str:
    """Where a registered object comes from, for listings: ``fusionsearch`` for a built-in, the
    spec of the plugin whose import defined it, else its module's name."""
    module = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
    if not module:
        return "?"
    if module == "fusionsearch" or module.startswith("fusionsearch."):
        return "fusionsearch"
    return _owner.get(module, module)


def _names_file(spec: str, base: str | os.PathLike[str] | None) -> bool:
    """``is_file_spec``, or an existing file such as ``notes.txt``, refused as not ``.py``."""
    return is_file_spec(spec) or (Path(base or Path.cwd()) / spec).is_file()


def _load_module(name: str) -> str:
    if name in _loaded:
        return name
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise PluginError(f"plugin {name!r} is neither a module name (mypkg.plugin) nor a .py file")
    _import(name, name, lambda: importlib.import_module(name), f"plugin {name!r}")
    return name


def _load_file(spec: str, base: str | os.PathLike[str] | None) -> str:
    path = Path(spec).expanduser()
    path = (path if path.is_absolute() else Path(base or Path.cwd()) / path).resolve()
    key, stem = str(path), path.stem
    if key in _loaded:
        return key
    if path.suffix != ".py":
        raise PluginError(f"plugin file {key} must be a Python file ending in .py")
    if not path.is_file():
        if any(m == stem and is_file_spec(s) for s, m in _loaded.items()):
            return key  # stands for the plugin of this name loaded from another path (require_plugins)
        raise PluginError(f"plugin file {key} does not exist")
    if not stem.isidentifier():
        raise PluginError(f"plugin file {key}: {stem!r} is not a Python module name (letters, digits, _): rename it")
    _check_shadowing(path, stem)
    folder = str(path.parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)  # spawned processes copy sys.path: they find the module by name
    try:
        _import(key, stem, lambda: importlib.import_module(stem), f"plugin file {key}")
    except PluginError:
        if added:
            sys.path.remove(folder)
        raise
    return key


def _check_shadowing(path: Path, stem: str) -> None:
    """A plugin file may not share its name with a module imported or importable from elsewhere:
    one of the two would be hidden, and which one could differ between processes."""
    importlib.invalidate_caches()  # a file written since the last import must be seen
    existing = sys.modules.get(stem)
    if existing is not None:
        where = getattr(existing, "__file__", None)
        if where and Path(where).resolve() == path:
            return
        raise PluginError(f"plugin file {path} would shadow module {stem!r} ({where or 'built in'}): rename it")
    try:
        found = importlib.util.find_spec(stem)
    except (ImportError, ValueError):
        found = None
    if found is None:
        return
    origin_ = found.origin if found.origin not in (None, "namespace") else None
    if origin_ is not None and origin_ not in ("built-in", "frozen") and Path(origin_).resolve() == path:
        return
    where = origin_ or ", ".join(found.submodule_search_locations or [])
    raise PluginError(f"plugin file {path} would shadow module {stem!r} ({where}): rename it")


def _import(spec: str, module: str, load: Callable[[], Any], label: str) -> None:
    """Run ``load`` (an import) and record ``spec`` as the owner of every module it imported; an
    error of any kind inside the plugin becomes one line naming it."""
    before = set(sys.modules)
    try:
        load()
    except ModuleNotFoundError as e:
        if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
            raise PluginError(f"{label}: no module named {e.name!r} (not installed, nor on PYTHONPATH)") from e
        raise PluginError(f"{label} failed while importing: {_one_line(e)}") from e
    except (Exception, SystemExit) as e:
        raise PluginError(f"{label} failed while importing: {_one_line(e)}") from e
    for name in sorted(set(sys.modules) - before):
        _owner.setdefault(name, spec)
    _owner.setdefault(module, spec)
    _loaded[spec] = module


def _one_line(e: BaseException) -> str:
    text = " ".join(part.strip() for part in str(e).splitlines() if part.strip())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
