"""The data manager: model assets in a local cache, every file checked by its sha256.

Two ways in: `fetch` copies a path or downloads an http(s) URL whose checksum the manifest
gives; `generated` runs a producer (seeded weights, a training run, an ONNX export) once and
keeps its output with a `.sha256` beside it. Files appear only by rename from a temporary file
in the same folder, so a crash or a checksum mismatch never leaves a half-written file in place;
the temporary file is removed on every failure.

A fetch is bounded: at most the manifest's declared `size` (else `DownloadLimits.max_bytes`),
within `DownloadLimits.deadline_s` overall, and only from the sources the cache's
`ModelSources` accept (a remote job's: no path, no private or loopback address, checked again
on the address each connection reaches, redirects included).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from mlscope.conventions import data_dir

from .trust import LOCAL_SOURCES, ModelSources, SourceRefused, bounded

log = logging.getLogger(__name__)
_CHUNK = 1 << 20
_NAME_CHARS = 100


class AssetError(Exception):
    """An asset that cannot be had: unreachable, unreadable, refused, too big, too slow, or not
    the bytes its checksum names."""


@dataclass(frozen=True)
class DownloadLimits:
    max_bytes: int = 4 << 30  # a model file without a declared size; ONNX's protobuf tops out at 2 GiB
    deadline_s: float = 1800.0  # the whole fetch, however slowly the bytes arrive
    read_timeout_s: float = 60.0  # one read with nothing arriving


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path(data_dir()) / "cache"


@contextmanager
def _staged(target: Path) -> Iterator[Path]:
    """A temporary path beside `target`, renamed onto it when the block succeeds, removed if not."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


class AssetCache:
    def __init__(self, directory: Path | None = None, sources: ModelSources = LOCAL_SOURCES,
                 limits: DownloadLimits = DownloadLimits()) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.sources = sources
        self.limits = limits

    def fetch(self, location: str, sha256: str, size: int = 0) -> Path:
        """The cached copy of `location` (a path or an http(s) URL) whose sha256 is `sha256`;
        `size`, when given, is its size in bytes and the most that is read."""
        # The location's file name, cut to what any file system takes (the sha256 folder makes it unique).
        target = self.directory / "assets" / sha256 / (Path(location.split("?", 1)[0]).name[-_NAME_CHARS:] or "asset")
        if target.exists() and sha256_file(target) == sha256:
            return target
        cap = min(size, self.limits.max_bytes) if size else self.limits.max_bytes
        deadline = time.monotonic() + self.limits.deadline_s
        with _staged(target) as temporary:
            with open(temporary, "wb") as out, self._open_source(location) as source:
                self._copy(source, out, _shown(location), cap, deadline)
            if size and temporary.stat().st_size != size:
                raise AssetError(f"{_shown(location)}: {temporary.stat().st_size} bytes, not its declared {size}")
            actual = sha256_file(temporary)
            if actual != sha256:
                raise AssetError(f"{_shown(location)}: sha256 mismatch: expected {sha256}, got {actual}")
        return target

    def _copy(self, source: Any, out: BinaryIO, shown: str, cap: int, deadline: float) -> None:
        """Whatever has arrived (read1), so a slow stream meets the deadline and a long one the cap."""
        written = 0
        while chunk := source.read1(_CHUNK):
            written += len(chunk)
            if written > cap:
                raise AssetError(f"{shown}: larger than {cap} bytes (the declared size, else the download cap)")
            if time.monotonic() > deadline:
                raise AssetError(f"{shown}: not fetched within {self.limits.deadline_s:g} s ({written} bytes so far)")
            out.write(chunk)

    def _open_source(self, location: str) -> BinaryIO:
        shown = _shown(location)
        try:
            if location.startswith(("http://", "https://")):
                return self._open_url(location)
            self.sources.check_path()
            return open(location, "rb")
        except SourceRefused as exc:
            raise AssetError(f"{shown}: {exc}") from None
        except urllib.error.HTTPError as exc:
            raise AssetError(f"{shown}: HTTP {exc.code} {bounded(str(exc.reason), 100)}") from None
        except urllib.error.URLError as exc:
            raise AssetError(f"{shown}: cannot download: {bounded(str(exc.reason), 200)}") from None
        except OSError as exc:
            raise AssetError(f"{shown}: cannot read: {bounded(str(exc.strerror or exc), 200)}") from None

    def _open_url(self, url: str) -> BinaryIO:
        self.sources.check_host(urlsplit(url).hostname or "")
        opener = urllib.request.build_opener(_CheckedHTTPHandler(self.sources), _CheckedHTTPSHandler(self.sources))
        return opener.open(url, timeout=min(self.limits.read_timeout_s, self.limits.deadline_s))

    def generated(self, relative: str, produce: Callable[[Path], None]) -> tuple[Path, str]:
        """`relative` under the cache, made by `produce(path)` unless a copy matching its recorded
        sha256 is there already; returns the path and its sha256. A copy that no longer matches
        (corrupted, edited) is made again: producers are deterministic."""
        target = self.directory / relative
        recorded = target.with_name(target.name + ".sha256")
        if target.exists() and recorded.exists():
            expected = recorded.read_text().strip()
            if sha256_file(target) == expected:
                return target, expected
            log.warning("mlscope: %s does not match its recorded sha256; making it again", target)
        with _staged(target) as temporary:
            produce(temporary)
            digest = sha256_file(temporary)
        # The checksum is written last: an artifact without one is never trusted.
        with _staged(recorded) as temporary:
            temporary.write_text(digest + "\n")
        return target, digest


def _shown(location: str) -> str:
    return bounded(location, 200)


class _PeerChecked:
    """An HTTP(S) connection that checks the address it reached, after DNS, so neither a second
    answer (rebinding) nor a redirect reaches an address the sources refuse."""

    def __init__(self, *args: Any, sources: ModelSources, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sources = sources

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._sources.check_address(self.sock.getpeername()[0], self.host)  # type: ignore[attr-defined]


class _CheckedHTTPConnection(_PeerChecked, http.client.HTTPConnection):
    pass


class _CheckedHTTPSConnection(_PeerChecked, http.client.HTTPSConnection):
    pass


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, sources: ModelSources) -> None:
        super().__init__()
        self._sources = sources

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_CheckedHTTPConnection, req, sources=self._sources)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, sources: ModelSources) -> None:
        super().__init__()
        self._sources = sources

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_CheckedHTTPSConnection, req, context=self._context, sources=self._sources)
