"""Names every component shares: levels, span and resource attributes, metric names, environment
variables and their precedence, default ports and directories.

In the spirit of OpenTelemetry's semantic-convention constants: a name is written once, here,
and every component (agents, collector, store, query, dispatch, evaluation, CLI, viewer through
`GET /api/conventions`) refers to it. docs/conventions.md documents each one, and
tests/test_conventions.py checks that the two agree. Values only: no I/O but reading the
environment mapping a caller passes in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote

# --- levels (CONTRACT.md "Levels") -----------------------------------------------------------

LEVELS: tuple[str, ...] = ("application", "model", "layer", "library", "hardware")
"""Ordered from the shallowest; tracing at a level captures every level before it."""
DEFAULT_LEVEL = "application"
"""The level of a span that carries none (one from any other OTel SDK)."""
DEFAULT_AGENT_LEVEL = "model"
"""What `mlscope run` and `start_agent` trace when no level is given."""


class UnknownLevel(ValueError):
    """A level name that is not one of LEVELS."""


def parse_level(text: str) -> str:
    """The canonical level name for `text` (case and blanks ignored); raises UnknownLevel
    naming the choices."""
    level = text.strip().lower()
    if level not in LEVELS:
        raise UnknownLevel(f"unknown level {text!r}: expected one of {', '.join(LEVELS)}")
    return level


def parse_levels(text: str | None) -> frozenset[str] | None:
    """A comma-separated list of levels (`?levels=a,b`) -> that set; None (every level) when
    absent or empty. Raises UnknownLevel for a name that is not a level."""
    names = [name for name in (text or "").split(",") if name.strip()]
    return frozenset(parse_level(name) for name in names) if names else None


def stored_level(value: str | None) -> str:
    """The level a stored span counts as: its `mlscope.level` when that is a level, else
    DEFAULT_LEVEL (a foreign SDK's span, or a value no agent writes)."""
    return value if value in LEVELS else DEFAULT_LEVEL


def level_rank(level: str) -> int:
    """Depth of a level; an unknown level ranks as DEFAULT_LEVEL."""
    return LEVELS.index(stored_level(level))


def levels_up_to(level: str) -> tuple[str, ...]:
    """Every level captured when tracing at `level` (application .. level inclusive)."""
    return LEVELS[: LEVELS.index(parse_level(level)) + 1]


# --- span attributes (docs/conventions.md) ---------------------------------------------------

LEVEL = "mlscope.level"

# Model spans.
MODEL_NAME = "mlscope.model.name"
MODEL_VERSION = "mlscope.model.version"
FRAMEWORK_NAME = "mlscope.framework.name"
FRAMEWORK_VERSION = "mlscope.framework.version"
EXECUTION_PROVIDER = "mlscope.execution_provider"
BATCH_SIZE = "mlscope.batch_size"
LIBRARY_OPS_INSIDE_LAYERS = "mlscope.library.ops_inside_layers"

# Layer spans.
LAYER_PATH = "mlscope.layer.path"
LAYER_TYPE = "mlscope.layer.type"
LAYER_INPUT_SHAPES = "mlscope.layer.input_shapes"
LAYER_OUTPUT_SHAPES = "mlscope.layer.output_shapes"

# Training steps (model level): which part of a training step a span times.
PHASE = "mlscope.phase"
PHASES: tuple[str, ...] = ("forward", "loss", "backward", "optimizer", "data")

# Library spans.
LIBRARY_PROVIDER = "mlscope.library.provider"
LIBRARY_DEVICE = "mlscope.library.device"

# Per-span hardware aggregates, on model spans at hardware level.
HW_SAMPLES = "mlscope.hw.samples"
HW_CPU_UTILIZATION = "mlscope.hw.cpu.utilization"
HW_PROCESS_CPU_UTILIZATION = "mlscope.hw.process.cpu.utilization"
HW_GPU_UTILIZATION = "mlscope.hw.gpu.utilization"
HW_ENERGY = "mlscope.hw.energy"
HW_GPU_ENERGY = "mlscope.hw.gpu.energy"
HW_PEAK_RSS = "mlscope.hw.memory.peak_rss"

# Application spans.
BATCH_INDEX = "mlscope.batch.index"
"""The demo pipeline: which batch a `batch` span processes."""

# Leveled runs (`mlscope run --leveled`): the root span and its per-pass figures.
LEVELED_SPAN = "mlscope.leveled"
LEVELED_RUN_ID = "mlscope.leveled.run_id"
LEVELED_PASSES = "mlscope.leveled.passes"
LEVELED_PASS = "mlscope.leveled.pass"
"""On a pass's process spans: the level of the pass they belong to."""
LEVELED_PASS_PREFIX = "mlscope.leveled."
"""`mlscope.leveled.<pass>.<figure>`, figures as in LEVELED_FIGURES."""
LEVELED_FIGURES: tuple[str, ...] = ("model_spans", "model_p50_ns", "overhead", "level_spans", "level_total_ns", "writer")


def leveled_figure(level_pass: str, figure: str) -> str:
    """The root span's attribute for one pass's figure: `mlscope.leveled.layer.overhead`."""
    return f"{LEVELED_PASS_PREFIX}{level_pass}.{figure}"


# Evaluations: an `mlscope.evaluation` span carries one configuration's results as
# `mlscope.evaluation.<field>` (evaluation/results.py names the fields; the schema's
# `evaluations` view reads them back).
EVALUATION_SPAN = "mlscope.evaluation"
EVALUATION_PREFIX = "mlscope.evaluation."
EVALUATE_SPAN = "mlscope.evaluate"
"""The root span of one `mlscope evaluate` run or predictor job."""
EVALUATION_QUERIES = "mlscope.queries"
EVALUATION_SAMPLES = "mlscope.samples"
PREDICTOR_NAME = "mlscope.predictor.name"
PREDICTOR_ID = "mlscope.predictor.id"

# Instrumentation scope of every span an agent writes.
AGENT_SCOPE = "mlscope.agents"

# --- resource attributes ---------------------------------------------------------------------

AGENT_WRITER = "mlscope.agent.writer"
"""How the agent writes its deep (layer, library) spans: one of AGENT_WRITERS."""
AGENT_WRITERS: tuple[str, ...] = ("inline", "encoded", "native")
HOST_CPU_MODEL = "mlscope.host.cpu.model"
HOST_CPU_LOGICAL_CORES = "mlscope.host.cpu.logical_cores"
HOST_MEMORY_BYTES = "mlscope.host.memory.bytes"
HOST_GPU_COUNT = "mlscope.host.gpu.count"
HOST_GPU_NAME = "mlscope.host.gpu.name"
TORCH_VERSION = "mlscope.torch.version"
ONNXRUNTIME_VERSION = "mlscope.onnxruntime.version"

# OpenTelemetry semantic-convention names mlscope writes or reads itself.
SERVICE_NAME = "service.name"
HOST_NAME = "host.name"
HOST_ARCH = "host.arch"
OS_DESCRIPTION = "os.description"
PROCESS_PID = "process.pid"
PROCESS_EXECUTABLE_PATH = "process.executable.path"
PROCESS_COMMAND_LINE = "process.command_line"
PROCESS_EXIT_CODE = "process.exit.code"
PROCESS_SIGNAL = "mlscope.process.signal"
"""The signal that ended a traced process (`SIGTERM`, `SIGINT`): OpenTelemetry has no name for it."""
PROCESS_ORPHANED = "mlscope.process.orphaned"
"""On a process span: the process outlived the one that started it (its parent pid changed)."""
THREAD_ID = "thread.id"
THREAD_NAME = "thread.name"
"""On model spans: the thread that called the model (its `threading.get_ident()` and name)."""
DROPPED_MODEL = "mlscope.dropped.model"
DROPPED_LAYER = "mlscope.dropped.layer"
DROPPED_LIBRARY = "mlscope.dropped.library"
DROPPED_REFUSED = "mlscope.dropped.refused"
REFUSED = "refused"
"""Spans the collector refused in a request it otherwise took (partial_success), when its answer
does not say of which level: counted under this key beside the levels."""
DROPPED_ATTRIBUTES: Mapping[str, str] = {
    "model": DROPPED_MODEL, "layer": DROPPED_LAYER, "library": DROPPED_LIBRARY, REFUSED: DROPPED_REFUSED}
"""Per level: spans an agent did not deliver (dropped under load or refused by the collector);
on the process span and on `mlscope.evaluation` spans, when any."""

# --- metric names (hardware level) -----------------------------------------------------------

SYSTEM_CPU_UTILIZATION = "system.cpu.utilization"
PROCESS_CPU_UTILIZATION = "process.cpu.utilization"
PROCESS_MEMORY_USAGE = "process.memory.usage"
SYSTEM_DISK_IO = "system.disk.io"
SYSTEM_NETWORK_IO = "system.network.io"
HW_GPU_UTILIZATION_METRIC = "hw.gpu.utilization"
HW_GPU_MEMORY_USAGE_METRIC = "hw.gpu.memory.usage"
HW_POWER_METRIC = "hw.power"
HW_TEMPERATURE_METRIC = "hw.temperature"
HW_ENERGY_METRIC = "hw.energy"
GPU_SM_CLOCK_METRIC = "mlscope.gpu.clock.sm"

# --- environment variables -------------------------------------------------------------------

ENV_LEVEL = "MLSCOPE_LEVEL"
ENV_ENDPOINT = "MLSCOPE_ENDPOINT"
ENV_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
ENV_SERVICE = "MLSCOPE_SERVICE"
ENV_OTEL_SERVICE_NAME = "OTEL_SERVICE_NAME"
ENV_STORE = "MLSCOPE_STORE"
ENV_DATA = "MLSCOPE_DATA"
ENV_SERVER = "MLSCOPE_SERVER"
ENV_NATIVE_DIR = "MLSCOPE_NATIVE_DIR"
ENV_TRACE_FILE = "MLSCOPE_TRACE_FILE"
"""Set by `mlscope run`: where the first bootstrapped process writes its trace id."""
ENV_LEVELED_REPORT = "MLSCOPE_LEVELED_REPORT"
"""Set by `mlscope run --leveled`: where each process of a pass appends its span tally."""
ENV_AUTH_FILE = "MLSCOPE_AUTH_FILE"
"""`serve`, `collector`, `query`: the token file (`--auth FILE`); without one they serve loopback only."""
ENV_HEADER_TIMEOUT = "MLSCOPE_HEADER_TIMEOUT_S"
ENV_BODY_TIMEOUT = "MLSCOPE_BODY_TIMEOUT_S"
ENV_MAX_CONNECTIONS = "MLSCOPE_MAX_CONNECTIONS"
ENV_LOG_LINES_PER_MINUTE = "MLSCOPE_LOG_LINES_PER_MINUTE"
"""`serve`, `collector`, `query`: the limits on slow and numerous clients and on log lines
(mlscope.listener); the flags `--header-timeout`, `--body-timeout`, `--max-connections`,
`--log-lines-per-minute` win."""
ENV_TOKEN = "MLSCOPE_TOKEN"
"""The bearer token mlscope's HTTP API clients send (`sql --url`, `report`, `evaluate --remote`, `predictor`)."""
ENV_OTLP_HEADERS = "OTEL_EXPORTER_OTLP_HEADERS"
ENV_OTLP_TRACES_HEADERS = "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
"""Headers every OTLP exporter sends (`authorization=Bearer%20<token>`); the traces one wins."""

# --- ports and directories -------------------------------------------------------------------

OTLP_HTTP_PORT = 4318
OTLP_GRPC_PORT = 4317
HTTP_PORT = 8765
"""The query API and viewer (`mlscope serve`, `mlscope query`)."""
LOOPBACK = "127.0.0.1"
DEFAULT_ENDPOINT = f"http://{LOOPBACK}:{OTLP_HTTP_PORT}"
DEFAULT_SERVER = f"http://{LOOPBACK}:{HTTP_PORT}"
STORE_DIR = "store"
SPOOL_DIR = "spool"
"""Under the data directory: the embedded store's data, the collector's spool."""


def collector_endpoint(env: Mapping[str, str] = os.environ) -> str:
    """The collector's OTLP/HTTP base URL: MLSCOPE_ENDPOINT (what `mlscope run --endpoint`
    sets), else OTEL_EXPORTER_OTLP_ENDPOINT (any OTel SDK's), else the local default."""
    return (env.get(ENV_ENDPOINT) or env.get(ENV_OTLP_ENDPOINT) or DEFAULT_ENDPOINT).rstrip("/")


def otlp_headers(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The headers OTLP exporters send, as the OTel SDK reads them: OTEL_EXPORTER_OTLP_TRACES_HEADERS,
    else OTEL_EXPORTER_OTLP_HEADERS, `key=value` pairs separated by commas, values URL-encoded.
    For mlscope's own probes of the collector, which must present the same token as the SDK."""
    text = env.get(ENV_OTLP_TRACES_HEADERS) or env.get(ENV_OTLP_HEADERS) or ""
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {unquote(name).strip().lower(): unquote(value).strip() for name, value in pairs if name.strip()}


def service_token(env: Mapping[str, str] = os.environ) -> str | None:
    """MLSCOPE_TOKEN: the bearer token for the query service's HTTP API, None when unset."""
    return env.get(ENV_TOKEN) or None


def agent_level(env: Mapping[str, str] = os.environ) -> str:
    """MLSCOPE_LEVEL, else DEFAULT_AGENT_LEVEL; raises UnknownLevel for a bad value."""
    return parse_level(env.get(ENV_LEVEL) or DEFAULT_AGENT_LEVEL)


def service_name(default: str, env: Mapping[str, str] = os.environ) -> str:
    """MLSCOPE_SERVICE (`mlscope run --service`), else OTEL_SERVICE_NAME, else `default`."""
    return env.get(ENV_SERVICE) or env.get(ENV_OTEL_SERVICE_NAME) or default


def server_url(env: Mapping[str, str] = os.environ) -> str:
    """The query service's base URL for the client commands: MLSCOPE_SERVER, else the local default."""
    return (env.get(ENV_SERVER) or DEFAULT_SERVER).rstrip("/")


def data_dir(env: Mapping[str, str] = os.environ) -> str:
    """MLSCOPE_DATA, else the XDG data directory (~/.local/share/mlscope)."""
    if env.get(ENV_DATA):
        return os.path.abspath(env[ENV_DATA])
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return os.path.join(base, "mlscope")
