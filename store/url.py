"""Store URLs (CONTRACT.md): `embedded:///absolute/dir` and `clickhouse://user:pw@host:port/db`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from mlscope.conventions import ENV_STORE, STORE_DIR, data_dir

DEFAULT_SERVER_PORT = 9000
DEFAULT_DATABASE = "mlscope"


class BadStoreUrl(ValueError):
    pass


@dataclass(frozen=True)
class EmbeddedUrl:
    directory: str


@dataclass(frozen=True)
class ServerUrl:
    host: str
    port: int
    database: str
    user: str
    password: str


def default_store_url(env: Mapping[str, str] = os.environ) -> str:
    """MLSCOPE_STORE, else the embedded store in the data directory's STORE_DIR."""
    return env.get(ENV_STORE) or f"embedded://{os.path.join(data_dir(env), STORE_DIR)}"


def parse_store_url(url: str) -> EmbeddedUrl | ServerUrl:
    parts = urlsplit(url)
    if parts.scheme == "embedded":
        if parts.netloc or not parts.path.startswith("/"):
            raise BadStoreUrl(f"bad store URL {url!r}: expected embedded:///absolute/dir")
        return EmbeddedUrl(directory=unquote(parts.path))
    if parts.scheme == "clickhouse":
        if not parts.hostname:
            raise BadStoreUrl(f"bad store URL {url!r}: expected clickhouse://[user[:password]@]host[:port]/database")
        try:
            port = parts.port or DEFAULT_SERVER_PORT
        except ValueError as exc:
            raise BadStoreUrl(f"bad store URL {url!r}: {exc}") from exc
        database = parts.path.strip("/") or DEFAULT_DATABASE
        if not database.replace("_", "").isalnum():
            raise BadStoreUrl(f"bad store URL {url!r}: database name must be letters, digits and _")
        return ServerUrl(
            host=parts.hostname,
            port=port,
            database=database,
            user=unquote(parts.username or "default"),
            password=unquote(parts.password or ""),
        )
    raise BadStoreUrl(f"bad store URL {url!r}: the scheme must be embedded:// or clickhouse://")
