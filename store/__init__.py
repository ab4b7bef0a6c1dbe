"""The store: mlscope's ClickHouse tables behind one small interface, embedded (chdb) or server.

    store = open_store("embedded:///tmp/data")   # or clickhouse://host:9000/mlscope
    store.insert("span_rows", columns)           # writers: physical tables
    store.execute("SELECT count() FROM spans")   # readers: the deduplicating views
"""

from __future__ import annotations

from .base import ARROW_ROWS, CappedResult, OutputCap, Store, arrow_rows, sql_string
from .errors import SchemaError, StoreError, StoreUnavailable
from .model import (
    METRIC_POINTS,
    SPAN_ROWS,
    TABLES,
    Column,
    Columns,
    Event,
    QueryResult,
    Span,
    Table,
    empty_columns,
    row_count,
    span_from_row,
)
from .url import BadStoreUrl, EmbeddedUrl, default_store_url, parse_store_url


def open_store(url: str, migrate: bool = True) -> Store:
    """Opens the store at `url` and brings its schema up to date."""
    target = parse_store_url(url)
    if isinstance(target, EmbeddedUrl):
        from .embedded import EmbeddedStore

        store: Store = EmbeddedStore(target.directory)
    else:
        from .server import ServerStore

        store = ServerStore(target.host, target.port, target.database, target.user, target.password)
    if migrate:
        store.migrate()
    return store


__all__ = [
    "ARROW_ROWS",
    "BadStoreUrl",
    "CappedResult",
    "Column",
    "Columns",
    "Event",
    "METRIC_POINTS",
    "OutputCap",
    "QueryResult",
    "SPAN_ROWS",
    "Span",
    "SchemaError",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TABLES",
    "Table",
    "arrow_rows",
    "default_store_url",
    "empty_columns",
    "open_store",
    "row_count",
    "span_from_row",
    "sql_string",
]
