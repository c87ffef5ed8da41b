"""Recipe values checked, by pydantic, against the types they go to, and each refusal said in one
line that names the field.

A recipe is YAML written by hand: ``steps: "four"``, ``tasks: 42`` or ``units: nddr`` (a string
where a list is meant) must stop before any study exists, with the field's dotted name in the
message, not deep inside training as a ``TypeError`` or, worse, as a string iterated letter by
letter. The schema is what the value goes to: a section's dataclass (``TrainConfig``,
``SearchSpace``: ``check_fields``) or a constructor's signature (a data set, a task, a fusion
unit, a weighting: ``check_call``), so a new field or argument is checked the moment it is
declared. From those annotations a pydantic type is built once per class or callable
(``_schema``); pydantic checks, and ``_explain`` turns its first error into our words.

Strictness is per value, not per model: a whole number is never ``true`` or ``4.0``, a string
never a number, a number (``float``) may be written as a whole one but must be finite, and a list
stays a list (never a string's letters), while a ``tuple`` field takes a YAML list (YAML has lists
only). A class pydantic cannot check from a recipe (a module, a callable) is left to the
constructor itself.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import AllowInfNan, ConfigDict, Strict, TypeAdapter, ValidationError, with_config
from typing_extensions import NotRequired, Required, TypedDict

__all__ = ["check_call", "check_fields", "describe", "did_you_mean", "finite"]


def did_you_mean(name: str, known: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'trials'?)`` for the closest known name, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def finite(value: Any) -> bool:
    """A real number that is not NaN or infinite (``bool`` is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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


_SCALARS: dict[Any, Any] = {
    bool: Annotated[bool, Strict()],
    int: Annotated[int, Strict()],  # not true, not 4.0
    float: Annotated[float, Strict(), AllowInfNan(False)],  # 4 is a number, true and .inf are not
    str: Annotated[str, Strict()],
}


def _checked(hint: Any) -> Any:
    """``hint`` as the type pydantic checks a recipe's value against (see the module's note)."""
    if hint in _SCALARS:
        return _SCALARS[hint]
    if hint is type(None) or typing.get_origin(hint) is Literal:
        return hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return Union[tuple(_checked(h) for h in args)]  # noqa: UP007  # built from a tuple at run time
    if origin is tuple and args and args[-1] is not Ellipsis:
        return tuple[tuple(_checked(h) for h in args)]  # type: ignore[misc]
    if origin in (list, tuple, Sequence) or hint in (list, tuple):  # a tuple field takes a YAML list
        return list[_checked(args[0]) if args else Any]  # type: ignore[misc]
    if origin in (dict, Mapping) or hint is dict:
        key, value = (_checked(args[0]), _checked(args[1])) if len(args) == 2 else (Any, Any)
        return dict[key, value]  # type: ignore[valid-type]
    return Any  # Any, object, or a class no recipe can write: its constructor checks it


@functools.cache
def _schema(fields: tuple[tuple[str, Any, bool], ...], open_ended: bool) -> TypeAdapter[Any]:
    """A pydantic type for a mapping of ``fields`` (name, annotation, required); other keys are
    refused unless ``open_ended`` (a constructor that takes ``**kwargs``). Built once per schema."""
    keys = {n: (Required if needed else NotRequired)[_checked(h)] for n, h, needed in fields}
    make: Any = TypedDict  # its functional form takes any name, even ``copy`` or ``schema``
    shape = with_config(ConfigDict(extra="allow" if open_ended else "forbid"))(make("Fields", keys))
    return TypeAdapter(shape)


def _explain(
    error: ValidationError,
    values: Mapping[str, Any],
    hints: Mapping[str, Any],
    where: str,
    unknown: Callable[[str], str],
    by: str = "",
) -> tuple[int, str]:
    """Pydantic's ``error`` about ``values`` as our one line, and where it stands: of its errors,
    the one about the first key as written (a missing one after them all), with the whole field's
    dotted name. The position lets a caller put it among refusals of its own."""
    order = {k: i for i, k in enumerate(values)}
    first = min(error.errors(), key=lambda e: order.get(str(e["loc"][0]), len(order)))
    key, nested = str(first["loc"][0]), len(first["loc"]) > 1  # nested: inside the field's value
    if first["type"] == "extra_forbidden" and not nested:
        return order[key], unknown(key)
    if first["type"] == "missing" and not nested:
        return len(order), f"{where}.{key} is required{by}"
    return order[key], f"{where}.{key} must be {describe(hints[key])}, got {values[key]!r}"


def check_fields(values: Any, cls: type, where: str, error: type[Exception]) -> None:
    """Raise ``error`` naming ``where.FIELD`` for the first unknown field or wrongly typed value
    of ``values`` against the dataclass ``cls``."""
    if not isinstance(values, Mapping):
        raise error(f"{where} must be a mapping of fields, got {type(values).__name__} {values!r}")
    hints = typing.get_type_hints(cls)
    known = [n for n in getattr(cls, "__dataclass_fields__", hints) if not n.startswith("_")]
    try:
        _schema(tuple((n, hints[n], False) for n in known), False).validate_python(values)
    except ValidationError as e:

        def unknown(key: str) -> str:
            return f"unknown field {where}.{key}{did_you_mean(key, known)}; known: {', '.join(known)}"

        raise error(_explain(e, values, hints, where, unknown)[1]) from None


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
    params = [p for p in inspect.signature(target).parameters.values() if p.name not in ("self", "cls")]
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # an annotation that cannot be resolved: check names only
        hints = {}
    named = {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    known = [n for n in named if n not in given]
    of, by = (f" of {what}", f" by {what}") if what else ("", "")

    def unknown(key: str) -> str:
        return f"unknown argument {where}.{key}{of}{did_you_mean(key, known)}; known: {', '.join(known) or 'none'}"

    # a given argument is refused even by a ``**kwargs`` constructor
    problems = [(i, unknown(k)) for i, k in enumerate(kwargs) if k in given]
    fields = tuple((n, hints.get(n, Any), named[n].default is inspect.Parameter.empty) for n in known)
    try:
        _schema(fields, any(p.kind == p.VAR_KEYWORD for p in params)).validate_python(kwargs)
    except ValidationError as e:
        problems.append(_explain(e, kwargs, hints, where, unknown, by))
    if problems:
        raise error(min(problems)[1])
