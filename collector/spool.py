"""The write-ahead spool: acknowledged OTLP requests the store could not take yet, on disk.

One file per failed flush and signal, holding the flush's requests as OTLP protobuf, each framed
by its length, so that a replay the store refuses can be split down to the one request it
refuses. A file appears whole or not at all (temporary file, fsync, rename, fsync of the
directory), so a crash at any point leaves either no file (the client got no 200) or a complete
one. Files written before the framing (`.pb`) hold their requests laid end to end and read back
as one request (concatenated protobuf messages parse as their merge).

One process owns a spool at a time: the constructor takes an exclusive lock on `.lock` inside
it and raises SpoolInUse when another collector holds it, since two owners would replay (and
count) each other's files.

Blocking file I/O, so the pipeline keeps it off the event loop: `write` and `files` run in a
worker thread, `read`, `remove`, `set_aside` and `quarantine` in the store thread while
replaying. Only the constructor's scan of the directory runs on the loop, once, before the
collector serves; `bytes` and `has_room` read a counter, which a lock keeps right across those
threads.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SUFFIX = ".pbd"  # length-framed requests
_MERGED_SUFFIX = ".pb"  # requests laid end to end (spools written before the framing)
_TEMP_SUFFIX = ".tmp"
_LOCK_NAME = ".lock"
_FRAME_HEADER_BYTES = 8
SET_ASIDE_SUFFIXES = (".corrupt", ".rejected")


class SpoolFull(Exception):
    """Writing would exceed the spool's byte limit."""


class SpoolInUse(OSError):
    """Another process owns the spool directory."""


class CorruptSpoolFile(ValueError):
    """A spool file's framing is broken."""


@dataclass(frozen=True)
class SpoolFile:
    path: Path
    signal: str
    size: int


def _spool_file(path: Path) -> SpoolFile:
    # Names are <time_ns>-<pid>-<seq>.<signal><suffix>: sorting them replays the oldest first.
    signal = path.stem.rsplit(".", 1)[1]
    return SpoolFile(path, signal, path.stat().st_size)


def frame(payloads: list[bytes]) -> bytes:
    return b"".join(len(payload).to_bytes(_FRAME_HEADER_BYTES, "big") + payload for payload in payloads)


def unframe(data: bytes) -> list[bytes]:
    payloads = []
    offset = 0
    while offset < len(data):
        end = offset + _FRAME_HEADER_BYTES + int.from_bytes(data[offset : offset + _FRAME_HEADER_BYTES], "big")
        if end > len(data):
            raise CorruptSpoolFile(f"a frame runs {end - len(data)} bytes past the end of the file")
        payloads.append(data[offset + _FRAME_HEADER_BYTES : end])
        offset = end
    return payloads


class Spool:
    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_exclusively(self.directory / _LOCK_NAME)
        self._sequence = itertools.count()
        self._lock = threading.Lock()
        for leftover in self.directory.glob(f"*{_TEMP_SUFFIX}"):
            # A temporary file is a write that crashed before its rename: never acknowledged.
            leftover.unlink()
        self._bytes = sum(spooled.size for spooled in self.files())
        self._set_aside = sum(1 for path in self.directory.iterdir() if path.suffix in SET_ASIDE_SUFFIXES)

    def close(self) -> None:
        """Releases the spool to the next process."""
        self._lock_file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def set_aside_files(self) -> int:
        """Files in the directory that will not be replayed (`.corrupt`, `.rejected`)."""
        return self._set_aside

    def has_room(self, size: int) -> bool:
        return self._bytes + size <= self.max_bytes

    def files(self) -> list[SpoolFile]:
        """The spooled files, oldest first."""
        paths = [*self.directory.glob(f"*{_SUFFIX}"), *self.directory.glob(f"*{_MERGED_SUFFIX}")]
        return [_spool_file(path) for path in sorted(paths, key=lambda path: path.name)]

    def write(self, signal: str, payloads: list[bytes]) -> SpoolFile:
        """Makes `payloads` (one OTLP request each) durable as one file; raises SpoolFull
        (nothing written) when the limit would be exceeded, OSError when the disk fails."""
        data = frame(payloads)
        with self._lock:
            if not self.has_room(len(data)):
                raise SpoolFull(f"spool {self.directory} holds {self._bytes} of {self.max_bytes} bytes")
            self._bytes += len(data)  # reserved now so that concurrent writers cannot overshoot
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._sequence):06d}.{signal}{_SUFFIX}"
        try:
            self._write_atomically(self.directory / name, data)
        except OSError:
            with self._lock:
                self._bytes -= len(data)
            raise
        return SpoolFile(self.directory / name, signal, len(data))

    def read(self, spooled: SpoolFile) -> list[bytes]:
        """The file's requests, in the order they were written; CorruptSpoolFile when its framing
        is broken."""
        data = spooled.path.read_bytes()
        return [data] if spooled.path.suffix == _MERGED_SUFFIX else unframe(data)

    def remove(self, spooled: SpoolFile) -> None:
        """Deletes a file whose rows are now in the store."""
        spooled.path.unlink()
        with self._lock:
            self._bytes -= spooled.size

    def set_aside(self, spooled: SpoolFile, refused: list[bytes], reason: str) -> Path:
        """Replaces `spooled` by a `.rejected` file holding only the `refused` requests (kept for
        inspection, no longer replayed): the rest of the file is in the store."""
        target = spooled.path.with_name(spooled.path.name + ".rejected")
        self._write_atomically(target, frame(refused))
        self.remove(spooled)
        with self._lock:
            self._set_aside += 1
        log.error("spool file %s: %d request(s) set aside in %s (%s)", spooled.path, len(refused), target, reason)
        return target

    def quarantine(self, spooled: SpoolFile, reason: str) -> None:
        """Moves a file that cannot be read aside as `.corrupt` (kept for inspection, no longer
        replayed or counted)."""
        target = spooled.path.with_name(spooled.path.name + ".corrupt")
        spooled.path.rename(target)
        with self._lock:
            self._bytes -= spooled.size
            self._set_aside += 1
        log.error("spool file %s cannot be replayed (%s); moved to %s", spooled.path, reason, target)

    def _write_atomically(self, final: Path, data: bytes) -> None:
        temporary = final.with_name(final.name + _TEMP_SUFFIX)
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(temporary, final)
            self._fsync_directory()
        except OSError:
            temporary.unlink(missing_ok=True)
            raise

    def _fsync_directory(self) -> None:
        # The rename is durable only once the directory entry is on disk.
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _lock_exclusively(path: Path):
    """The open lock file, held exclusively (released when closed or when the process ends);
    SpoolInUse naming the holder's pid when another process holds it."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise SpoolInUse(
            f"spool {path.parent} is in use by another collector (pid {holder}); "
            "give each collector its own --spool-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
