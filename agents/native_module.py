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
device kernels. Whether it is built is known without importing torch: agents/native_build.py.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import torch  # noqa: F401 - loads the libraries the module links against (libc10, ...)

from .native_build import NAME, build_directory, built_library, native_files

log = logging.getLogger(__name__)

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
    sources = [str(path) for path in native_files() if path.name.endswith(".cpp")]
    with _ninja_on_path():
        return cpp_extension.load(NAME, sorted(sources), build_directory=str(directory), extra_cflags=["-O2"])


def _import_built() -> ModuleType | None:
    """The native module already built for this torch and source, imported without a build tool."""
    library = built_library()
    if library is None:
        return None
    spec = importlib.util.spec_from_file_location(NAME, library)
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
