"""The HTTP API of `mlscope serve` (the query service and the dispatch mounted beside it) from
the other side: JSON in and out over urllib, every failure as one ServiceError whose message is
the service's own `{"error": ...}` or why it was not reached. Used by the CLI (`sql --url`,
`report`, `evaluate --remote`) and by predictors (evaluation/remote.py).

It sits here, beside the conventions, rather than in query/ or dispatch/: those are the server
side, and the clients (evaluation, cli) must not depend on a server's package. Standard library
and the conventions only, so any component may use it.

Every request carries `Authorization: Bearer <token>` when a token is given or MLSCOPE_TOKEN is
set (a service run with `--auth` answers 401 without one, 403 when its scope does not suffice).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from mlscope.conventions import ENV_TOKEN, service_token


class ServiceError(Exception):
    """The service answered an error (`status` is its HTTP status) or could not be reached
    (`status` is None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServiceClient:
    """GET and POST of JSON against one base URL (http://host:port), as the holder of `token`
    (default: MLSCOPE_TOKEN; None sends no credentials)."""

    def __init__(self, base_url: str, timeout_s: float = 60, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        token = token or service_token()
        self._auth_headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return self._send(self._get_request(path, params))

    def get_bytes(self, path: str, params: Mapping[str, str] | None = None) -> bytes:
        """The body of a GET as it came (an export in a binary format)."""
        return self._read(self._get_request(path, params))

    def _get_request(self, path: str, params: Mapping[str, str] | None) -> urllib.request.Request:
        query = f"?{urlencode(params)}" if params else ""
        return urllib.request.Request(f"{self.base_url}{path}{query}", headers=self._auth_headers)

    def post(self, path: str, body: Any) -> Any:
        return self._send(urllib.request.Request(
            f"{self.base_url}{path}", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **self._auth_headers}))

    def _send(self, request: urllib.request.Request) -> Any:
        try:
            return json.loads(self._read(request))
        except ValueError as error:  # not JSON: something else answers on that port
            raise ServiceError(f"{self.base_url} did not answer JSON: {error}") from error

    def _read(self, request: urllib.request.Request) -> bytes:
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            try:
                reason = json.loads(error.read())["error"]
            except (ValueError, KeyError, TypeError):
                reason = f"HTTP {error.code}"
            if error.code in (401, 403):
                reason = f"{reason} (mlscope sends the token in {ENV_TOKEN})"
            raise ServiceError(reason, error.code) from error
        except (urllib.error.URLError, OSError) as error:
            raise ServiceError(f"cannot reach {self.base_url}: {getattr(error, 'reason', error)}") from error
