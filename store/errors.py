"""Store errors: one family, carrying ClickHouse's error code where the engine gave one."""

from __future__ import annotations


class StoreError(Exception):
    """A query or insert the engine refused; `code` is ClickHouse's error code when known."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class StoreUnavailable(StoreError):
    """The store cannot be reached now (server down, network, timeout): retry later."""


class SchemaError(StoreError):
    """A schema file failed to apply; the message names the file and statement."""
