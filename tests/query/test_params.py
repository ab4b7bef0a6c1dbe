"""The one rule for query-string filters (query/params.py): empty is absent, unknown is ignored,
a bad value is a BadRequest naming the parameter and what it must be."""

from __future__ import annotations

import re

import pytest
from multidict import MultiDict, MultiDictProxy

from mlscope.query.errors import BadRequest
from mlscope.query.params import (
    MAX_NUMBER, int_between, matching, natural, one_of, parse_params, single, text, zero_or_one,
)

FIELDS = {"name": text, "count": natural, "limit": int_between(1, 10), "state": one_of(("on", "off")),
          "id": matching(re.compile(r"[0-9a-f]{4}"), "4 hex digits")}


def test_present_fields_are_parsed_and_the_rest_left_out() -> None:
    params = {"name": "a b", "count": "0", "limit": "10", "state": "off", "id": "beef", "other": "x", "": "y"}
    assert parse_params(params, FIELDS) == {"name": "a b", "count": 0, "limit": 10, "state": "off", "id": "beef"}
    assert parse_params({"name": "", "count": "", "unknown": "1"}, FIELDS) == {}


@pytest.mark.parametrize(("params", "message"), [
    ({"count": "1.5"}, "count must be an integer, not '1.5'"),
    ({"count": "-1"}, "count must not be negative"),
    ({"limit": "0"}, "limit must be between 1 and 10, not '0'"),
    ({"limit": "lots"}, "limit must be an integer, not 'lots'"),
    ({"state": "paused"}, "state must be one of on, off, not 'paused'"),
    ({"id": "BEEF"}, "id must be 4 hex digits"),
    ({"state": "x" * 500}, "state must be one of on, off, not '" + "x" * 64 + "'"),
])
def test_a_bad_value_names_the_parameter(params: dict[str, str], message: str) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_params(params, FIELDS)
    assert str(raised.value) == message


def test_a_yes_no_filter_is_0_or_1_and_numbers_fit_the_store() -> None:
    assert parse_params({"on": "0"}, {"on": zero_or_one}) == {"on": 0}
    assert parse_params({"on": "1"}, {"on": zero_or_one}) == {"on": 1}
    for bad in ("2", "-1", "01", "true", " 1"):
        with pytest.raises(BadRequest, match=f"on must be 0 or 1, not {re.escape(repr(bad))}"):
            parse_params({"on": bad}, {"on": zero_or_one})
    assert parse_params({"count": str(MAX_NUMBER)}, FIELDS) == {"count": 2**64 - 1}
    with pytest.raises(BadRequest, match=f"count must be at most {MAX_NUMBER}"):
        parse_params({"count": str(MAX_NUMBER + 1)}, FIELDS)


def test_a_parameter_given_twice_is_refused_by_name_unless_repeatable() -> None:
    twice = MultiDictProxy(MultiDict([("name", "a"), ("name", "b"), ("attr", "k=1"), ("attr", "k=2")]))
    with pytest.raises(BadRequest, match="parameter 'name' is given 2 times; give it once"):
        parse_params(twice, FIELDS, repeatable=("attr",))
    with pytest.raises(BadRequest, match="parameter 'other' is given 2 times"):  # unknown ones too
        parse_params(MultiDictProxy(MultiDict([("other", "x"), ("other", "y")])), FIELDS)
    attrs = MultiDictProxy(MultiDict([("name", "a"), ("attr", "k=1"), ("attr", "k=2")]))
    assert parse_params(attrs, FIELDS, repeatable=("attr",)) == {"name": "a"}
    with pytest.raises(BadRequest, match="parameter 'format' is given 2 times"):
        single(MultiDictProxy(MultiDict([("format", "a"), ("format", "a")])), "format")
    assert single(attrs, "name") == "a" and single(attrs, "absent") == "" and single({"x": "1"}, "x") == "1"
