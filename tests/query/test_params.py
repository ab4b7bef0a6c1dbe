"""The one rule for query-string filters (query/params.py): empty is absent, unknown is ignored,
a bad value is a BadRequest naming the parameter and what it must be."""

from __future__ import annotations

import re

import pytest

from mlscope.query.errors import BadRequest
from mlscope.query.params import int_between, matching, natural, one_of, parse_params, text

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
