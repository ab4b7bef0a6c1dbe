"""The embedded backend: the ClickHouse engine in-process (chdb), data in a directory on disk.

One process owns a data directory at a time (the engine locks it); `mlscope serve` is that
process, and other tools reach the data through its HTTP API.
"""

from __future__ import annotations

import json
import os
import re
import threading

import pyarrow as pa

from .base import Settings, Store, setting_literal
from .errors import StoreError, StoreUnavailable
from .model import TABLES, Column, Columns, QueryResult, Table

_ARROW_TYPES: dict[str, pa.DataType] = {
    "String": pa.string(),
    "UInt64": pa.uint64(),
    "Float64": pa.float64(),
    "Array(String)": pa.list_(pa.string()),
    "Array(UInt64)": pa.list_(pa.uint64()),
    "Array(Float64)": pa.list_(pa.float64()),
}
_ERROR_CODE = re.compile(r"Code: (\d+)\.")


def _arrow_schema(table: Table) -> pa.Schema:
    return pa.schema([(column.name, _ARROW_TYPES[column.type]) for column in table.columns])


_SCHEMAS = {name: _arrow_schema(table) for name, table in TABLES.items()}


def _store_error(exc: Exception) -> StoreError:
    match = _ERROR_CODE.search(str(exc))
    return StoreError(str(exc).strip(), code=int(match.group(1)) if match else None)


class EmbeddedStore(Store):
    def __init__(self, directory: str, database: str = "mlscope") -> None:
        from chdb import session  # imported here: loading the engine is slow, and only this backend needs it

        self.url = f"embedded://{directory}"
        self.database = database
        os.makedirs(directory, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._session = session.Session(directory)
        except Exception as exc:  # chdb raises RuntimeError for a locked or unreadable directory
            raise StoreUnavailable(
                f"cannot open embedded store {directory}: {exc} "
                "(one process owns an embedded store at a time: is mlscope serve running on it?)"
            ) from exc
        self._run(f"CREATE DATABASE IF NOT EXISTS {database}")
        self._run(f"USE {database}")
        # 64-bit integers as JSON numbers, not the quoted strings ClickHouse writes by default.
        self._run("SET output_format_json_quote_64bit_integers = 0")

    def _run(self, sql: str, fmt: str = "CSV"):
        with self._lock:
            try:
                return self._session.query(sql, fmt)
            except Exception as exc:
                raise _store_error(exc) from exc

    def execute(self, sql: str, settings: Settings | None = None) -> QueryResult:
        if settings:
            sql = f"{sql} SETTINGS " + ", ".join(f"{k} = {setting_literal(v)}" for k, v in settings.items())
        text = self._run(sql, "JSONCompact").bytes()
        if not text.strip():
            return QueryResult(columns=(), rows=[])
        payload = json.loads(text)
        columns = tuple(Column(meta["name"], meta["type"]) for meta in payload["meta"])
        return QueryResult(columns=columns, rows=[tuple(row) for row in payload["data"]])

    def execute_columns(self, sql: str) -> Columns:
        # Arrow out of the engine: no text to parse, and columns stay columns.
        answer = self._run(sql, "Arrow").bytes()
        table = pa.ipc.open_file(answer).read_all()
        return {name: table.column(name).to_pylist() for name in table.column_names}

    def _insert_block(self, table: str, names: list[str], columns: Columns) -> None:
        arrow_table = pa.Table.from_pydict(columns, schema=_SCHEMAS[table])  # noqa: F841 (read by chdb)
        # chdb's Python() table function finds `arrow_table` in this frame's locals.
        self._run(f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM Python(arrow_table)")

    def close(self) -> None:
        with self._lock:
            self._session.close()

