"""Hardware level: a background sampler of CPU, memory, IO, GPU and energy counters, exported as
OTLP metrics, and per-span aggregates over its samples.

    sampler = HardwareSampler(exporter=OTLPMetricExporter(endpoint=".../v1/metrics"))
    sampler.start()                    # a daemon thread samples every `interval_s`
    ...
    sampler.sample_now()               # at a span's start and end: exact boundaries
    attributes = sampler.span_attributes(start_ns, end_ns)   # mlscope.hw.*
    sampler.stop()                     # exports what is left

Samples hold cumulative counters (CPU busy/total seconds per core, process CPU seconds, IO bytes,
RAPL and NVML energy), not rates: any interval's utilization or energy is then a pure difference
of two interpolated counter readings (`aggregate`), with no state shared between the thread and
the callers. Levels (RSS, GPU utilization, power, clocks) are kept as read.

Sources degrade one by one: a source that cannot be read (no NVML library or GPU, RAPL files
absent or root-only, no disk counters in a container) is logged in ONE line when the sampler is
built and left out; a field a GPU does not support is logged once and read as absent.

Why the sampler builds OTLP `MetricsData` itself instead of observable gauges on a MeterProvider:
the SDK's gauge aggregation keeps one value per series per collection, stamped with the collection
time; a 100 ms sampler exported every second would lose 9 samples of 10 and misdate the tenth.
Here every sample is one data point with the time it was read, exported in batches by the same
OTLP/HTTP exporter class the SDK's periodic reader uses.

Cost (figures in docs/PERFORMANCE.md): a full sample reads /proc, most of its time on disk and
network counters; so the span-boundary samples skip the IO counters.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Metric,
    MetricExporter,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource

from mlscope.conventions import (
    GPU_SM_CLOCK_METRIC,
    HW_CPU_UTILIZATION,
    HW_ENERGY,
    HW_ENERGY_METRIC,
    HW_GPU_ENERGY,
    HW_GPU_MEMORY_USAGE_METRIC,
    HW_GPU_UTILIZATION,
    HW_GPU_UTILIZATION_METRIC,
    HW_PEAK_RSS,
    HW_POWER_METRIC,
    HW_PROCESS_CPU_UTILIZATION,
    HW_SAMPLES,
    HW_TEMPERATURE_METRIC,
    PROCESS_CPU_UTILIZATION,
    PROCESS_MEMORY_USAGE,
    SYSTEM_CPU_UTILIZATION,
    SYSTEM_DISK_IO,
    SYSTEM_NETWORK_IO,
)

from .spans import SCOPE

log = logging.getLogger(__name__)

RAPL_ROOT = Path("/sys/class/powercap")
DEFAULT_INTERVAL_S = 0.1
DEFAULT_EXPORT_INTERVAL_S = 1.0

# Per-span aggregates on model spans (docs/conventions.md, "Hardware metrics").


# --- samples -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuSample:
    """One GPU as NVML reported it; None for a field the device does not support."""

    index: int
    utilization: float | None  # ratio 0..1 over NVML's own window (1/6 s to 1 s, device-dependent)
    memory_used: int | None  # bytes
    power_w: float | None
    sm_clock_hz: float | None
    temperature_c: float | None
    energy_j: float | None  # cumulative since the driver loaded


@dataclass(frozen=True)
class RaplZone:
    """One readable RAPL zone. `package` zones are the ones summed into a span's energy: their
    subzones (core, uncore, dram) are parts of them and psys covers the whole platform."""

    id: str  # the sysfs directory name, e.g. intel-rapl:0
    name: str  # its `name` file, e.g. package-0
    energy_path: Path
    max_range_uj: int

    @property
    def package(self) -> bool:
        return self.name.startswith("package")


@dataclass(frozen=True)
class Sample:
    """Counters and levels read at `time_ns` (wall clock, as span times)."""

    time_ns: int
    cpu_busy_s: tuple[float, ...]  # per logical CPU, cumulative
    cpu_total_s: tuple[float, ...]
    process_cpu_s: float  # this process, cumulative (user + system)
    rss: int  # bytes
    io: tuple[int, int, int, int] | None  # disk read, disk write, net receive, net transmit bytes
    gpus: tuple[GpuSample, ...] = ()
    rapl_j: tuple[float, ...] = ()  # cumulative joules, one per zone of the sampler's zones


# --- pure cores ----------------------------------------------------------------------------------


def rapl_zones(root: Path) -> tuple[list[RaplZone], str | None]:
    """The readable RAPL zones under `root` (/sys/class/powercap), and why there are none (or
    None). Since Linux 5.10 energy_uj is root-only (CVE-2020-8694): unreadable zones are skipped."""
    zones: list[RaplZone] = []
    problem = None
    for directory in sorted(root.glob("intel-rapl:*")):
        try:
            (directory / "energy_uj").read_text()
            name = (directory / "name").read_text().strip()
            max_range = int((directory / "max_energy_range_uj").read_text())
        except (OSError, ValueError) as error:
            problem = f"{directory / 'energy_uj'}: {error.strerror if isinstance(error, OSError) else error}"
            continue
        zones.append(RaplZone(directory.name, name, directory / "energy_uj", max_range))
    if not zones:
        return [], problem or f"no intel-rapl zones under {root}"
    return zones, None


def counter_delta(previous: int, current: int, max_range: int) -> int:
    """Increase of a counter that wraps to 0 after `max_range` (RAPL's energy_uj)."""
    return current - previous if current >= previous else max_range - previous + current


def _interpolate(times: Sequence[int], values: Sequence[float], at: int) -> float | None:
    """A cumulative counter's value at `at`, linear between the samples around it; None outside."""
    if not times or at < times[0] or at > times[-1]:
        return None
    for i in range(1, len(times)):
        if times[i] >= at:
            span = times[i] - times[i - 1]
            share = (at - times[i - 1]) / span if span else 1.0
            return values[i - 1] + share * (values[i] - values[i - 1])
    return values[0]


def _increase(times: Sequence[int], values: Sequence[float], start_ns: int, end_ns: int) -> float | None:
    first, last = _interpolate(times, values, start_ns), _interpolate(times, values, end_ns)
    return None if first is None or last is None else last - first


def _held_mean(times: Sequence[int], values: Sequence[float | None], start_ns: int, end_ns: int) -> float | None:
    """Time-weighted mean of a level where the sample at t[i] stands for (t[i-1], t[i]] (a
    utilization averaged over the time before it was read)."""
    total = weight = 0.0
    for i in range(1, len(times)):
        value = values[i]
        overlap = min(times[i], end_ns) - max(times[i - 1], start_ns)
        if value is not None and overlap > 0:
            total += overlap * value
            weight += overlap
    return total / weight if weight else None


@dataclass(frozen=True)
class Aggregates:
    """A span's hardware figures; None where the samples cannot tell (no source, or no samples
    around the span's ends)."""

    samples: int
    cpu_utilization: float | None
    process_cpu_utilization: float | None
    gpu_utilization: float | None
    energy_j: float | None
    gpu_energy_j: float | None
    peak_rss: int | None

    def attributes(self) -> dict[str, float | int]:
        values = {
            HW_SAMPLES: self.samples,
            HW_CPU_UTILIZATION: self.cpu_utilization,
            HW_PROCESS_CPU_UTILIZATION: self.process_cpu_utilization,
            HW_GPU_UTILIZATION: self.gpu_utilization,
            HW_ENERGY: self.energy_j,
            HW_GPU_ENERGY: self.gpu_energy_j,
            HW_PEAK_RSS: self.peak_rss,
        }
        return {key: value for key, value in values.items() if value is not None}


def _utilization(busy: float | None, total: float | None) -> float | None:
    """busy / total, clamped to [0, 1]: counter differences in floating point can land a hair
    outside (e.g. -1e-11 on an idle core), which is noise, not a reading."""
    if busy is None or not total:
        return None
    return min(1.0, max(0.0, busy / total))


def aggregate(samples: Sequence[Sample], start_ns: int, end_ns: int, package_zones: Sequence[int] = ()) -> Aggregates:
    """Hardware figures of the interval [start_ns, end_ns] from time-ordered samples that
    bracket it: mean system and process CPU utilization (counter differences), mean GPU
    utilization over all GPUs, RAPL energy of the `package_zones` (indexes into Sample.rapl_j)
    and NVML energy in joules, and the peak RSS among the samples that cover the interval."""
    covering = [
        s for i, s in enumerate(samples)
        if s.time_ns >= start_ns and (i == 0 or samples[i - 1].time_ns <= end_ns)
    ]
    if not covering:
        return Aggregates(0, None, None, None, None, None, None)
    times = [s.time_ns for s in samples]
    busy = _increase(times, [sum(s.cpu_busy_s) for s in samples], start_ns, end_ns)
    total = _increase(times, [sum(s.cpu_total_s) for s in samples], start_ns, end_ns)
    process = _increase(times, [s.process_cpu_s for s in samples], start_ns, end_ns)
    cores = len(samples[0].cpu_total_s)
    gpu_util = _held_mean(times, [_mean(g.utilization for g in s.gpus) for s in samples], start_ns, end_ns)
    energy = None
    if package_zones:
        energy = _increase(times, [sum(s.rapl_j[z] for z in package_zones) for s in samples], start_ns, end_ns)
    gpu_energy = None
    if samples[0].gpus and all(g.energy_j is not None for s in samples for g in s.gpus):
        gpu_energy = _increase(times, [sum(g.energy_j for g in s.gpus) for s in samples], start_ns, end_ns)
    return Aggregates(
        samples=len(covering),
        cpu_utilization=_utilization(busy, total),
        process_cpu_utilization=_utilization(process, (end_ns - start_ns) / 1e9 * cores) if end_ns > start_ns else None,
        gpu_utilization=gpu_util,
        energy_j=energy,
        gpu_energy_j=gpu_energy,
        peak_rss=max(s.rss for s in covering),
    )


def _mean(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


# --- OTLP metrics (pure) --------------------------------------------------------------------------


GAUGE, UPDOWN, COUNTER = "gauge", "updowncounter", "counter"


@dataclass(frozen=True)
class MetricPoints:
    """Data points of one metric, before they become SDK objects."""

    name: str
    unit: str
    kind: str
    points: list[tuple[dict[str, Any], int, float]]  # (attributes, time_ns, value)


def _gpu_id(gpu: GpuSample) -> dict[str, Any]:
    return {"hw.id": f"gpu{gpu.index}", "hw.type": "gpu"}


def metric_points(samples: Sequence[Sample], previous: Sample | None, zones: Sequence[RaplZone]) -> list[MetricPoints]:
    """The OTLP metrics of `samples` (semantic-convention names where they exist). Utilizations
    are rates between consecutive samples, so the first needs `previous` (the last sample of the
    batch before) and is skipped without it."""
    metrics: dict[str, MetricPoints] = {}

    def add(name: str, unit: str, kind: str, attributes: dict[str, Any], at: int, value: float | None) -> None:
        if value is not None:
            metrics.setdefault(name, MetricPoints(name, unit, kind, [])).points.append((attributes, at, value))

    before = previous
    for sample in samples:
        at = sample.time_ns
        if before is not None and at > before.time_ns:
            deltas = [
                (sample.cpu_busy_s[i] - before.cpu_busy_s[i], sample.cpu_total_s[i] - before.cpu_total_s[i])
                for i in range(len(sample.cpu_total_s))
            ]
            add(SYSTEM_CPU_UTILIZATION, "1", GAUGE, {}, at,
                _utilization(sum(b for b, _ in deltas), sum(t for _, t in deltas)))
            for core, (busy, total) in enumerate(deltas):
                add(SYSTEM_CPU_UTILIZATION, "1", GAUGE, {"cpu.logical_number": core}, at, _utilization(busy, total))
            elapsed = (at - before.time_ns) / 1e9 * len(sample.cpu_total_s)
            add(PROCESS_CPU_UTILIZATION, "1", GAUGE, {}, at, (sample.process_cpu_s - before.process_cpu_s) / elapsed)
        add(PROCESS_MEMORY_USAGE, "By", UPDOWN, {}, at, sample.rss)
        if sample.io is not None:
            read, write, receive, transmit = sample.io
            add(SYSTEM_DISK_IO, "By", COUNTER, {"disk.io.direction": "read"}, at, read)
            add(SYSTEM_DISK_IO, "By", COUNTER, {"disk.io.direction": "write"}, at, write)
            add(SYSTEM_NETWORK_IO, "By", COUNTER, {"network.io.direction": "receive"}, at, receive)
            add(SYSTEM_NETWORK_IO, "By", COUNTER, {"network.io.direction": "transmit"}, at, transmit)
        for gpu in sample.gpus:
            ids = _gpu_id(gpu)
            add(HW_GPU_UTILIZATION_METRIC, "1", GAUGE, ids, at, gpu.utilization)
            add(HW_GPU_MEMORY_USAGE_METRIC, "By", UPDOWN, ids, at, gpu.memory_used)
            add(HW_POWER_METRIC, "W", GAUGE, ids, at, gpu.power_w)
            add(HW_TEMPERATURE_METRIC, "Cel", GAUGE, ids, at, gpu.temperature_c)
            add(HW_ENERGY_METRIC, "J", COUNTER, ids, at, gpu.energy_j)
            add(GPU_SM_CLOCK_METRIC, "Hz", GAUGE, ids, at, gpu.sm_clock_hz)
        for zone, joules in zip(zones, sample.rapl_j):
            ids = {"hw.id": zone.id, "hw.name": zone.name, "hw.type": "cpu" if zone.package else "other"}
            add(HW_ENERGY_METRIC, "J", COUNTER, ids, at, joules)
        before = sample
    return list(metrics.values())


def metrics_data(metrics: Sequence[MetricPoints], resource: Resource, start_ns: int) -> MetricsData:
    """SDK MetricsData for an OTLP metric exporter; counters are cumulative from `start_ns`."""
    sdk_metrics = []
    for metric in metrics:
        points = [NumberDataPoint(attributes, start_ns, at, value) for attributes, at, value in metric.points]
        if metric.kind == GAUGE:
            data: Gauge | Sum = Gauge(points)
        else:
            data = Sum(points, AggregationTemporality.CUMULATIVE, is_monotonic=metric.kind == COUNTER)
        sdk_metrics.append(Metric(metric.name, "", metric.unit, data))
    return MetricsData([ResourceMetrics(resource, [ScopeMetrics(SCOPE, sdk_metrics, "")], "")])


# --- sources (I/O) --------------------------------------------------------------------------------


class RaplReader:
    """Cumulative joules per zone, unwrapping each counter's wrap-around."""

    def __init__(self, zones: Sequence[RaplZone]) -> None:
        self.zones = tuple(zones)
        self._last = [int(zone.energy_path.read_text()) for zone in zones]
        self._joules = [0.0] * len(zones)

    def read(self) -> tuple[float, ...]:
        for i, zone in enumerate(self.zones):
            raw = int(zone.energy_path.read_text())
            self._joules[i] += counter_delta(self._last[i], raw, zone.max_range_uj) / 1e6
            self._last[i] = raw
        return tuple(self._joules)


class NvmlReader:
    """GPU samples through NVML (the `pynvml` module of nvidia-ml-py, or a stand-in in tests)."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        self._unsupported: set[str] = set()
        self._fields: tuple[tuple[str, Callable[[Any], float]], ...] = (
            ("utilization", lambda h: nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100),
            ("memory_used", lambda h: nvml.nvmlDeviceGetMemoryInfo(h).used),
            ("power_w", lambda h: nvml.nvmlDeviceGetPowerUsage(h) / 1000),
            ("sm_clock_hz", lambda h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM) * 1e6),
            ("temperature_c", lambda h: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
            ("energy_j", lambda h: nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000),
        )

    @property
    def count(self) -> int:
        return len(self._handles)

    def read(self) -> tuple[GpuSample, ...]:
        return tuple(
            GpuSample(index, **{field: self._field(field, read, handle) for field, read in self._fields})
            for index, handle in enumerate(self._handles)
        )

    def _field(self, field: str, read: Callable[[Any], float], handle: Any) -> float | None:
        if field in self._unsupported:
            return None
        try:
            return read(handle)
        except self._nvml.NVMLError as error:
            # Not supported on this device (energy before Volta, power on some boards): say so once.
            self._unsupported.add(field)
            log.info("mlscope hardware: GPU %s not readable (%s); left out", field, error)
            return None


def open_nvml(nvml: Any | None = None) -> NvmlReader | None:
    """An NVML reader, or None (one log line) without the library, a driver or a GPU."""
    try:
        if nvml is None:
            import pynvml as nvml
        nvml.nvmlInit()
        reader = NvmlReader(nvml)
    except Exception as error:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded...
        log.info("mlscope hardware: no GPU metrics (NVML: %s)", error)
        return None
    if not reader.count:
        log.info("mlscope hardware: no GPU metrics (NVML sees no GPU)")
        return None
    return reader


def open_rapl(root: Path = RAPL_ROOT) -> RaplReader | None:
    """A RAPL reader, or None (one log line) when no zone is readable."""
    zones, problem = rapl_zones(root)
    if not zones:
        log.info("mlscope hardware: no RAPL energy (%s)", problem)
        return None
    return RaplReader(zones)


def _cpu_counters() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(busy, total) seconds per logical CPU; busy leaves out idle and iowait, as psutil does."""
    per_cpu = psutil.cpu_times(percpu=True)
    totals = tuple(sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0) for times in per_cpu)
    busy = tuple(total - times.idle - getattr(times, "iowait", 0.0) for total, times in zip(totals, per_cpu))
    return busy, totals


def _io_counters() -> tuple[int, int, int, int] | None:
    disk, net = psutil.disk_io_counters(), psutil.net_io_counters()
    if disk is None or net is None:
        return None
    return disk.read_bytes, disk.write_bytes, net.bytes_recv, net.bytes_sent


# --- the sampler ----------------------------------------------------------------------------------


class HardwareSampler:
    """Samples every `interval_s` on a daemon thread into a ring buffer (for span aggregates)
    and exports the samples as OTLP metrics every `export_interval_s` through `exporter`."""

    def __init__(
        self,
        exporter: MetricExporter | None = None,
        resource: Resource | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        export_interval_s: float = DEFAULT_EXPORT_INTERVAL_S,
        rapl_root: Path = RAPL_ROOT,
        nvml: Any | None = None,
        ring_seconds: float = 60.0,
    ) -> None:
        self.interval_s = interval_s
        self._exporter = exporter
        self._resource = resource or Resource.create({})
        self._export_interval_s = export_interval_s
        self._process = psutil.Process()
        self._gpus = open_nvml(nvml)
        self._rapl = open_rapl(rapl_root)
        self._io = _io_counters() is not None
        if not self._io:
            log.info("mlscope hardware: no disk/network IO counters on this system")
        self._zones = self._rapl.zones if self._rapl else ()
        self._package_zones = tuple(i for i, zone in enumerate(self._zones) if zone.package)
        self._lock = threading.Lock()  # orders samples: RAPL unwrapping and the ring need it
        self._ring: deque[Sample] = deque(maxlen=max(16, math.ceil(ring_seconds / interval_s) * 2))
        self._unexported: list[Sample] = []
        self._last_exported: Sample | None = None
        self._start_ns = time.time_ns()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def gpu_count(self) -> int:
        return self._gpus.count if self._gpus else 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mlscope-hardware", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stops the thread and exports the samples not yet exported, giving up after
        `timeout_s` (None: no limit; the last export then runs on, on a daemon thread, until
        the exporter's shutdown ends its retries). Idempotent."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def left() -> float | None:
            return None if deadline is None else max(deadline - time.monotonic(), 0.0)

        self._stop.set()
        if self._thread is not None:
            self._thread.join(left())
            self._thread = None
        last_export = threading.Thread(target=self._export, name="mlscope-hardware-stop", daemon=True)
        last_export.start()
        last_export.join(left())
        if self._exporter is not None:
            self._exporter.shutdown()
            self._exporter = None

    def sample_now(self, io: bool = False) -> Sample:
        """Reads every source now and keeps the sample. Span boundaries call it without IO
        counters (the costly /proc reads) so that aggregates need not wait for the thread."""
        with self._lock:
            busy, total = _cpu_counters()
            sample = Sample(
                time_ns=time.time_ns(),
                cpu_busy_s=busy,
                cpu_total_s=total,
                process_cpu_s=time.process_time(),  # ns-resolution clock; /proc/self/stat ticks at 10 ms
                rss=self._process.memory_info().rss,
                io=_io_counters() if io and self._io else None,
                gpus=self._gpus.read() if self._gpus else (),
                rapl_j=self._rapl.read() if self._rapl else (),
            )
            self._ring.append(sample)
            if self._exporter is not None:
                self._unexported.append(sample)
        return sample

    def span_attributes(self, start_ns: int, end_ns: int) -> dict[str, float | int]:
        """mlscope.hw.* attributes of a span that ran over [start_ns, end_ns]; takes the closing
        sample itself (the caller took one before the span started)."""
        self.sample_now()
        with self._lock:
            window = _window(self._ring, start_ns)
        return aggregate(window, start_ns, end_ns, self._package_zones).attributes()

    def _run(self) -> None:
        next_export = time.monotonic() + self._export_interval_s
        while not self._stop.wait(self.interval_s):
            try:
                self.sample_now(io=True)
                if time.monotonic() >= next_export:
                    next_export += self._export_interval_s
                    self._export()
            except Exception:  # a broken source must not end sampling silently nor crash the app
                log.exception("mlscope hardware: sampling failed")

    def _export(self) -> None:
        exporter = self._exporter  # stop() may drop it meanwhile
        with self._lock:
            batch, self._unexported = self._unexported, []
        if not batch or exporter is None:
            return
        metrics = metric_points(batch, self._last_exported, self._zones)
        self._last_exported = batch[-1]
        exporter.export(metrics_data(metrics, self._resource, self._start_ns))


def _window(ring: deque[Sample], start_ns: int) -> list[Sample]:
    """The newest samples back to the last one at or before `start_ns` (spans that just ended
    sit at the ring's end, so this reads a few samples, not the ring)."""
    window: list[Sample] = []
    for sample in reversed(ring):
        window.append(sample)
        if sample.time_ns <= start_ns:
            break
    window.reverse()
    return window
