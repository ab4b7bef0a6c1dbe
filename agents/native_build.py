"""Where mlscope's native module is built and whether it is there, without importing torch:
an agent asks when it starts (agents/api.py choose_writer), and importing torch takes seconds an
agent that never traces a torch model should not pay. Building and loading the module is
agents/native_module.py's.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
from importlib.resources import files
from pathlib import Path

from mlscope.conventions import ENV_NATIVE_DIR

NAME = "mlscope_op_recorder"
"""The native module's import name (and its library's file name)."""


def build_directory() -> Path:
    """Where this torch version's build of this source lives: a new source or torch gets a new
    directory, so a stale build is never loaded."""
    digest = hashlib.sha256()
    for path in sorted(native_files(), key=lambda path: path.name):
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
        return built_library() is not None
    except importlib.metadata.PackageNotFoundError:  # no torch: nothing to build against
        return False


def native_files() -> list[Path]:
    """The C++ sources and headers (native/): a change to any of them is a new build."""
    folder = files("mlscope.agents.native")
    return [Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith((".cpp", ".h"))]


def built_library() -> Path | None:
    """The library of the native module built for this torch and source, if complete."""
    directory = build_directory()
    library = directory / f"{NAME}.so"
    # torch's builder holds `lock` while it builds: the library may be half written until then.
    return None if not library.exists() or (directory / "lock").exists() else library
