"""The HW/SW stack a run happened on, as OTel Resource attributes on every agent's spans.

OTel semantic-convention names where they exist (host.*, os.*, process.*); `mlscope.*` for what
has none (CPU model, cores, memory, GPU, framework versions). docs/conventions.md lists them.

Pure parsers and mappers first; `stack_attributes()` is the one function that reads the machine.
Reading it must never fail an agent: every source that is missing degrades to absent attributes,
logged at debug level once.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import socket
import sys
from collections.abc import Mapping, Sequence

from opentelemetry.sdk.resources import OsResourceDetector, ProcessResourceDetector

from mlscope.conventions import (
    HOST_ARCH,
    HOST_CPU_LOGICAL_CORES,
    HOST_CPU_MODEL,
    HOST_GPU_COUNT,
    HOST_GPU_NAME,
    HOST_MEMORY_BYTES,
    HOST_NAME,
    ONNXRUNTIME_VERSION,
    OS_DESCRIPTION,
    TORCH_VERSION,
)

log = logging.getLogger(__name__)

AttributeValue = str | bool | int | float | Sequence[str]

FRAMEWORK_VERSIONS = {"torch": TORCH_VERSION, "onnxruntime": ONNXRUNTIME_VERSION}

# platform.machine() spellings -> the host.arch values of the semantic conventions.
_ARCH = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm32",
    "i386": "x86", "i686": "x86", "x86": "x86", "ppc64": "ppc64", "ppc64le": "ppc64", "s390x": "s390x",
    "ia64": "ia64",
}


def host_arch(machine: str) -> str:
    """The semconv host.arch for a platform.machine() value (lower-cased as is when unknown)."""
    return _ARCH.get(machine.lower(), machine.lower())


def cpu_model(cpuinfo: str) -> str | None:
    """The CPU model from /proc/cpuinfo text: x86's `model name`, else ARM's `Hardware`/`Model`."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    return fields.get("model name") or fields.get("hardware") or fields.get("model")


def gpu_attributes(names: Sequence[str]) -> dict[str, AttributeValue]:
    """GPU count and name (the first GPU's; a mixed machine lists each distinct name)."""
    if not names:
        return {}
    distinct = sorted(set(names))
    return {HOST_GPU_COUNT: len(names), HOST_GPU_NAME: distinct[0] if len(distinct) == 1 else ", ".join(distinct)}


def framework_versions(version_of: Mapping[str, str | None]) -> dict[str, str]:
    """`mlscope.<framework>.version` for each installed framework (None: not installed)."""
    return {FRAMEWORK_VERSIONS[name]: version for name, version in version_of.items() if version}


# --- reading the machine --------------------------------------------------------------------


def stack_attributes() -> dict[str, AttributeValue]:
    """The Resource attributes of this process and machine. Costs a few ms (no framework is
    imported: versions come from package metadata); NVML is only tried where a driver is."""
    attributes: dict[str, AttributeValue] = {}
    # The SDK's detectors own process.* and os.type/os.version; command args are opt-in there
    # because they can hold secrets. mlscope records them: the command is what was traced.
    attributes.update(ProcessResourceDetector(include_command_args=True).detect().attributes)
    attributes.update(OsResourceDetector().detect().attributes)
    attributes.update({
        HOST_NAME: socket.gethostname(),
        HOST_ARCH: host_arch(platform.machine()),
        OS_DESCRIPTION: platform.platform(),
        HOST_CPU_LOGICAL_CORES: os.cpu_count() or 0,
    })
    model = _read_cpu_model()
    if model:
        attributes[HOST_CPU_MODEL] = model
    memory = _memory_bytes()
    if memory:
        attributes[HOST_MEMORY_BYTES] = memory
    attributes.update(gpu_attributes(_gpu_names()))
    attributes.update(framework_versions({name: _installed_version(name) for name in FRAMEWORK_VERSIONS}))
    return attributes


def _read_cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            return cpu_model(cpuinfo.read())
    except OSError:
        return platform.processor() or None  # not Linux: the best the platform offers


def _memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception as exc:  # psutil missing or unsupported here: the attribute is optional
        log.debug("mlscope: no memory size in the resource: %s", exc)
        return None


def _gpu_names() -> list[str]:
    # Importing pynvml and failing to load libnvidia-ml is slow (docs/PERFORMANCE.md): on Linux,
    # look for the driver first (it creates /proc/driver/nvidia).
    if sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia"):
        log.debug("mlscope: no NVIDIA driver, no GPU attributes in the resource")
        return []
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [_text(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index)))
                    for index in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # no NVML, no GPU, or a driver problem: GPU attributes stay absent
        log.debug("mlscope: no GPU attributes in the resource: %s", exc)
        return []


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value  # older NVML bindings return bytes


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
