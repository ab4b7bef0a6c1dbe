"""The row model (store/model.py) against the schema's .sql files, which cannot import Python:
the columns a writer supplies, and the attribute names the views read. Pure: parses the files."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

import pytest

import mlscope.conventions as conventions
from mlscope.evaluation.results import EvaluationResult
from mlscope.store import StoreError
from mlscope.store.base import check_columns, schema_files, split_statements
from mlscope.store.model import SCHEMA_MIGRATIONS, TABLES, Column

_CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*)\)\s*ENGINE", re.DOTALL)
_ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (.+?)(?: AFTER (\w+))?$", re.DOTALL)
_VIEW_TARGET = re.compile(r"CREATE MATERIALIZED VIEW IF NOT EXISTS \w+ TO (\w+)")
_COMPUTED = re.compile(r"\s+(?:DEFAULT|MATERIALIZED|ALIAS)\s")


@dataclass(frozen=True)
class SchemaColumn:
    name: str
    type: str
    computed: bool  # DEFAULT, MATERIALIZED or ALIAS: the store fills it, writers do not


def _top_level_split(text: str) -> list[str]:
    """`text` split on the commas outside parentheses (types such as AggregateFunction(any, String))."""
    parts, depth, current = [], 0, []
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def _schema_column(definition: str) -> SchemaColumn:
    name, rest = definition.split(None, 1)
    type_text, *computed = _COMPUTED.split(" " + rest, maxsplit=1)
    return SchemaColumn(name, type_text.strip(), bool(computed))


def schema_tables(statements: list[str]) -> tuple[dict[str, list[SchemaColumn]], set[str]]:
    """(table -> its columns once every statement has run, the tables materialized views fill)."""
    tables: dict[str, list[SchemaColumn]] = {}
    view_targets: set[str] = set()
    for statement in statements:
        if created := _CREATE_TABLE.match(statement):
            tables[created.group(1)] = [_schema_column(part) for part in _top_level_split(created.group(2))]
        elif added := _ADD_COLUMN.match(statement):
            table, definition, after = added.groups()
            columns = tables[table]
            position = [column.name for column in columns].index(after) + 1 if after else len(columns)
            columns.insert(position, _schema_column(definition))
        elif target := _VIEW_TARGET.match(statement):
            view_targets.add(target.group(1))
    return tables, view_targets


def _all_statements() -> list[str]:
    return [statement for schema_file in schema_files() for statement in schema_file.statements]


def test_the_parser_reads_nested_types_defaults_and_added_columns() -> None:
    sql = """
    CREATE TABLE IF NOT EXISTS t (
        a String,
        b AggregateFunction(anyIf, String, UInt8),
        d Date DEFAULT toDate(toDateTime(intDiv(a, 1000)))
    ) ENGINE = MergeTree ORDER BY a;
    ALTER TABLE t ADD COLUMN c Array(UInt64) DEFAULT [] AFTER b;
    CREATE MATERIALIZED VIEW IF NOT EXISTS t_mv TO t AS SELECT 1;
    """
    tables, view_targets = schema_tables(list(split_statements(sql)))
    assert tables == {"t": [
        SchemaColumn("a", "String", False),
        SchemaColumn("b", "AggregateFunction(anyIf, String, UInt8)", False),
        SchemaColumn("c", "Array(UInt64)", True),
        SchemaColumn("d", "Date", True),
    ]}
    assert view_targets == {"t"}


def test_each_declared_table_has_the_schema_columns_writers_supply() -> None:
    tables, _ = schema_tables(_all_statements())
    for name, table in TABLES.items():
        if table is SCHEMA_MIGRATIONS:
            continue  # created by Store.migrate() from the declaration itself
        supplied = tuple(Column(column.name, column.type) for column in tables[name] if not column.computed)
        assert table.columns == supplied, name


def test_every_schema_table_is_declared_or_filled_by_a_materialized_view() -> None:
    tables, view_targets = schema_tables(_all_statements())
    declared = set(TABLES) - {SCHEMA_MIGRATIONS.name}
    assert declared.isdisjoint(view_targets)
    assert set(tables) == declared | view_targets
    assert view_targets == {"trace_index", "evaluation_rows"}


def test_an_insert_takes_exactly_the_declared_columns_each_as_long() -> None:
    columns = {"version": [1, 2], "name": ["a", "b"], "applied_ns": [5, 6]}
    assert check_columns("schema_migrations", columns) == ["version", "name", "applied_ns"]
    with pytest.raises(StoreError, match="columns"):
        check_columns("schema_migrations", {"name": ["a"], "version": [1], "applied_ns": [5]})
    with pytest.raises(StoreError, match="different lengths"):
        check_columns("schema_migrations", {**columns, "applied_ns": [5]})


# --- attribute names the views read ------------------------------------------------------------

_ATTRIBUTE_KEY = re.compile(r"\b(?:indexOf|has)\((?:attr|resource)_keys,\s*'([^']*)'\)")
_MLSCOPE_LITERAL = re.compile(r"'(mlscope\.[^']*)'")


def _convention_names() -> set[str]:
    return {value for name, value in vars(conventions).items() if name.isupper() and isinstance(value, str)}


def test_every_attribute_name_in_the_schema_is_a_convention() -> None:
    evaluation_attributes = {conventions.EVALUATION_PREFIX + field.name for field in fields(EvaluationResult)}
    known = _convention_names() | evaluation_attributes
    sql = "\n".join(_all_statements())
    written = set(_ATTRIBUTE_KEY.findall(sql)) | set(_MLSCOPE_LITERAL.findall(sql))
    assert {conventions.MODEL_NAME, conventions.EVALUATION_SPAN, conventions.EVALUATION_PREFIX + "throughput"} <= written
    assert written - known == set()
