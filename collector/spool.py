"""The write-ahead spool: acknowledged OTLP requests the store could not take yet, on disk.

One file per failed flush and signal, holding the flush's requests as OTLP protobuf bytes laid
end to end. Concatenated protobuf messages parse as one message whose repeated fields are
appended, so a file reads back as a single ExportTrace/MetricsServiceRequest. A file appears
whole or not at all (temporary file, fsync, rename, fsync of the directory), so a crash at any
point leaves either no file (the client got no 200) or a complete one.

Blocking file I/O, so the pipeline keeps it off the event loop: `write` and `files` run in a
worker thread, `read`, `remove` and `quarantine` in the store thread while replaying. Only the
constructor's scan of the directory runs on the loop, once, before the collector serves; `bytes`
and `has_room` read a counter, which a lock keeps right across those threads.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SUFFIX = ".pb"
_TEMP_SUFFIX = ".tmp"


class SpoolFull(Exception):
    """Writing would exceed the spool's byte limit."""


@dataclass(frozen=True)
class SpoolFile:
    path: Path
    signal: str
    size: int


def _spool_file(path: Path) -> SpoolFile:
    # Names are <time_ns>-<pid>-<seq>.<signal>.pb: sorting them replays the oldest first.
    signal = path.name[: -len(_SUFFIX)].rsplit(".", 1)[1]
    return SpoolFile(path, signal, path.stat().st_size)


class Spool:
    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sequence = itertools.count()
        self._lock = threading.Lock()
        for leftover in self.directory.glob(f"*{_TEMP_SUFFIX}"):
            # A temporary file is a write that crashed before its rename: never acknowledged.
            leftover.unlink()
        self._bytes = sum(spooled.size for spooled in self.files())

    @property
    def bytes(self) -> int:
        return self._bytes

    def has_room(self, size: int) -> bool:
        return self._bytes + size <= self.max_bytes

    def files(self) -> list[SpoolFile]:
        """The spooled files, oldest first."""
        return [_spool_file(path) for path in sorted(self.directory.glob(f"*{_SUFFIX}"))]

    def write(self, signal: str, payloads: list[bytes]) -> SpoolFile:
        """Makes `payloads` durable as one file; raises SpoolFull (nothing written) when the
        limit would be exceeded, OSError when the disk fails."""
        size = sum(len(payload) for payload in payloads)
        with self._lock:
            if not self.has_room(size):
                raise SpoolFull(f"spool {self.directory} holds {self._bytes} of {self.max_bytes} bytes")
            self._bytes += size  # reserved now so that concurrent writers cannot overshoot
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._sequence):06d}.{signal}{_SUFFIX}"
        final = self.directory / name
        temporary = self.directory / f"{name}{_TEMP_SUFFIX}"
        try:
            with open(temporary, "wb") as handle:
                for payload in payloads:
                    handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(temporary, final)
            self._fsync_directory()
        except OSError:
            temporary.unlink(missing_ok=True)
            with self._lock:
                self._bytes -= size
            raise
        return SpoolFile(final, signal, size)

    def read(self, spooled: SpoolFile) -> bytes:
        return spooled.path.read_bytes()

    def remove(self, spooled: SpoolFile) -> None:
        """Deletes a file whose rows are now in the store."""
        spooled.path.unlink()
        with self._lock:
            self._bytes -= spooled.size

    def quarantine(self, spooled: SpoolFile, reason: str, suffix: str = ".corrupt") -> None:
        """Moves a file that cannot be replayed aside (kept for inspection, no longer replayed or
        counted): `.corrupt` when unreadable, `.rejected` when the store keeps refusing it."""
        target = spooled.path.with_name(spooled.path.name + suffix)
        spooled.path.rename(target)
        with self._lock:
            self._bytes -= spooled.size
        log.error("spool file %s cannot be replayed (%s); moved to %s", spooled.path, reason, target)

    def _fsync_directory(self) -> None:
        # The rename is durable only once the directory entry is on disk.
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
