"""One small registry type for fusion units, tasks and data sets (timm's ``register_model`` idea),
and the lazy re-exports of the ``search`` and ``report`` packages, whose registry maps each name to
the module it lives in (kept here: the one foundation module about looking names up).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "lazy_exports"]


class Registry(dict[str, T], Generic[T]):
    """Name -> class (or factory). ``@registry.register("name")`` adds one; ``registry.get(name)``
    raises ``error`` listing the registered names. ``name_attr`` is set on registered classes."""

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


def lazy_exports(module: str, homes: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The PEP 562 ``__getattr__`` and ``__dir__`` of package ``module``, whose names live in other
    modules (``homes``: name -> home module). A name is imported on first use and then kept in the
    package's namespace, so importing the package imports none of its modules (nor Optuna,
    SQLAlchemy and plotly with them); ``fusionsearch list`` needs only ``experiment.recipe``."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(homes[name]), name)
        setattr(sys.modules[module], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[module]), *homes})

    return __getattr__, __dir__
