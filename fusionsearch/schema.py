"""Type checks for recipe sections, from the dataclass that holds each one.

A recipe is YAML written by hand: ``steps: "four"``, ``tasks: 42`` or ``units: nddr`` (a string
where a list is meant) must stop before any study exists, with the field's dotted name in the
message, not deep inside training as a ``TypeError`` or, worse, as a string iterated letter by
letter. The annotations of the dataclasses (``TrainConfig``, ``SearchSpace``, ...) are the
schema, so a new field is checked the moment it is declared.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Union

__all__ = ["check_fields", "describe", "did_you_mean"]


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
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    args = typing.get_args(hint)
    if origin in (list, tuple) or hint in (list, tuple):  # YAML has lists only: a tuple field takes one
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
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    args = typing.get_args(hint)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
    if origin in (list, tuple):
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
