"""The HW/SW stack an evaluation ran on, and its fingerprint: results from the same stack share
a fingerprint, so comparisons across systems group by it."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
from dataclasses import dataclass
from importlib import metadata
from typing import Any

LIBRARIES = ("torch", "onnxruntime", "numpy")


@dataclass(frozen=True)
class System:
    name: str  # the host name, for people
    fingerprint: str  # 16 hex digits of the stack's sha256, for grouping
    description: str  # one line, for tables


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]


def stack() -> dict[str, Any]:
    """What the numbers depend on: hardware, OS, Python and the libraries that run models."""
    import psutil

    versions = {}
    for library in LIBRARIES:
        try:
            versions[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            versions[library] = ""
    return {
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count() or 0,
        "memory_bytes": psutil.virtual_memory().total,
        "gpus": _gpus(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "libraries": versions,
    }


def describe(stack_info: dict[str, Any], host: str) -> System:
    """Pure: the System for a stack. The fingerprint hashes canonical JSON (sorted keys)."""
    canonical = json.dumps(stack_info, sort_keys=True, separators=(",", ":"))
    gpus = f", {', '.join(stack_info['gpus'])}" if stack_info["gpus"] else ""
    libraries = ", ".join(f"{name} {version}" for name, version in stack_info["libraries"].items() if version)
    description = (
        f"{stack_info['cpu']} ({stack_info['cpus']} CPUs, {stack_info['memory_bytes'] / 2**30:.0f} GiB){gpus}; "
        f"{stack_info['os']}; Python {stack_info['python']}; {libraries}"
    )
    return System(host, hashlib.sha256(canonical.encode()).hexdigest()[:16], description)


def this_system() -> System:
    return describe(stack(), socket.gethostname())
