"""The server backend: a ClickHouse server or cluster over the native protocol (clickhouse-driver)."""

from __future__ import annotations

import datetime
import decimal
import threading
import uuid
from typing import Any

import pyarrow as pa
from clickhouse_driver import Client, errors

from .base import ARROW_TYPES, CappedResult, OutputCap, Settings, Store
from .errors import StoreError, StoreUnavailable
from .model import Column, Columns, QueryResult

CONNECT_TIMEOUT_S = 3
SEND_RECEIVE_TIMEOUT_S = 60

# Failures that mean "the server is not there now" rather than "the server refused this".
_UNAVAILABLE = (errors.NetworkError, errors.SocketTimeoutError, EOFError, ConnectionError, OSError)


def _plain(value: Any) -> Any:
    """clickhouse-driver's Python types -> the plain JSON-able values both backends return."""
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal,)):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


class ServerStore(Store):
    def __init__(self, host: str, port: int, database: str, user: str = "default", password: str = "") -> None:
        self.url = f"clickhouse://{user}@{host}:{port}/{database}"
        self.database = database
        self._connect_args = dict(
            host=host,
            port=port,
            user=user,
            password=password,
            connect_timeout=CONNECT_TIMEOUT_S,
            send_receive_timeout=SEND_RECEIVE_TIMEOUT_S,
        )
        # One connection per thread: a native-protocol connection carries one query at a time.
        self._local = threading.local()
        self._clients: list[Client] = []
        self._clients_lock = threading.Lock()
        bootstrap = Client(database="default", **self._connect_args)
        try:
            self._call(bootstrap, lambda: bootstrap.execute(f"CREATE DATABASE IF NOT EXISTS {database}"))
        finally:
            bootstrap.disconnect()

    def _client(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = Client(database=self.database, **self._connect_args)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    @staticmethod
    def _call(client: Client, action):
        try:
            return action()
        except errors.ServerException as exc:
            # 18.x appends the server's stack trace to the message; the first line is the reason.
            raise StoreError(exc.message.split(". Stack trace:")[0].strip(), code=exc.code) from exc
        except _UNAVAILABLE as exc:
            client.disconnect()
            raise StoreUnavailable(f"clickhouse server unreachable: {exc}") from exc
        except errors.Error as exc:
            raise StoreError(str(exc), code=getattr(exc, "code", None)) from exc

    def execute(self, sql: str, settings: Settings | None = None) -> QueryResult:
        client = self._client()
        rows, column_types = self._call(
            client, lambda: client.execute(sql, with_column_types=True, settings=dict(settings or {}))
        )
        columns = tuple(Column(name, ch_type) for name, ch_type in column_types)
        return QueryResult(columns=columns, rows=[tuple(_plain(v) for v in row) for row in rows])

    def execute_arrow(self, sql: str) -> pa.Table:
        # By column from the driver, each straight into Arrow: no tuple per row, no value walked
        # (the window cache's tables hold strings, integers and arrays of them, already plain).
        client = self._client()
        columns, column_types = self._call(client, lambda: client.execute(sql, with_column_types=True, columnar=True))
        return pa.table({name: pa.array(values, type=ARROW_TYPES.get(ch_type))
                         for (name, ch_type), values in zip(column_types, columns or [[] for _ in column_types])})

    def read_untrusted(self, sql: str, settings: Settings, cap: OutputCap) -> CappedResult:
        """Streams the rows in blocks on this thread's connection (the server runs each
        connection's query apart; no lock of the store is taken) and counts each row's text
        form against the byte cap; stopping early drops the connection, which cancels the
        query on the server (the next call reconnects)."""
        client = self._client()
        rows: list[tuple[Any, ...]] = []
        size = 0
        truncated = False

        def read() -> tuple[Any, ...]:
            nonlocal size, truncated
            stream = client.execute_iter(sql, with_column_types=True, settings=dict(settings))
            column_types = next(stream, [])
            for row in stream:
                size += len(repr(row))
                if len(rows) == cap.max_rows or size > cap.max_bytes:
                    truncated = True
                    client.disconnect()
                    break
                rows.append(tuple(_plain(value) for value in row))
            return column_types

        column_types = self._call(client, read)
        columns = tuple(Column(name, ch_type) for name, ch_type in column_types)
        return CappedResult(QueryResult(columns=columns, rows=rows), truncated)

    def _insert_block(self, table: str, names: list[str], columns: Columns) -> None:
        client = self._client()
        self._call(
            client,
            lambda: client.execute(
                f"INSERT INTO {table} ({', '.join(names)}) VALUES", list(columns.values()), columnar=True
            ),
        )

    def close(self) -> None:
        with self._clients_lock:
            for client in self._clients:
                client.disconnect()
            self._clients.clear()


