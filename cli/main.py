"""The `mlscope` command line: parses argv, hands the work to the components, reports mistakes
in one line with exit code 2 (CONTRACT.md lists the commands). Serving, SQL, `run` and the demo
are here; the evaluation commands (evaluate, predictor, report) are in evaluate.py."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mlscope.auth import NO_AUTH, AuthPolicy, BadTokenFile, load_token_file
from mlscope.conventions import (
    DEFAULT_ENDPOINT, ENV_AUTH_FILE, ENV_BODY_TIMEOUT, ENV_HEADER_TIMEOUT, ENV_LOG_LINES_PER_MINUTE, ENV_MAX_CONNECTIONS,
    HTTP_PORT, LOOPBACK, OTLP_GRPC_PORT, OTLP_HTTP_PORT, UnknownLevel, collector_endpoint,
    LEVELS, otlp_headers, parse_level,
)
from mlscope.store import BadStoreUrl, Store, StoreError, StoreUnavailable, default_store_url, open_store

from . import evaluate, traces
from .common import CommandFailed, UsageError, render_rows

if TYPE_CHECKING:
    from aiohttp import web

    from mlscope.collector import Collector
    from mlscope.listener import ListenerLimits

    from .app_thread import AppThread

# --- serving ---------------------------------------------------------------------------------


async def _serve(
    store: Store,
    host: str,
    port: int | None,
    otlp_http_port: int | None,
    otlp_grpc_port: int | None,
    spool_dir: str | None,
    on_ready: Callable[[dict[str, int]], None] | None = None,
    no_dispatch: bool = False,
    auth: AuthPolicy = NO_AUTH,
    limits: ListenerLimits | None = None,
) -> None:
    """Runs the collector (when OTLP ports are given) and the query API + viewer (when `port` is
    given; with dispatch mounted beside them unless `no_dispatch`: one dispatch per store, and that
    process fills big traces' window caches in the background) until SIGINT/SIGTERM, printing each
    bound port as `name: port`, then calling `on_ready` (on this loop) once all are bound. `auth`
    guards every port, `limits` (default: ListenerLimits()) bounds slow and numerous clients on each
    and the log lines.

    The collector runs on this loop, the query API on a loop of its own in a thread of its own
    (AppThread), so that decoding and batching ingest never holds the API's answers (/healthz
    included); both use the one `store`. An error that ends either side ends both."""
    from mlscope.collector import NO_GRPC, Collector, CollectorConfig
    from mlscope.listener import ListenerLimits, rate_limit_logs

    from .app_thread import AppThread

    limits = limits or ListenerLimits()
    rate_limit_logs(limits.log_lines_per_minute)  # a flood of failing requests must not become a flood of log lines
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    bound: dict[str, int] = {}
    collector = None
    query = None
    try:
        if otlp_http_port is not None:
            collector = Collector(
                store,
                CollectorConfig(
                    host=host,
                    http_port=otlp_http_port,
                    grpc_port=NO_GRPC if otlp_grpc_port is None else otlp_grpc_port,
                    spool_dir=spool_dir,
                    listener=limits,
                ),
                auth,
            )
            await collector.start()
            bound["otlp-http"] = collector.http_port
            if otlp_grpc_port is not None:
                bound["otlp-grpc"] = collector.grpc_port
        if port is not None:
            query = AppThread("mlscope-query")
            bound["http"] = await query.start(
                lambda: _query_app(store, collector, no_dispatch, auth, limits), limits, host, port)
        for name, value in bound.items():
            print(f"{name}: {value}", flush=True)
        if on_ready:
            on_ready(bound)
        await _until_stopped(stop, query)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        # Both at once: one side stopping must not leave the other accepting (and waiting for) new
        # clients meanwhile, and their waits for running handlers overlap instead of adding up.
        stopped = await asyncio.gather(*([query.stop()] if query else []), *([collector.stop()] if collector else []),
                                       return_exceptions=True)
        for outcome in stopped:
            if isinstance(outcome, BaseException):
                raise outcome


def _query_app(store: Store, collector: Collector | None, no_dispatch: bool, auth: AuthPolicy,
               limits: ListenerLimits) -> web.Application:
    """The query API and viewer of `_serve`, built on the loop that serves them."""
    from mlscope.dispatch import Dispatcher, dispatch_mount
    from mlscope.query import SettlerPolicy, create_query_app

    mounts = [] if no_dispatch else [
        dispatch_mount(Dispatcher(store), otlp_http_port=collector.http_port if collector else None)]
    # /readyz reads the collector's status from the API's thread: a handful of counters, each read whole.
    return create_query_app(store, collector.status if collector else None, mounts=mounts, auth=auth,
                            body_timeout_s=limits.body_timeout_s,
                            fill_window_caches=None if no_dispatch else SettlerPolicy())


async def _until_stopped(stop: asyncio.Event, query: AppThread | None) -> None:
    """Returns when `stop` is set; raises when the query API's thread ended by an error first."""
    stopping = asyncio.ensure_future(stop.wait())
    waiting = [stopping] if query is None else [stopping, asyncio.ensure_future(query.wait())]
    try:
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for finished in done:
            finished.result()
    finally:
        for future in waiting:
            future.cancel()


def _level(text: str) -> str:
    """--level's value; argparse prints the reason, which lists the levels."""
    try:
        return parse_level(text)
    except UnknownLevel as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _open(args: argparse.Namespace) -> Store:
    return open_store(args.store or default_store_url())


def _spool_dir(args: argparse.Namespace) -> str | None:
    return args.spool_dir  # None: the collector's default, one spool per store


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def _auth_policy(args: argparse.Namespace) -> AuthPolicy:
    """The token file's policy (--auth, else MLSCOPE_AUTH_FILE); without one, NO_AUTH, which only
    loopback addresses get unless --insecure says otherwise."""
    path = args.auth or os.environ.get(ENV_AUTH_FILE)
    if not path:
        if not _is_loopback(args.host) and not args.insecure:
            raise UsageError(f"{args.command}: refusing to serve {args.host} without tokens: give --auth FILE "
                             f"(or {ENV_AUTH_FILE}), or --insecure to let anyone who reaches it read and write")
        return NO_AUTH
    try:
        policy, warning = load_token_file(path)
    except BadTokenFile as exc:
        raise UsageError(str(exc)) from exc
    if warning:
        print(f"mlscope: warning: {warning}", file=sys.stderr)
    return policy


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, not {text!r}")
        return value

    return parse


# --header-timeout & co: (ListenerLimits field, flag, environment variable, parser, help)
_LISTENER_OPTIONS: tuple[tuple[str, str, str, Callable[[str], float], str], ...] = (
    ("header_timeout_s", "--header-timeout", ENV_HEADER_TIMEOUT, _positive(float),
     "seconds a connection has to send a request head (and the longest idle keep-alive; default 10)"),
    ("body_timeout_s", "--body-timeout", ENV_BODY_TIMEOUT, _positive(float),
     "seconds a request's body has to arrive once its handler started (default 30)"),
    ("max_connections", "--max-connections", ENV_MAX_CONNECTIONS, _positive(int),
     "open connections per port; more are answered 503 (default: a quarter of the file-descriptor limit, 64-4096)"),
    ("log_lines_per_minute", "--log-lines-per-minute", ENV_LOG_LINES_PER_MINUTE, _positive(int),
     "log lines per minute from one place in the code; the rest are counted (default 20)"),
)


def _listener_limits(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> ListenerLimits:
    """The limits on slow and numerous clients: each flag, else its environment variable, else
    ListenerLimits' default; a bad variable is a UsageError naming it."""
    from mlscope.listener import ListenerLimits

    given: dict[str, float] = {}
    for field_name, _, variable, parse, _ in _LISTENER_OPTIONS:
        value = getattr(args, field_name)
        if value is None and env.get(variable):
            try:
                value = parse(env[variable])
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"{variable}: {exc}") from None
        if value is not None:
            given[field_name] = value
    return ListenerLimits(**given)


def cmd_serve(args: argparse.Namespace) -> int:
    auth = _auth_policy(args)
    limits = _listener_limits(args)
    store = _open(args)
    try:
        asyncio.run(
            _serve(store, args.host, args.port, args.otlp_http_port, args.otlp_grpc_port, _spool_dir(args),
                   no_dispatch=args.no_dispatch, auth=auth, limits=limits)
        )
    finally:
        store.close()
    return 0


def cmd_collector(args: argparse.Namespace) -> int:
    args.port = None
    return cmd_serve(args)


def cmd_query(args: argparse.Namespace) -> int:
    args.otlp_http_port = args.otlp_grpc_port = None
    args.spool_dir = None
    return cmd_serve(args)


# --- sql ---------------------------------------------------------------------------------------


def _open_for_sql(args: argparse.Namespace) -> Store:
    """The store `sql` reads; when it is an embedded store another process (`serve`) holds, the
    error says how to ask that process instead."""
    try:
        return _open(args)
    except StoreUnavailable as exc:
        if not (args.store or default_store_url()).startswith("embedded:"):
            raise
        raise StoreUnavailable(f"{exc}; to query it while serve runs, ask its API: "
                               f"mlscope sql --url http://{LOOPBACK}:{HTTP_PORT} \"QUERY\"") from exc


def cmd_sql(args: argparse.Namespace) -> int:
    """Runs a read-only query through the same guard and limits as /api/sql: against a running
    query service (--url; the way to reach an embedded store that `serve` owns) or a store."""
    if args.url:
        answer = _sql_over_http(args.url, args.query)
    else:
        from mlscope.query import BadRequest, TraceReader

        store = _open_for_sql(args)
        try:
            answer = TraceReader(store).run_sql(args.query).to_json()
        except BadRequest as exc:
            raise UsageError(str(exc)) from exc
        finally:
            store.close()
    sys.stdout.write(render_rows(answer, args.format))
    if answer.get("truncated"):
        print("mlscope: the result was truncated at the row limit", file=sys.stderr)
    return 0


def _sql_over_http(base_url: str, query: str) -> dict:
    from mlscope.client import ServiceClient, ServiceError

    try:
        return ServiceClient(base_url, timeout_s=120).post("/api/sql", {"query": query})
    except ServiceError as error:
        raise UsageError(str(error)) from error


# --- run ---------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """Runs COMMAND with mlscope's bootstrap in its Python processes (agents/bootstrap.py);
    exits with its exit code (128 + N when signal N ended it, as shells report it). With
    --leveled, once per level (agents/leveled.py), exiting with the first failing pass's code."""
    import tempfile

    from mlscope.agents.run_config import run_environment, undelivered_by_level, undelivered_summary

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("run: no command given, e.g. mlscope run --level model -- python app.py")
    if args.leveled and args.level:
        raise UsageError("run: --leveled and --level are mutually exclusive (--leveled runs model to hardware)")
    if shutil.which(command[0]) is None:  # said before anything else: one line
        raise UsageError(f"run: cannot start {command[0]!r}: no such command")
    endpoint = (args.endpoint or collector_endpoint(os.environ)).rstrip("/")
    unreachable = _collector_unreachable(endpoint)
    if unreachable:
        # One line, and the program runs as if mlscope were not there: nothing to deliver, no
        # exporter retries, no wait at exit, no trace id claimed.
        print(f"mlscope: no collector at {endpoint} ({unreachable}): running the command untraced", file=sys.stderr,
              flush=True)
        return _run_command(command, dict(os.environ))
    with tempfile.TemporaryDirectory(prefix="mlscope-run-") as scratch:
        if args.leveled:
            return _run_leveled(command, args, Path(scratch))
        trace_file = os.path.join(scratch, "trace-id")
        code = _run_command(command, run_environment(os.environ, args.level, args.endpoint, args.service, trace_file))
        if os.path.exists(trace_file):
            with open(trace_file, encoding="utf-8") as report:
                trace_id = report.read().strip()
            undelivered = undelivered_by_level(trace_file)
            if undelivered:  # not "stored": dropped under load, or the collector did not take all of it
                print(f"mlscope: trace {trace_id} is incomplete: {undelivered_summary(undelivered)} to the collector at "
                      f"{endpoint}", file=sys.stderr)
            else:
                print(f"mlscope: trace {trace_id}", file=sys.stderr)
    return code


def _collector_unreachable(endpoint: str, timeout_s: float = 2.0) -> str | None:
    """Why the collector at `endpoint` (an OTLP/HTTP base URL) does not take an (empty) OTLP
    export now, or None when it does (as `mlscope evaluate` checks it)."""
    import urllib.error
    import urllib.request

    # With the exporters' headers: a collector run with --auth answers 401 to a probe without its token.
    headers = {**otlp_headers(), "Content-Type": "application/x-protobuf"}
    request = urllib.request.Request(f"{endpoint}/v1/traces", data=b"", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return None
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        return str(getattr(error, "reason", error))


def _run_command(command: Sequence[str], env: dict[str, str]) -> int:
    """Runs `command` to its end; its exit code, 128 + N when signal N ended it."""
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as exc:
        raise UsageError(f"run: cannot start {command[0]!r}: {exc.strerror or exc}") from exc
    # ^C reaches the child from the terminal itself (same process group): waiting for it
    # to finish its own shutdown, not dying first, is what lets it flush its spans.
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        code = child.wait()
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
    return 128 - code if code < 0 else code


def _run_leveled(command: Sequence[str], args: argparse.Namespace, scratch: Path) -> int:
    """`run --leveled`: the passes' table and the trace on stderr (stdout is the program's)."""
    from mlscope.agents.leveled import pass_figures, render_table, run_leveled

    def say(line: str) -> None:
        print(f"mlscope: {line}", file=sys.stderr, flush=True)

    leveled = run_leveled(command, os.environ, args.endpoint, args.service, _run_command, scratch, say)
    sys.stderr.write(render_table(pass_figures(leveled.summaries)))
    say(f"trace {leveled.trace_id}")
    say(f"leveled run {leveled.run_id}")
    return leveled.exit_code


# --- demo ------------------------------------------------------------------------------------


def _free_or_any(host: str, port: int) -> int:
    """`port` when nothing listens on it, else 0 (any free port): the demo's collector takes the
    default OTLP port where it can, so `mlscope run` without --endpoint finds it."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return 0
    return port


def cmd_demo(args: argparse.Namespace) -> int:
    """Serves on the embedded store, runs the traced demo pipeline in a second process (a real
    OTLP client), waits until its trace is stored and prints the timeline's URL."""
    store = _open(args)
    ready: dict[str, int] = {}

    def run_pipeline(bound: dict[str, int]) -> None:
        ready.update(bound)
        asyncio.get_running_loop().create_task(
            _run_demo_pipeline(store, args.host, bound, args.level, args.exit)
        )

    try:
        asyncio.run(_serve(store, args.host, args.port, _free_or_any(args.host, OTLP_HTTP_PORT), None, _spool_dir(args),
                           on_ready=run_pipeline))
    finally:
        store.close()
    return 0 if ready else 1


async def _run_demo_pipeline(store: Store, host: str, bound: dict[str, int], level: str, exit_after: bool) -> None:
    from mlscope.store import sql_string

    endpoint = f"http://{host}:{bound['otlp-http']}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mlscope.cli.demo", "--endpoint", endpoint, "--level", level, stdout=subprocess.PIPE
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        print(f"mlscope: the demo pipeline failed with exit code {process.returncode}", file=sys.stderr)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    trace_id = output.decode().strip().splitlines()[-1]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(
            store.execute, f"SELECT count() FROM spans WHERE trace_id = {sql_string(trace_id)}"
        )
        if found.rows[0][0] > 0:
            break
        await asyncio.sleep(0.1)
    print(f"trace: {trace_id} ({found.rows[0][0]} spans)", flush=True)
    print(f"timeline: http://{host}:{bound['http']}/traces/{trace_id}", flush=True)
    if exit_after:
        os.kill(os.getpid(), signal.SIGTERM)
    else:
        print(f"trace your program: mlscope run --endpoint {endpoint} -- python app.py", flush=True)
        print("serving; press Ctrl-C to stop", flush=True)


# --- argument parsing --------------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", help="store URL (default: MLSCOPE_STORE, else embedded under MLSCOPE_DATA)")


def _add_auth(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--auth", metavar="FILE",
                        help=f"token file (YAML: tokens: [{{token, scopes}}]; default: {ENV_AUTH_FILE}); "
                             "without one only loopback addresses are served")
    parser.add_argument("--insecure", action="store_true",
                        help="serve a non-loopback --host without a token file (anyone who reaches it can read and write)")


def _add_listener_limits(parser: argparse.ArgumentParser) -> None:
    for field_name, flag_name, variable, parse, help_text in _LISTENER_OPTIONS:
        parser.add_argument(flag_name, dest=field_name, type=parse, metavar="SECONDS" if field_name.endswith("_s") else "N",
                            help=f"{help_text}; env {variable}")


def _add_no_dispatch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-dispatch", action="store_true",
                        help="serve no predictors and jobs (/api/predictors, /api/jobs) and fill no window caches "
                             "in the background: one process per store may")


def _add_collector(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--otlp-http-port", type=_port, default=OTLP_HTTP_PORT)
    parser.add_argument("--otlp-grpc-port", type=_port, default=OTLP_GRPC_PORT)
    parser.add_argument("--spool-dir", help="write-ahead spool for when the store is down (default: <data dir>/spool/<hash of the store URL>; one collector at a time)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlscope", description="Evaluate and introspect ML pipelines end to end.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="collector, query API and viewer in one process")
    _add_store(serve)
    serve.add_argument("--host", default=LOOPBACK)
    _add_auth(serve)
    _add_listener_limits(serve)
    _add_collector(serve)
    serve.add_argument("--port", type=_port, default=HTTP_PORT, help="query API and viewer port")
    _add_no_dispatch(serve)
    serve.set_defaults(handler=cmd_serve)

    collector = commands.add_parser("collector", help="the OTLP collector alone")
    _add_store(collector)
    collector.add_argument("--host", default=LOOPBACK)
    _add_auth(collector)
    _add_listener_limits(collector)
    _add_collector(collector)
    collector.set_defaults(handler=cmd_collector, no_dispatch=True)

    query = commands.add_parser("query", help="the query API and viewer alone")
    _add_store(query)
    query.add_argument("--host", default=LOOPBACK)
    _add_auth(query)
    _add_listener_limits(query)
    query.add_argument("--port", type=_port, default=HTTP_PORT)
    _add_no_dispatch(query)
    query.set_defaults(handler=cmd_query)

    sql = commands.add_parser("sql", help="run a read-only SQL query over the traces")
    _add_store(sql)
    sql.add_argument("--url", help="a running query service (http://host:port) instead of opening the store")
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sql.add_argument("query", help='e.g. "SELECT name, count() FROM spans GROUP BY name"')
    sql.set_defaults(handler=cmd_sql)

    run = commands.add_parser("run", help="trace an unmodified program: mlscope run [options] -- COMMAND [ARGS...]")
    run.add_argument("--level", type=_level, help=f"how deep to trace: {', '.join(LEVELS)} (default: MLSCOPE_LEVEL, else model)")
    run.add_argument("--endpoint", help=f"collector OTLP/HTTP URL (default: OTEL_EXPORTER_OTLP_ENDPOINT, else {DEFAULT_ENDPOINT})")
    run.add_argument("--service", help="service name (default: OTEL_SERVICE_NAME, else the program's name)")
    run.add_argument("--leveled", action="store_true",
                     help="run COMMAND once per level (model, layer, library, hardware) in one trace; "
                          "report each pass's model latency and overhead")
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    run.set_defaults(handler=cmd_run)

    evaluate.add_commands(commands)
    traces.add_commands(commands)

    demo = commands.add_parser("demo", help="serve, trace a small real pipeline, print its timeline URL")
    _add_store(demo)
    demo.add_argument("--host", default=LOOPBACK)
    demo.add_argument("--port", type=_port, default=HTTP_PORT)
    demo.add_argument("--spool-dir", help=argparse.SUPPRESS)
    demo.add_argument("--level", type=_level, default="library", help=f"how deep to trace: {', '.join(LEVELS)} (default: library)")
    demo.add_argument("--exit", action="store_true", help="stop once the trace is stored instead of serving")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The ClickHouse driver logs each failed connection with a traceback; the store's own error
    # (one line, below) says the same.
    logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
    try:
        return args.handler(args)
    except (UsageError, BadStoreUrl, UnknownLevel) as exc:
        print(f"mlscope: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"mlscope: store error: {exc}", file=sys.stderr)
        return 1
    except CommandFailed as exc:
        print(f"mlscope: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. a port already in use
        print(f"mlscope: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
