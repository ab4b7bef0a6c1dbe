"""Hardware level: pure aggregates and counters, degrade paths, OTLP metrics, span attributes."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from mlscope.agents import Agent
from mlscope.agents.hardware import (
    GpuSample,
    HardwareSampler,
    Sample,
    aggregate,
    counter_delta,
    metric_points,
    open_nvml,
    open_rapl,
    rapl_zones,
)
from opentelemetry.sdk.metrics.export import (
    Gauge,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    Sum,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

S = 1_000_000_000


def sample(at_s: float, busy: float, total: float, process: float, rss: int, gpu: float | None = None,
           rapl: float | None = None) -> Sample:
    gpus = (GpuSample(0, gpu, 1 << 30, 100.0, 1.5e9, 60.0, 10 * at_s),) if gpu is not None else ()
    return Sample(int(at_s * S), (busy / 2, busy / 2), (total / 2, total / 2), process, rss, None, gpus,
                  (rapl,) if rapl is not None else ())


def test_aggregates_are_counter_differences_over_the_interval() -> None:
    # 2 cores; 1 s apart: 0.5 s busy of 2 s, then 1.5 s of 2 s; RAPL +10 J then +30 J.
    samples = [sample(0, 0, 0, 0, 100, 0.2, 0.0), sample(1, 0.5, 2, 0.4, 300, 0.4, 10.0),
               sample(2, 2.0, 4, 1.4, 200, 0.8, 40.0)]
    whole = aggregate(samples, 0, 2 * S, package_zones=(0,))
    assert whole.cpu_utilization == pytest.approx(2.0 / 4)
    assert whole.process_cpu_utilization == pytest.approx(1.4 / (2 * 2))
    assert whole.energy_j == pytest.approx(40.0)
    assert whole.gpu_energy_j == pytest.approx(20.0)
    assert whole.gpu_utilization == pytest.approx((0.4 + 0.8) / 2)
    assert whole.peak_rss == 300
    # Half-way through each period: counters interpolate, levels weigh by overlap.
    middle = aggregate(samples, S // 2, 3 * S // 2, package_zones=(0,))
    assert middle.cpu_utilization == pytest.approx((0.25 + 0.75) / 2)
    assert middle.energy_j == pytest.approx(5.0 + 15.0)
    assert middle.gpu_utilization == pytest.approx(0.6)
    assert middle.attributes()["mlscope.hw.energy"] == pytest.approx(20.0)


def test_aggregates_without_sources_or_samples_leave_figures_out() -> None:
    samples = [sample(0, 0, 0, 0, 100), sample(1, 1, 2, 0.5, 100)]
    figures = aggregate(samples, 0, S).attributes()
    assert set(figures) == {"mlscope.hw.samples", "mlscope.hw.cpu.utilization",
                            "mlscope.hw.process.cpu.utilization", "mlscope.hw.memory.peak_rss"}
    assert aggregate(samples, 5 * S, 6 * S).attributes() == {"mlscope.hw.samples": 0}


def test_rapl_counter_wraps_around() -> None:
    assert counter_delta(100, 250, 1000) == 150
    assert counter_delta(900, 50, 1000) == 150


def write_zone(root: Path, name: str, zone: str, energy: int, max_range: int = 1000) -> Path:
    directory = root / name
    directory.mkdir()
    (directory / "name").write_text(zone + "\n")
    (directory / "max_energy_range_uj").write_text(str(max_range))
    (directory / "energy_uj").write_text(str(energy))
    return directory / "energy_uj"


def test_rapl_reads_a_fake_sysfs_and_unwraps(tmp_path: Path) -> None:
    energy = write_zone(tmp_path, "intel-rapl:0", "package-0", 900_000, max_range=1_000_000)
    write_zone(tmp_path, "intel-rapl:0:0", "core", 10)
    reader = open_rapl(tmp_path)
    assert [(z.id, z.package) for z in reader.zones] == [("intel-rapl:0", True), ("intel-rapl:0:0", False)]
    energy.write_text("50000")  # wrapped: +100,000 + 50,000 µJ
    assert reader.read()[0] == pytest.approx(0.15)


def test_unreadable_rapl_degrades_with_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    energy = write_zone(tmp_path, "intel-rapl:0", "package-0", 1)
    energy.chmod(0)
    energy.unlink()  # as root chmod does not stop reads: a zone whose energy file is missing
    with caplog.at_level(logging.INFO, "mlscope.agents.hardware"):
        assert open_rapl(tmp_path) is None
        assert open_rapl(tmp_path / "absent") is None
    assert [r.getMessage().startswith("mlscope hardware: no RAPL energy") for r in caplog.records] == [True, True]
    assert rapl_zones(tmp_path)[0] == []


def test_no_gpu_here_degrades_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "mlscope.agents.hardware"):
        assert open_nvml() is None  # no NVML library on this machine: pynvml raises NVMLError
    assert len(caplog.records) == 1 and "no GPU metrics" in caplog.records[0].getMessage()


class FakeNvml:
    """Just enough of pynvml for one GPU whose energy counter is not supported."""

    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.energy_calls = 0

    def nvmlInit(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: return 1
    def nvmlDeviceGetHandleByIndex(self, index: int) -> str: return f"gpu{index}"
    def nvmlDeviceGetUtilizationRates(self, handle: str) -> SimpleNamespace: return SimpleNamespace(gpu=75)
    def nvmlDeviceGetMemoryInfo(self, handle: str) -> SimpleNamespace: return SimpleNamespace(used=2 << 30)
    def nvmlDeviceGetPowerUsage(self, handle: str) -> int: return 150_000
    def nvmlDeviceGetClockInfo(self, handle: str, clock: int) -> int: return 1410
    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int: return 55

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:
        self.energy_calls += 1
        raise self.NVMLError("Not Supported")


class KeepExporter(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.exported: list[MetricsData] = []

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object) -> MetricExportResult:
        self.exported.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None: ...


def points(exported: list[MetricsData]) -> dict[str, list]:
    found: dict[str, list] = {}
    for data in exported:
        for metric in data.resource_metrics[0].scope_metrics[0].metrics:
            found.setdefault(metric.name, []).extend((metric.data, p) for p in metric.data.data_points)
    return found


def test_gpu_path_with_a_stand_in_nvml_exports_gpu_metrics(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml()
    exporter = KeepExporter()
    with caplog.at_level(logging.INFO, "mlscope.agents.hardware"):
        sampler = HardwareSampler(exporter, rapl_root=tmp_path, nvml=nvml)
        first = sampler.sample_now(io=True)
        time.sleep(0.05)  # /proc/stat counts CPU time in 10 ms ticks
        second = sampler.sample_now(io=True)
        sampler.stop()
    assert first.gpus[0] == GpuSample(0, 0.75, 2 << 30, 150.0, 1.41e9, 55, None)
    assert nvml.energy_calls == 1  # unsupported once: not asked again
    assert sum("GPU energy_j not readable" in r.getMessage() for r in caplog.records) == 1
    found = points(exporter.exported)
    assert [p.value for _, p in found["hw.gpu.utilization"]] == [0.75, 0.75]
    assert found["hw.gpu.utilization"][0][1].attributes == {"hw.id": "gpu0", "hw.type": "gpu"}
    assert "hw.energy" not in found
    assert [p.time_unix_nano for _, p in found["process.memory.usage"]] == [first.time_ns, second.time_ns]
    # Utilization is a rate: the first sample has no predecessor, the second one has.
    assert [p.time_unix_nano for _, p in found["process.cpu.utilization"]] == [second.time_ns]
    per_core = [p.attributes for _, p in found["system.cpu.utilization"]]
    assert per_core[0] == {} and per_core[1:] == [{"cpu.logical_number": i} for i in range(len(first.cpu_total_s))]
    disk = found["system.disk.io"]
    assert isinstance(disk[0][0], Sum) and disk[0][0].is_monotonic
    assert isinstance(found["system.cpu.utilization"][0][0], Gauge)


def test_metric_points_name_rapl_zones() -> None:
    from mlscope.agents.hardware import RaplZone

    zones = [RaplZone("intel-rapl:0", "package-0", Path("/x"), 10)]
    metrics = metric_points([sample(1, 1, 2, 0.5, 100, rapl=3.0)], None, zones)
    energy = next(m for m in metrics if m.name == "hw.energy")
    assert energy.points == [({"hw.id": "intel-rapl:0", "hw.name": "package-0", "hw.type": "cpu"}, S, 3.0)]


def test_sampler_thread_samples_and_exports_until_stopped(tmp_path: Path) -> None:
    exporter = KeepExporter()
    sampler = HardwareSampler(exporter, interval_s=0.01, export_interval_s=0.02, rapl_root=tmp_path)
    sampler.start()
    time.sleep(0.15)
    sampler.stop()
    memory = points(exporter.exported)["process.memory.usage"]
    assert len(memory) >= 5
    assert len(exporter.exported) >= 2  # exported in batches while running, not only at stop
    times = [p.time_unix_nano for _, p in memory]
    assert times == sorted(times) and len(set(times)) == len(times)


def test_model_spans_carry_hardware_aggregates_at_hardware_level_only(tmp_path: Path) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    sampler = HardwareSampler(rapl_root=tmp_path)

    def busy(n: int) -> int:
        return sum(i * i for i in range(n))

    cpu_before = time.process_time()
    Agent(provider, "hardware", sampler).trace_model(busy, name="busy", framework="python")(300_000)
    cpu_used = time.process_time() - cpu_before
    Agent(provider, "library", sampler).trace_model(busy, name="busy", framework="python")(10)
    hardware, library = spans.get_finished_spans()
    attributes = hardware.attributes
    assert attributes["mlscope.hw.samples"] >= 1
    # What the busy thread gets of the cores depends on the machine's load (0.13 on a loaded
    # 2-core machine, 0.5 on an idle one): the figure must instead match this process's own CPU
    # time over the span, measured here around the call (which brackets the span a little).
    utilization = attributes["mlscope.hw.process.cpu.utilization"]
    span_cpu_s = utilization * (hardware.end_time - hardware.start_time) / 1e9 * len(psutil.cpu_times(percpu=True))  # the sampler's cores
    assert 0 < utilization <= 1.0
    assert 0.5 * cpu_used < span_cpu_s <= cpu_used * 1.05 + 0.002
    assert attributes["mlscope.hw.memory.peak_rss"] > 10 << 20
    assert "mlscope.hw.gpu.utilization" not in attributes and "mlscope.hw.energy" not in attributes
    assert not any(key.startswith("mlscope.hw.") for key in library.attributes)


def test_utilization_is_clamped_to_its_range() -> None:
    # Counter differences in floating point can come out a hair below zero on an idle machine.
    samples = [sample(0.0, busy=10.0, total=100.0, process=1.0, rss=1),
               sample(1.0, busy=10.0 - 1e-11, total=102.0, process=1.0, rss=1)]
    figures = aggregate(samples, 0, S)
    assert figures.cpu_utilization == 0.0
