"""Type checks for recipe sections, from the dataclass that holds each one.

A recipe is YAML written by hand: ``steps: "four"``, ``tasks: 42`` or ``units: nddr`` (a string
where a list is meant) must stop before any study exists, with the field's dotted name in the
message, not deep inside training as a ``TypeError`` or, worse, as a string iterated letter by
letter. The annotations of the dataclasses (``TrainConfig``, ``SearchSpace``, ...) are the
schema, so a new field is checked the moment it is declared.
"""

from __future__ import annotations

import difflib
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

__all__ = ["check_call", "check_fields", "describe", "did_you_mean", "finite"]


def did_you_mean(name: str, known: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'trials'?)`` for the closest known name, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _ok(value: Any, hint: Any) -> bool:
    if hint is Any or hint is object:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    args = typing.get_args(hint)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):  # YAML has lists only: a tuple field takes one
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_ok(v, h) for v, h in zip(value, args))
        inner = args[0] if args else Any
        return all(_ok(v, inner) for v in value)
    if origin is dict or hint is dict or origin is Mapping:
        if not isinstance(value, Mapping):
            return False
        if len(args) == 2:
            return all(_ok(k, args[0]) and _ok(v, args[1]) for k, v in value.items())
        return True
    return True  # a class we do not know how to check: the constructor will


def describe(hint: Any) -> str:
    """A type annotation in the words a recipe's author uses."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        parts = [describe(h) for h in typing.get_args(hint) if h is not type(None)]
        out = " or ".join(dict.fromkeys(parts))
        return out + (" (or null)" if type(None) in typing.get_args(hint) else "")
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    names = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string"}
    if hint in names:
        return names[hint]
    args = typing.get_args(hint)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
    if origin in (list, tuple, Sequence):
        plural = {bool: "true/false values", int: "whole numbers", float: "numbers", str: "strings"}
        inner = args[0] if args else Any
        return f"a list of {plural.get(inner) or describe(inner) if inner is not Any else 'values'}"
    if origin is dict or hint is dict:
        return "a mapping" + (f" of {describe(args[1])}" if len(args) == 2 and args[1] is not Any else "")
    return getattr(hint, "__name__", str(hint))


def check_fields(values: Any, cls: type, where: str, error: type[Exception]) -> None:
    """Raise ``error`` naming ``where.FIELD`` for the first unknown field or wrongly typed value
    of ``values`` against the dataclass ``cls``."""
    if not isinstance(values, Mapping):
        raise error(f"{where} must be a mapping of fields, got {type(values).__name__} {values!r}")
    hints = typing.get_type_hints(cls)
    known = [n for n in getattr(cls, "__dataclass_fields__", hints) if not n.startswith("_")]
    for key, value in values.items():
        if key not in known:
            raise error(f"unknown field {where}.{key}{did_you_mean(str(key), known)}; known: {', '.join(known)}")
        if not _ok(value, hints[key]):
            raise error(f"{where}.{key} must be {describe(hints[key])}, got {value!r}")


def finite(value: Any) -> bool:
    """A real number that is not NaN or infinite (``bool`` is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_call(
    fn: Callable[..., Any],
    kwargs: Mapping[str, Any],
    where: str,
    error: type[Exception],
    given: Sequence[str] = (),
    what: str = "",
) -> None:
    """Raise ``error`` naming ``where.ARG`` when ``fn(**kwargs)`` would fail on its signature: an
    unknown keyword (unless ``fn`` takes ``**kwargs``), a required one missing, or a value that
    is not of the annotated type. ``given`` are the arguments the caller fills in itself (a task's
    ``out_channels``, a data set's ``split``): never reported missing, never accepted from the user.

    This is how a recipe's nested arguments (``task_args``, ``data``, a weighting's ``args``) are
    checked before any study exists: the constructor's own signature is the schema, so a new
    argument is checked the moment it is declared, and a typo is an error, not a silent default."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    sig = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # an annotation that cannot be resolved: check names only
        hints = {}
    params = [p for p in sig.parameters.values() if p.name not in ("self", "cls")]
    named = {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    open_ended = any(p.kind == p.VAR_KEYWORD for p in params)
    known = [n for n in named if n not in given]
    of, by = (f" of {what}", f" by {what}") if what else ("", "")
    for key, value in kwargs.items():
        if key in given or (key not in named and not open_ended):
            raise error(
                f"unknown argument {where}.{key}{of}{did_you_mean(str(key), known)};"
                f" known: {', '.join(known) or 'none'}"
            )
        hint = hints.get(key)
        if key in named and hint is not None and not _ok(value, hint):
            raise error(f"{where}.{key} must be {describe(hint)}, got {value!r}")
    for name, p in named.items():
        if p.default is p.empty and p.kind != p.VAR_POSITIONAL and name not in kwargs and name not in given:
            raise error(f"{where}.{name} is required{by}")
