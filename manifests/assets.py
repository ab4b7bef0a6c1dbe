"""The data manager: model assets in a local cache, every file checked by its sha256.

Two ways in: `fetch` copies a path or downloads an http(s) URL whose checksum the manifest
gives; `generated` runs a producer (seeded weights, a training run, an ONNX export) once and
keeps its output with a `.sha256` beside it. Files appear only by rename from a temporary file
in the same folder, so a crash or a checksum mismatch never leaves a half-written file in place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from mlscope.conventions import data_dir

log = logging.getLogger(__name__)
_CHUNK = 1 << 20


class AssetError(Exception):
    """An asset that cannot be had: unreachable, unreadable, or not the bytes its checksum names."""


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
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def fetch(self, location: str, sha256: str) -> Path:
        """The cached copy of `location` (a path or an http(s) URL) whose sha256 is `sha256`."""
        target = self.directory / "assets" / sha256 / (Path(location.split("?", 1)[0]).name or "asset")
        if target.exists() and sha256_file(target) == sha256:
            return target
        with _staged(target) as temporary:
            with open(temporary, "wb") as out, _open_source(location) as source:
                shutil.copyfileobj(source, out, _CHUNK)
            actual = sha256_file(temporary)
            if actual != sha256:
                raise AssetError(f"{location}: sha256 mismatch: expected {sha256}, got {actual}")
        return target

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


def _open_source(location: str) -> BinaryIO:
    if location.startswith(("http://", "https://")):
        try:
            return urllib.request.urlopen(location, timeout=60)
        except urllib.error.HTTPError as exc:
            raise AssetError(f"{location}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise AssetError(f"{location}: cannot download: {getattr(exc, 'reason', exc)}") from exc
    try:
        return open(location, "rb")
    except OSError as exc:
        raise AssetError(f"{location}: cannot read: {exc.strerror or exc}") from exc
