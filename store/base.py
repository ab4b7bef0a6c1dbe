"""The one small interface both store backends implement, and what they share.

A backend only knows how to run one SQL statement and insert columns; the schema, its
migrations and literal quoting live here so that both backends behave the same.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

from .errors import SchemaError, StoreError
from .health import HealthProbe
from .model import SCHEMA_MIGRATIONS, TABLES, Columns, QueryResult, Table, blocks_by_partition

Settings = Mapping[str, int | float | str]

ARROW_TYPES: dict[str, pa.DataType] = {
    "String": pa.string(),
    "UInt64": pa.uint64(),
    "Float64": pa.float64(),
    "Array(String)": pa.list_(pa.string()),
    "Array(UInt64)": pa.list_(pa.uint64()),
    "Array(Float64)": pa.list_(pa.float64()),
}
"""The Arrow type of each ClickHouse type the tables use."""


def _arrow_schema(table: Table) -> pa.Schema:
    return pa.schema([(column.name, ARROW_TYPES[column.type]) for column in table.columns])


ARROW_SCHEMAS = {name: _arrow_schema(table) for name, table in TABLES.items()}
"""Each table of model.TABLES as an Arrow schema (Store.insert_arrow's rows)."""


def arrow_rows(table: str, columns: Columns) -> pa.Table:
    """`columns` (as Store.insert takes them) as Store.insert_arrow takes them."""
    return pa.Table.from_pydict(columns, schema=ARROW_SCHEMAS[table])


@dataclass(frozen=True)
class OutputCap:
    """How much of an untrusted query's output is read before the query is stopped: rows, and
    bytes as the rows' text form (whatever the query's shape: a UNION's branches, one huge row)."""

    max_rows: int
    max_bytes: int


@dataclass(frozen=True)
class CappedResult:
    result: QueryResult  # at most the cap's rows
    truncated: bool  # the query had more output than the cap, and was stopped


@dataclass(frozen=True)
class SchemaFile:
    version: int
    name: str
    statements: tuple[str, ...]


def schema_files() -> tuple[SchemaFile, ...]:
    """The schema's .sql files in version order (their names start with the version number)."""
    folder = importlib.resources.files("mlscope.store") / "schema"
    files = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        version = int(entry.name.split("_", 1)[0])
        files.append(SchemaFile(version, entry.name, split_statements(entry.read_text())))
    return tuple(files)


def split_statements(sql_text: str) -> tuple[str, ...]:
    """Splits a schema file on ';' at line ends, dropping comment-only chunks."""
    chunks = re.split(r";\s*(?:\n|$)", sql_text)
    statements = []
    for chunk in chunks:
        body = "\n".join(line for line in chunk.splitlines() if not line.strip().startswith("--"))
        if body.strip():
            statements.append(body.strip())
    return tuple(statements)


# What a query run by Store.execute_columns_over names its Arrow rows (chdb's Python() table
# function, which finds `arrow_rows` among the locals of the calling frames).
ARROW_ROWS = "Python(arrow_rows)"


def sql_string(value: str) -> str:
    """A ClickHouse string literal for `value` (backslash and quote escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def setting_literal(value: int | float | str) -> str:
    return sql_string(value) if isinstance(value, str) else str(value)


class Store(ABC):
    """A ClickHouse database holding mlscope's tables.

    Thread-safe: the collector inserts from a worker thread while the query API reads.
    """

    url: str
    database: str

    @abstractmethod
    def execute(self, sql: str, settings: Settings | None = None) -> QueryResult:
        """Runs one statement; raises StoreUnavailable when the store cannot be reached and
        StoreError (with ClickHouse's code) when the engine refuses it."""

    def execute_columns(self, sql: str, settings: Settings | None = None) -> Columns:
        """Runs one query of the store's own and returns its result by column (name -> values):
        the shape bulk readers want, without a tuple per row where the backend can avoid it."""
        result = self.execute(sql, settings)
        return {column.name: [row[index] for row in result.rows] for index, column in enumerate(result.columns)}

    @abstractmethod
    def execute_arrow(self, sql: str) -> pa.Table:
        """execute_columns' answer as an Arrow table, for readers that work on whole columns (the
        windowed read's fill): the embedded engine hands its own over, with no Python object per
        value; a column of a type ARROW_TYPES lacks is typed by Arrow from its values."""

    # Whether execute_columns_over can run (an engine in this process, which reads Arrow tables
    # of the process in place).
    reads_arrow_rows: bool = False

    def execute_columns_over(self, sql: str, rows: pa.Table) -> Columns:
        """execute_columns of a query that reads `rows`, an Arrow table of this process, as the
        table ARROW_ROWS names: the windowed read's fill answered before it is written. Only
        where reads_arrow_rows (a server cannot see the process's memory)."""
        raise NotImplementedError(f"{type(self).__name__} cannot read Arrow tables of this process")

    def insert_arrow(self, table: str, rows: pa.Table) -> None:
        """Inserts an Arrow table of `table`'s columns (arrow_rows' schema) in one block: the bulk
        writes of the windowed read's cache, whose tables are not partitioned by month."""
        self.insert(table, rows.to_pydict())

    @abstractmethod
    def read_untrusted(self, sql: str, settings: Settings, cap: OutputCap) -> CappedResult:
        """Runs a user's read apart from the insert path (its own engine session or connection,
        none of the store's locks), streaming its output and stopping the query once `cap` is
        reached; a query that fails or is stopped leaves nothing behind for the next one.
        Raises as execute does."""

    def insert(self, table: str, columns: Columns) -> None:
        """Inserts rows into one of the physical tables of model.TABLES. `columns` holds exactly
        the table's columns, in its order (check_columns). Rows spanning fewer than
        MONTHS_PER_INSERT months go in one block, stored whole or not at all; more go in one
        block per group of months (the engine refuses a block touching over 100 partitions), and
        a failure part-way leaves the blocks before it stored, which a retry of the same rows
        collapses with."""
        names = check_columns(table, columns)
        for block in blocks_by_partition(TABLES[table], columns):
            self._insert_block(table, names, block)

    @abstractmethod
    def _insert_block(self, table: str, names: list[str], columns: Columns) -> None:
        """Inserts `columns` (named `names`, checked) in one block."""

    @abstractmethod
    def close(self) -> None: ...

    def server_version(self) -> tuple[int, ...]:
        text = self.execute("SELECT version()").rows[0][0]
        return tuple(int(part) for part in str(text).split(".") if part.isdigit())

    def ping(self) -> None:
        self.execute("SELECT 1")

    @functools.cached_property
    def health(self) -> HealthProbe:
        """/readyz's view of this store, bounded in time (health.py)."""
        return HealthProbe(self.ping)

    def migrate(self) -> list[str]:
        """Applies the schema files not yet recorded; returns the names applied. Idempotent:
        every statement is IF NOT EXISTS (or an ADD COLUMN skipped when the column is there), so
        an interrupted migration is harmless when run again."""
        self.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA_MIGRATIONS.name} ({SCHEMA_MIGRATIONS.column_definitions()}) "
            "ENGINE = MergeTree ORDER BY version"
        )
        applied_versions = {row[0] for row in self.execute(f"SELECT version FROM {SCHEMA_MIGRATIONS.name}").rows}
        applied = []
        for schema_file in schema_files():
            if schema_file.version not in applied_versions:
                self.apply_schema_file(schema_file)
                applied.append(schema_file.name)
        return applied

    def apply_schema_file(self, schema_file: SchemaFile) -> None:
        """Runs one schema file's statements and records its version; safe to run again."""
        for index, statement in enumerate(schema_file.statements, start=1):
            if self._has_added_column(statement):
                continue
            try:
                self.execute(statement)
            except StoreError as exc:
                raise SchemaError(f"{schema_file.name}, statement {index}: {exc}", code=exc.code) from exc
        self.insert(
            SCHEMA_MIGRATIONS.name,
            {"version": [schema_file.version], "name": [schema_file.name], "applied_ns": [time.time_ns()]},
        )

    def _has_added_column(self, statement: str) -> bool:
        """Whether `statement` adds a column that the table already has."""
        added = added_column(statement)
        if added is None:
            return False
        table, column = added
        return bool(self.execute(
            "SELECT count() FROM system.columns WHERE database = currentDatabase() "
            f"AND table = {sql_string(table)} AND name = {sql_string(column)}").rows[0][0])


_ADD_COLUMN = re.compile(r"ALTER\s+TABLE\s+(\w+)\s+ADD\s+COLUMN\s+(\w+)\s", re.IGNORECASE)


def added_column(statement: str) -> tuple[str, str] | None:
    """(table, column) of an `ALTER TABLE t ADD COLUMN c ...` statement (one column each), else
    None. ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS, so migrate() checks first."""
    match = _ADD_COLUMN.match(statement)
    return (match.group(1), match.group(2)) if match else None


def check_columns(table: str, columns: Columns) -> list[str]:
    """The insert column list for `table`, after checking `columns` has exactly its columns and
    as many values in each (a column a writer forgot would otherwise shift or drop rows)."""
    expected = list(TABLES[table].column_names)
    if list(columns) != expected:
        raise StoreError(f"insert into {table}: columns {list(columns)} != {expected}")
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise StoreError(f"insert into {table}: columns of different lengths {lengths}")
    return expected

