"""The HW/SW stack on every agent's Resource: parsers, mappings, and what a real machine gives."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
from mlscope.agents import resource
from mlscope.conventions import HOST_CPU_LOGICAL_CORES as CPU_LOGICAL_CORES
from mlscope.conventions import HOST_CPU_MODEL as CPU_MODEL
from mlscope.conventions import HOST_GPU_COUNT as GPU_COUNT
from mlscope.conventions import HOST_GPU_NAME as GPU_NAME
from mlscope.conventions import HOST_MEMORY_BYTES as MEMORY_BYTES
from mlscope.agents.resource import (
    cpu_model,
    framework_versions,
    gpu_attributes,
    host_arch,
    stack_attributes,
)

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model\t\t: 85
model name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz
"""
ARM_CPUINFO = "processor\t: 0\nBogoMIPS\t: 108.00\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B\n"


def test_cpu_model_from_cpuinfo() -> None:
    assert cpu_model(X86_CPUINFO) == "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz"
    assert cpu_model(ARM_CPUINFO) == "BCM2835"
    assert cpu_model("processor\t: 0\n") is None


@pytest.mark.parametrize("machine, arch", [("x86_64", "amd64"), ("AMD64", "amd64"), ("aarch64", "arm64"),
                                           ("arm64", "arm64"), ("i686", "x86"), ("riscv64", "riscv64")])
def test_host_arch_uses_semantic_convention_values(machine: str, arch: str) -> None:
    assert host_arch(machine) == arch


def test_gpu_and_framework_attributes() -> None:
    assert gpu_attributes([]) == {}
    assert gpu_attributes(["NVIDIA H200"] * 2) == {GPU_COUNT: 2, GPU_NAME: "NVIDIA H200"}
    assert gpu_attributes(["B", "A", "B"]) == {GPU_COUNT: 3, GPU_NAME: "A, B"}
    assert framework_versions({"torch": "2.13.0", "onnxruntime": None}) == {"mlscope.torch.version": "2.13.0"}


def test_this_machine_with_semantic_convention_names() -> None:
    attributes = stack_attributes()
    for key in ("host.name", "host.arch", "os.type", "os.description", "process.pid", "process.runtime.name",
                "process.runtime.version", "process.command_args", CPU_LOGICAL_CORES, MEMORY_BYTES):
        assert key in attributes, key
    assert attributes[MEMORY_BYTES] > 0 and attributes[CPU_LOGICAL_CORES] > 0
    assert attributes["mlscope.torch.version"].startswith("2.")
    if sys.platform.startswith("linux"):
        assert attributes[CPU_MODEL]


def test_a_broken_nvml_leaves_the_gpu_attributes_out(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setattr(resource.os.path, "exists", lambda path: True)  # as if a driver were there
    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=fail))
    attributes = stack_attributes()
    assert GPU_COUNT not in attributes and GPU_NAME not in attributes


def test_reading_the_stack_imports_no_framework() -> None:
    code = ("import sys; from mlscope.agents.resource import stack_attributes; a = stack_attributes(); "
            "print('torch' in sys.modules, 'onnxruntime' in sys.modules, 'mlscope.torch.version' in a)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "False", "True"]
