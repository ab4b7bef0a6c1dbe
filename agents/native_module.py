"""mlscope's native module, built and loaded: its op recorder for the library level on CPU
(native/op_recorder.cpp) and its span writer for the deep levels' spans on the deferred worker
(native/span_writer.cpp, used by agents/torch_capture.py where its Python would do the same,
tests/agents/test_span_writer.py).

The op recorder: the torch ops a thread runs. It records through RecordFunction, the callbacks
torch.profiler itself is built on, so it sees the same ops (aten::conv2d, record_function
labels), but keeps only a name and two perf_counter_ns-clock readings per op: no kineto session
to start, no per-event processing when it stops (docs/PERFORMANCE.md).

The module is built once per machine, torch version and source with torch's own extension
builder (a C++ compiler, Python's headers and ninja) into `$MLSCOPE_NATIVE_DIR` or
~/.cache/mlscope/native/. `python -m mlscope.agents.native_module` builds it ahead of time
(scripts/setup does); otherwise the first model traced at layer or library level builds it (a
while, logged). Where it cannot be built, `load` returns None: ops are then recorded with kineto
and spans written in Python (one warning). On a GPU ops come from kineto anyway: only it sees
device kernels. `is_built` tells an agent starting up whether the span writer is there without
importing torch (agents/api.py start_agent).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from types import ModuleType

from mlscope.conventions import ENV_NATIVE_DIR

log = logging.getLogger(__name__)

_NAME = "mlscope_op_recorder"


def build_directory() -> Path:
    """Where this torch version's build of this source lives: a new source or torch gets a new
    directory, so a stale build is never loaded."""
    digest = hashlib.sha256()
    for path in sorted(_native_files(), key=lambda path: path.name):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    tag = f"torch{_torch_version()}-py{sys.version_info[0]}{sys.version_info[1]}-{digest.hexdigest()[:12]}"
    root = os.environ.get(ENV_NATIVE_DIR) or Path.home() / ".cache" / "mlscope" / "native"
    return Path(root) / tag.replace("+", "_")


def _torch_version() -> str:
    """torch's version, read from its distribution unless torch is imported: importing it takes
    seconds, too long for an agent that may never trace a torch model."""
    torch = sys.modules.get("torch")
    return str(torch.__version__) if torch is not None else importlib.metadata.version("torch")


def is_built() -> bool:
    """True when this torch's build of this source is there, ready to import."""
    try:
        return _built_library() is not None
    except importlib.metadata.PackageNotFoundError:  # no torch: nothing to build against
        return False


@functools.cache
def load() -> ModuleType | None:
    """The native module, built first if needed; None (logged once) where it cannot be built."""
    try:
        return built()
    except Exception as error:  # no compiler, no Python headers, a torch without its headers
        log.warning(
            "mlscope's native module is unavailable (%s): ops are recorded with kineto, spans written in Python", error
        )
        return None


def built() -> ModuleType:
    """The native module, imported from its build or built now; raises if it cannot be built."""
    return _import_built() or build()


def build() -> ModuleType:
    """Builds the native module (ninja skips what is up to date) and imports it; raises if it cannot."""
    from torch.utils import cpp_extension  # imports setuptools: only when building

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    log.info("building mlscope's native module into %s (once, takes a while)", directory)
    sources = [str(path) for path in _native_files() if path.name.endswith(".cpp")]
    with _ninja_on_path():
        return cpp_extension.load(_NAME, sorted(sources), build_directory=str(directory), extra_cflags=["-O2"])


def _native_files() -> list[Path]:
    """The C++ sources and headers (native/): a change to any of them is a new build."""
    folder = files("mlscope.agents.native")
    return [Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith((".cpp", ".h"))]


def _built_library() -> Path | None:
    """The library of the native module built for this torch and source, if complete."""
    directory = build_directory()
    library = directory / f"{_NAME}.so"
    # torch's builder holds `lock` while it builds: the library may be half written until then.
    return None if not library.exists() or (directory / "lock").exists() else library


def _import_built() -> ModuleType | None:
    """The native module already built for this torch and source, imported without a build tool."""
    library = _built_library()
    if library is None:
        return None
    spec = importlib.util.spec_from_file_location(_NAME, library)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch's builder runs `ninja` from PATH; the one pip installs beside this Python is not on
    it when the virtual environment is not activated."""
    if shutil.which("ninja"):
        yield
        return
    import ninja

    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, path]) if path else ninja.BIN_DIR
    try:
        yield
    finally:
        os.environ["PATH"] = path


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(built().__file__)
