"""`mlscope analyze`, `mlscope diff` and `mlscope export`: a trace's analysis and two traces
compared, read from a running query service (GET /api/traces/{id}/analysis, GET /api/diff) and
printed as tables, one per section, or as the service's JSON; a trace as a file for other tools
(GET /api/traces/{id}/export, whose `format` the service checks)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

from mlscope.conventions import server_url

from .common import UsageError, render_rows

_TRACE_ID = re.compile(r"[0-9a-fA-F]{32}")
_TRACE_OR_EVALUATION_ID = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{16}")

# (section key, title, columns shown) in the order printed.
ANALYSIS_SECTIONS = (
    ("by_level", "time by level", ("level", "spans", "total_ns", "self_ns")),
    ("critical_path", "critical path (each step: the child that ends last)",
     ("depth", "name", "level", "duration_ns", "share")),
    ("top_self", "top spans by self time", ("name", "level", "self_ns", "duration_ns", "span_id")),
    ("op_types", "op types by self time", ("name", "calls", "self_ns", "total_ns", "mean_ns")),
    ("layers", "layers by module path", ("path", "type", "calls", "total_ns", "mean_ns", "share_of_model",
                                         "input_shapes", "output_shapes")),
    ("idle", "idle time (not covered by children)", ("name", "level", "idle_ns", "share", "span_id")),
)
DIFF_SECTIONS = (
    ("layers", "layers (matched by module path)", ("path", "a_ns", "b_ns", "delta_ns", "ratio", "a_calls", "b_calls")),
    ("a_only", "layers only in A", ("path", "type", "calls", "total_ns")),
    ("b_only", "layers only in B", ("path", "type", "calls", "total_ns")),
    ("ops", "op types (self time)", ("name", "a_ns", "b_ns", "delta_ns", "ratio", "a_calls", "b_calls")),
    ("levels", "levels", ("level", "a_ns", "b_ns", "delta_ns", "ratio", "a_calls", "b_calls")),
)


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return value


def render_sections(body: dict[str, Any], sections: Sequence[tuple[str, str, Sequence[str]]]) -> str:
    parts = []
    for key, title, columns in sections:
        rows = body.get(key) or []
        if not rows:
            continue
        answer = {"columns": [{"name": name} for name in columns],
                  "rows": [[_cell(row.get(name)) for name in columns] for row in rows]}
        parts.append(f"{title}\n{render_rows(answer, 'table')}")
    return "\n".join(parts)


def _hardware(body: dict[str, Any]) -> str:
    lines = [f"  {row['name']} {row['span_id']}: " + ", ".join(
        f"{metric['name']} {'mean' if metric['mean'] is not None else '+'}"
        f"{_cell(metric['mean'] if metric['mean'] is not None else metric['increase'])}{metric['unit'] and ' ' + metric['unit']}"
        for metric in row["metrics"]) for row in body.get("hardware") or []]
    return "hardware per model span\n" + "\n".join(lines) + "\n" if lines else ""


def _get(url: str, path: str, params: dict[str, str] | None = None, *, raw: bool = False) -> Any:
    """The service's JSON answer, or with `raw` its body as bytes."""
    from mlscope.client import ServiceClient, ServiceError

    client = ServiceClient(url, timeout_s=120)
    try:
        return client.get_bytes(path, params) if raw else client.get(path, params)
    except ServiceError as error:
        raise UsageError(str(error)) from error


def _trace_id(value: str) -> str:
    if not _TRACE_ID.fullmatch(value):
        raise UsageError(f"TRACE_ID must be 32 hex digits, not {value[:64]!r}")
    return value.lower()


def cmd_analyze(args: argparse.Namespace) -> int:
    body = _get(args.url, f"/api/traces/{_trace_id(args.trace_id)}/analysis")
    if args.format == "json":
        sys.stdout.write(json.dumps(body) + "\n")
    else:
        sys.stdout.write(render_sections(body, ANALYSIS_SECTIONS) + _hardware(body))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    for name, value in (("A", args.a), ("B", args.b)):
        if not _TRACE_OR_EVALUATION_ID.fullmatch(value):
            raise UsageError(f"{name} must be a trace id (32 hex digits) or an evaluation id (16), not {value[:64]!r}")
    body = _get(args.url, "/api/diff", {"a": args.a, "b": args.b})
    if args.format == "json":
        sys.stdout.write(json.dumps(body) + "\n")
    else:
        sys.stdout.write(f"A = {body['a']}\nB = {body['b']}\n\n" + render_sections(body, DIFF_SECTIONS))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    data = _get(args.url, f"/api/traces/{_trace_id(args.trace_id)}/export", {"format": args.format}, raw=True)
    if args.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        try:
            with open(args.output, "wb") as file:
                file.write(data)
        except OSError as error:
            raise UsageError(f"cannot write {args.output}: {error.strerror or error}") from error
        sys.stderr.write(f"mlscope: wrote {len(data)} bytes to {args.output}\n")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    analyze = commands.add_parser("analyze", help="where a trace's time goes: levels, critical path, ops, layers")
    analyze.add_argument("trace_id", metavar="TRACE_ID")
    analyze.add_argument("--url", default=server_url(), help="the query service (default: MLSCOPE_SERVER)")
    analyze.add_argument("--format", choices=("table", "json"), default="table")
    analyze.set_defaults(handler=cmd_analyze)

    diff = commands.add_parser("diff", help="two traces (or evaluations) compared: layers by module path, ops, levels")
    diff.add_argument("a", metavar="A", help="trace id, or evaluation id (the span_id of its evaluations row)")
    diff.add_argument("b", metavar="B")
    diff.add_argument("--url", default=server_url(), help="the query service (default: MLSCOPE_SERVER)")
    diff.add_argument("--format", choices=("table", "json"), default="table")
    diff.set_defaults(handler=cmd_diff)

    export = commands.add_parser("export", help="a trace as a file for Perfetto or Jaeger UI")
    export.add_argument("trace_id", metavar="TRACE_ID")
    export.add_argument("--format", default="perfetto-proto",
                        help="perfetto-proto (a .pftrace: Perfetto's protobuf), perfetto (trace-event JSON) "
                             "or jaeger (Jaeger UI JSON); default perfetto-proto")
    export.add_argument("-o", "--output", default="-", help="the file to write (default: standard output)")
    export.add_argument("--url", default=server_url(), help="the query service (default: MLSCOPE_SERVER)")
    export.set_defaults(handler=cmd_export)
