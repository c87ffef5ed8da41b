"""One small registry type for fusion units, tasks and data sets (timm's ``register_model`` idea),
and the lazy re-exports of every package, whose registry maps each exported name to the module it
lives in (kept here: the one foundation module about looking names up).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "lazy_exports"]


class Registry(dict[str, T], Generic[T]):
    """A registry of fusion units, tasks, data sets, weightings, ...: name -> class (or factory).

    ``@registry.register("name")`` adds one; ``registry.get(name)`` raises ``error`` listing the
    registered names. ``name_attr`` is set on registered classes (``unit_name``, ``task_name``).
    """

    def __init__(self, kind: str, error: type[Exception], name_attr: str | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.error = error
        self.name_attr = name_attr

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self[name] = obj
            if self.name_attr is not None:
                setattr(obj, self.name_attr, name)
            return obj

        return add

    def get(self, name: str) -> T:  # type: ignore[override]
        try:
            return self[name]
        except KeyError:
            raise self.error(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self))}") from None


def lazy_exports(module: str) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """A package's exports, loaded on first use: its PEP 562 ``__getattr__``, ``__dir__`` and ``__all__``.

    They are read from the one list of what package ``module`` exports: the ``from M import name``
    lines of its ``__init__.py``'s ``if TYPE_CHECKING:`` block, which type checkers read as they
    are. Write, in the package:

        if TYPE_CHECKING:
            from fusionsearch.search.runner import StudyRun, run_study
        else:
            __getattr__, __dir__, __all__ = lazy_exports(__name__)

    A name's module is imported on its first use and the name then kept in the package, so
    importing a package imports none of its modules (nor Optuna, SQLAlchemy and plotly with them):
    ``fusionsearch list`` needs only ``experiment.recipe``. A public submodule is an attribute too
    (``fusionsearch.search.storage``), imported when first asked for, as it was when each package
    imported all of its modules. ``dir()`` lists the exported names (and the dunders)."""
    package = sys.modules[module]
    homes = _typing_imports(module, Path(package.__file__ or ""))

    def __getattr__(name: str) -> Any:
        if name in homes:
            home, original = homes[name]
            value = getattr(importlib.import_module(home), original)
            setattr(package, name, value)
            return value
        submodule = f"{module}.{name}"
        if name.isidentifier() and not name.startswith("_") and importlib.util.find_spec(submodule) is not None:
            return importlib.import_module(submodule)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*homes, *(n for n in vars(package) if n.startswith("__"))})

    return __getattr__, __dir__, list(homes)


def _typing_imports(module: str, init: Path) -> dict[str, tuple[str, str]]:
    """Exported name -> (its module, its name there), from the ``if TYPE_CHECKING:`` block of
    ``init``, in the order written; anything else in that block is refused, so that the block
    stays a plain list."""
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            out: dict[str, tuple[str, str]] = {}
            for stmt in node.body:
                if not isinstance(stmt, ast.ImportFrom) or any(a.name == "*" for a in stmt.names):
                    raise ImportError(f"{init}: the TYPE_CHECKING block holds only 'from M import name' lines")
                home = importlib.util.resolve_name("." * stmt.level + (stmt.module or ""), module)
                out.update({a.asname or a.name: (home, a.name) for a in stmt.names})
            return out
    raise ImportError(f"{init} has no 'if TYPE_CHECKING:' block of exports")
