"""The pydantic checks behind recipe sections and nested arguments: strict scalars, lax lists, one
line that names the first bad field as written, and one schema per class or callable."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from fusionsearch import validation
from fusionsearch.validation import check_call, check_fields


class Bad(Exception):
    pass


@dataclass
class Section:
    steps: int = 1
    rate: float = 0.1
    size: int | tuple[int, int] = 8
    names: list[str] = field(default_factory=list)
    on: bool = False
    _hidden: int = 0


@pytest.mark.parametrize(
    "values, message",
    [
        ({"steps": True}, "w.steps must be a whole number, got True"),
        ({"steps": 4.0}, "w.steps must be a whole number, got 4.0"),
        ({"rate": float("nan")}, "w.rate must be a finite number, got nan"),
        ({"rate": "0.1"}, "w.rate must be a finite number, got '0.1'"),
        ({"names": "seg"}, "w.names must be a list of strings, got 'seg'"),
        ({"size": [8]}, "w.size must be a whole number or a list of 2 (a whole number, a whole number), got [8]"),
        ({"on": 1}, "w.on must be true or false, got 1"),
        ({"stpes": 1}, "unknown field w.stpes (did you mean 'steps'?); known: steps, rate, size, names, on"),
        ({"_hidden": 1}, "unknown field w._hidden"),
    ],
)
def test_a_wrong_value_is_one_line_naming_its_field(values, message):
    with pytest.raises(Bad) as e:
        check_fields(values, Section, "w", Bad)
    assert str(e.value).startswith(message)


def test_right_values_pass_a_list_where_a_tuple_is_declared_and_a_whole_number_where_a_float_is():
    check_fields({"steps": 3, "rate": 1, "size": [8, 16], "names": ["a"], "on": True}, Section, "w", Bad)


def test_of_several_wrong_fields_the_first_as_written_is_named():
    with pytest.raises(Bad, match="w.names must"):
        check_fields({"on": True, "names": 3, "steps": "x"}, Section, "w", Bad)
    with pytest.raises(Bad, match="unknown field w.bogus"):
        check_fields({"bogus": 1, "steps": "x"}, Section, "w", Bad)


def unit(channels: int, init: tuple[float, float] = (0.9, 0.1), rates: list[int] | None = None, *, depth: int) -> None:
    """A constructor whose signature is the schema of its arguments."""


def open_ended(channels: int, **kwargs: object) -> None:
    """Takes any other keyword."""


def test_call_arguments_are_checked_against_the_signature():
    check_call(unit, {"init": [1, 0], "depth": 2}, "u", Bad, given=("channels",))
    cases = [
        ({"depth": 2, "bogus": 1}, "unknown argument u.bogus of x; known: init, rates, depth"),
        ({"depth": 2, "channels": 4}, "unknown argument u.channels of x"),  # the caller's own
        ({"depth": 2, "rates": ["a"]}, "u.rates must be a list of whole numbers (or null), got ['a']"),
        ({"init": [1, 0]}, "u.depth is required by x"),
        ({"rates": "a"}, "u.rates must be"),  # a wrong value comes before a missing one
    ]
    for kwargs, message in cases:
        with pytest.raises(Bad) as e:
            check_call(unit, kwargs, "u", Bad, given=("channels",), what="x")
        assert str(e.value).startswith(message), (kwargs, str(e.value))


def test_a_kwargs_constructor_takes_other_names_but_not_the_callers_own():
    check_call(open_ended, {"anything": 1}, "u", Bad, given=("channels",))
    with pytest.raises(Bad, match="unknown argument u.channels; known: none"):
        check_call(open_ended, {"anything": 1, "channels": 3}, "u", Bad, given=("channels",))


def test_a_schema_is_built_once_per_callable():
    validation._schema.cache_clear()
    for _ in range(3):
        check_call(unit, {"depth": 1}, "u", Bad, given=("channels",))
        check_fields({"steps": 1}, Section, "w", Bad)
    info = validation._schema.cache_info()
    assert (info.misses, info.hits) == (2, 4)
