"""The embedded backend: the ClickHouse engine in-process (chdb), data in a directory on disk.

One process owns a data directory at a time (the engine locks it); `mlscope serve` is that
process, and other tools reach the data through its HTTP API.

Sessions (measured on chdb 4.4 / engine 26.9): several chdb sessions on one directory coexist in
one process, each with its own database context, settings and output buffer, and a query in one
does not hold back the others (inserts kept their speed beside a 4 s query in another session).
A query aborted inside the engine (timeout, memory, throwIf) during `Session.query` leaves its
partial output in its session, prepended to that session's next answer, and a streamed query
(`send_query`) stopped by a timeout leaves its header lines. So the store's own statements run on
one locked session that is drained after a failure, and each user query streams on a session of
its own, closed after it.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator

import pyarrow as pa

from .base import ARROW_ROWS, ARROW_SCHEMAS, CappedResult, OutputCap, Settings, Store, check_columns, setting_literal
from .errors import StoreError, StoreUnavailable
from .model import Column, Columns, QueryResult

_ERROR_CODE = re.compile(r"Code: (\d+)\.")
# chdb's prefix on errors raised while a streamed query is read; the engine's message follows.
_STREAM_ERROR_PREFIX = "Streaming query failed: "
# Rows of a streamed answer: a line of names, a line of types, then one JSON array per row.
_STREAM_FORMAT = "JSONCompactEachRowWithNamesAndTypes"
# 64-bit integers as JSON numbers, not the quoted strings ClickHouse writes by default.
_SESSION_SETTINGS = ("SET output_format_json_quote_64bit_integers = 0",)
# A user's read shares this process's cores with ingest: its threads run at the lowest OS
# priority (nice 19; the engine resets them after the query), so a costly query slows itself
# rather than the inserts. clickhouse-server 18.16 has no such setting; its reads run apart.
_USER_READ_SETTINGS = {"os_thread_priority": 19}


def _store_error(exc: Exception) -> StoreError:
    message = str(exc).strip().removeprefix(_STREAM_ERROR_PREFIX)
    match = _ERROR_CODE.search(message)
    return StoreError(message, code=int(match.group(1)) if match else None)


def _stream_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The lines of a streamed answer, whatever its chunk boundaries (JSON strings escape
    their newlines, so a newline always ends a row)."""
    pending = b""
    for chunk in chunks:
        *lines, pending = (pending + chunk).split(b"\n")
        yield from lines
    if pending:
        yield pending


def _cancel(stream) -> None:
    """Stops a streamed query (the engine stops producing once the cap is reached); a no-op
    once it was read out or failed."""
    try:
        stream.cancel()
    except Exception:  # the query already ended; its error, if any, was raised while reading
        pass


def _settings_clause(settings: Settings | None) -> str:
    if not settings:
        return ""
    return " SETTINGS " + ", ".join(f"{name} = {setting_literal(value)}" for name, value in settings.items())


class EmbeddedStore(Store):
    def __init__(self, directory: str, database: str = "mlscope") -> None:
        self.url = f"embedded://{directory}"
        self.database = database
        os.makedirs(directory, exist_ok=True)
        self._directory = directory
        self._lock = threading.Lock()
        self._session = self._open_session()
        self._run(f"CREATE DATABASE IF NOT EXISTS {database}")
        self._configure(self._session)

    def _open_session(self):
        from chdb import session  # imported here: loading the engine is slow, and only this backend needs it

        try:
            return session.Session(self._directory)
        except Exception as exc:  # chdb raises RuntimeError for a locked or unreadable directory
            raise StoreUnavailable(
                f"cannot open embedded store {self._directory}: {exc} "
                "(one process owns an embedded store at a time: is mlscope serve running on it?)"
            ) from exc

    def _configure(self, engine_session) -> None:
        for statement in (f"USE {self.database}", *_SESSION_SETTINGS):
            engine_session.query(statement)

    def _run(self, sql: str, fmt: str = "CSV"):
        with self._lock:
            try:
                return self._session.query(sql, fmt)
            except Exception as exc:
                self._discard_partial_output()
                raise _store_error(exc) from exc

    def _discard_partial_output(self) -> None:
        """An aborted query's partial output comes back before the next answer of the session:
        a throwaway statement takes it, so the next caller reads only its own answer."""
        try:
            self._session.query("SELECT 1", "CSV")
        except Exception:  # the engine is failing anyway; the caller gets the first error
            pass

    def execute(self, sql: str, settings: Settings | None = None) -> QueryResult:
        sql = f"{sql}{_settings_clause(settings)}"
        text = self._run(sql, "JSONCompact").bytes()
        if not text.strip():
            return QueryResult(columns=(), rows=[])
        payload = json.loads(text)
        columns = tuple(Column(meta["name"], meta["type"]) for meta in payload["meta"])
        return QueryResult(columns=columns, rows=[tuple(row) for row in payload["data"]])

    def execute_columns(self, sql: str, settings: Settings | None = None) -> Columns:
        # Arrow out of the engine: no text to parse, and columns stay columns.
        table = self.execute_arrow(f"{sql}{_settings_clause(settings)}")
        return {name: table.column(name).to_pylist() for name in table.column_names}

    def execute_arrow(self, sql: str) -> pa.Table:
        return pa.ipc.open_file(self._run(sql, "Arrow").bytes()).read_all()

    def read_untrusted(self, sql: str, settings: Settings, cap: OutputCap) -> CappedResult:
        # A session of its own per query (about 3 ms to open): whatever a failed or stopped
        # query leaves in its session goes away with it.
        reader_session = self._open_session()
        try:
            self._configure(reader_session)
            # First: a readonly=1 among `settings` refuses every setting after it.
            return self._stream(reader_session, f"{sql}{_settings_clause({**_USER_READ_SETTINGS, **settings})}", cap)
        except StoreError:
            raise
        except Exception as exc:
            raise _store_error(exc) from exc
        finally:
            reader_session.close()

    @staticmethod
    def _stream(reader_session, sql: str, cap: OutputCap) -> CappedResult:
        try:
            stream = reader_session.send_query(sql, _STREAM_FORMAT)
        except Exception as exc:
            raise _store_error(exc) from exc
        rows: list[tuple] = []
        header: list[list[str]] = []
        size = 0
        truncated = False
        try:
            for line in _stream_lines(chunk.bytes() for chunk in stream):
                if len(header) < 2:
                    header.append(json.loads(line))
                    continue
                size += len(line)
                if len(rows) == cap.max_rows or size > cap.max_bytes:
                    truncated = True
                    break
                rows.append(tuple(json.loads(line)))
        except Exception as exc:
            raise _store_error(exc) from exc
        finally:
            _cancel(stream)
        names, types = header if len(header) == 2 else ([], [])
        columns = tuple(Column(name, ch_type) for name, ch_type in zip(names, types))
        return CappedResult(QueryResult(columns=columns, rows=rows), truncated)

    def _insert_block(self, table: str, names: list[str], columns: Columns) -> None:
        self._insert_arrow_block(table, names, pa.Table.from_pydict(columns, schema=ARROW_SCHEMAS[table]))

    reads_arrow_rows = True

    def execute_columns_over(self, sql: str, rows: pa.Table) -> Columns:
        arrow_rows = rows  # noqa: F841 (ARROW_ROWS: chdb's Python() finds it in this frame's locals)
        return self.execute_columns(sql)

    def insert_arrow(self, table: str, rows: pa.Table) -> None:
        names = check_columns(table, dict(zip(rows.column_names, rows.columns)))
        self._insert_arrow_block(table, names, rows.cast(ARROW_SCHEMAS[table]))

    def _insert_arrow_block(self, table: str, names: list[str], arrow_rows: pa.Table) -> None:
        # ARROW_ROWS: chdb's Python() table function finds `arrow_rows` in this frame's locals.
        self._run(f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM {ARROW_ROWS}")

    def close(self) -> None:
        with self._lock:
            self._session.close()

