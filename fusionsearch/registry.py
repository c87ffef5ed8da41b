"""One small registry type for fusion units, tasks and data sets (timm's ``register_model`` idea)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


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
