"""`mlscope evaluate`, `mlscope predictor` and `mlscope report`: the evaluation commands. The
evaluation modules are imported inside the handlers and argument types (~0.5 s), so no other
command pays for them."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mlscope.conventions import (
    DEFAULT_ENDPOINT, DEFAULT_SERVER, ENV_OTLP_ENDPOINT, ENV_SERVER, UnknownLevel, parse_level, server_url,
)

from .common import CommandFailed, UsageError, render_rows

if TYPE_CHECKING:
    from mlscope.evaluation import Plan
    from mlscope.manifests import Manifest


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluates manifests here, or with --remote on the predictors that match --where; results
    go to the collector (never the store). Prints a table and, with --figure, writes the latency
    figure. Bad input fails before anything is sent or queued."""
    from mlscope.evaluation import PredictorError
    from mlscope.evaluation.jobs import JobError
    from mlscope.manifests import AssetError, ManifestError

    try:
        return _evaluate_remotely(args) if args.remote else _evaluate_here(args)
    except (ManifestError, PredictorError, AssetError, JobError) as exc:
        raise UsageError(str(exc)) from exc


def _plan(args: argparse.Namespace, manifests: tuple[Manifest, ...]) -> Plan:
    from mlscope.evaluation import Plan

    return Plan(
        manifests=manifests,
        frameworks=tuple(args.framework or dict.fromkeys(m.framework.name for m in manifests)),
        batch_sizes=tuple(args.batch_size), scenarios=tuple(args.scenario), levels=tuple(args.level),
        repetitions=args.repetitions, warmup=args.warmup, accuracy=args.accuracy,
        execution_provider=args.execution_provider, server_qps=args.server_qps, server_bound_ms=args.server_bound_ms,
    )


def _evaluate_here(args: argparse.Namespace) -> int:
    from mlscope.evaluation import DeliveryFailed, EvaluationAgent, check_plan, evaluate, this_system
    from mlscope.manifests import AssetCache, load_manifest

    plan = _plan(args, tuple(load_manifest(path) for path in args.manifests))
    check_plan(plan)
    system = this_system()
    sender = EvaluationAgent(args.endpoint, system)
    on_terminal = sys.stderr.isatty()
    try:
        sender.check_collector()
        try:
            # What was traced goes to the collector, even after a failure.
            with sender.closing():
                results = evaluate(plan, sender.agent_at, AssetCache(), system,
                                   progress=_progress_bar if on_terminal else _progress_lines)
        finally:
            if on_terminal:
                print(file=sys.stderr)  # end the progress bar's line
    except DeliveryFailed as exc:
        print(f"mlscope: {exc}", file=sys.stderr)
        return 1
    rows = [vars(result) for result in results]
    print(f"mlscope: {len(rows)} results sent to {sender.endpoint}; run {results[0].run_id}", file=sys.stderr)
    _show_evaluations(rows, args.figure)
    return 0


def _progress_lines(index: int, total: int, what: str) -> None:
    print(f"mlscope: [{index + 1}/{total}] {what}", file=sys.stderr, flush=True)


def _progress_bar(index: int, total: int, what: str, width: int = 24) -> None:
    """One line redrawn in place on a terminal: [#####-------] 3/8 what is running now."""
    filled = width * index // total
    print(f"\r\033[K[{'#' * filled}{'-' * (width - filled)}] {index + 1}/{total} {what}", end="", file=sys.stderr, flush=True)


def _evaluate_remotely(args: argparse.Namespace) -> int:
    """Queues the plan for every live predictor matching --where, then (unless --no-wait)
    follows the jobs and prints the results they sent. Exit 1 if a job failed or was lost."""
    from mlscope.evaluation import check_plan_frameworks
    from mlscope.evaluation.jobs import JobRequest, ManifestText, manifest_of, parse_where
    from mlscope.evaluation.remote import submit, wait
    from mlscope.manifests import read_manifest_text
    from mlscope.client import ServiceClient, ServiceError

    # Sent as written: each predictor substitutes the ${VAR}s it shares, none of ours is stored.
    texts = tuple(ManifestText(*read_manifest_text(path)) for path in args.manifests)
    plan = _plan(args, tuple(manifest_of(text) for text in texts))
    check_plan_frameworks(plan)  # the providers are checked where the jobs run
    client = ServiceClient(args.server)
    try:
        queued = submit(client, JobRequest(texts, plan, parse_where(args.where)))
        for job in queued["jobs"]:
            print(f"mlscope: job {job['job_id']} queued for {job['predictor']} ({job['system_name']})", file=sys.stderr)
        print(f"mlscope: run {queued['run_id']}", file=sys.stderr, flush=True)
        if args.no_wait:
            return 0
        jobs = wait(client, queued["run_id"], lambda job: print(
            f"mlscope: job {job['job_id']} {job['state']}{': ' + job['message'] if job['message'] else ''}",
            file=sys.stderr, flush=True))
        rows = client.get("/api/evaluations", {"run_id": queued["run_id"]})["evaluations"]
    except ServiceError as exc:
        raise (UsageError if exc.status in (400, 409) else CommandFailed)(str(exc)) from exc
    if rows:
        _show_evaluations(rows, args.figure)
    unfinished = [job for job in jobs if job["state"] != "done"]
    return 1 if unfinished else 0


def _show_evaluations(rows: list[dict], figure: str | None) -> None:
    from mlscope.evaluation.report import footnotes, table, write_figure

    sys.stdout.write(render_rows(table(rows), "table") + footnotes(rows))
    if figure:
        write_figure(rows, Path(figure))
        print(f"mlscope: figure written to {figure}", file=sys.stderr)


def cmd_predictor(args: argparse.Namespace) -> int:
    """Registers with the dispatch beside the query service, then runs the jobs queued for this predictor until
    SIGINT/SIGTERM; each job's results go to the collector."""
    import logging
    import threading

    from mlscope.evaluation import DeliveryFailed
    from mlscope.evaluation.jobs import JobError, parse_where
    from mlscope.evaluation.remote import PredictorProcess, Stopped, stop_on_signals, this_predictor
    from mlscope.manifests import AssetCache, ModelSources
    from mlscope.client import ServiceClient, ServiceError

    try:
        labels = parse_where(args.label, "label")
    except JobError as exc:
        raise UsageError(str(exc)) from exc
    logging.basicConfig(level=logging.INFO, format="mlscope predictor: %(message)s")
    identity = this_predictor(args.name, labels, args.allow_builder)
    sources = ModelSources.remote(args.allow_builder, paths=args.allow_path, private_urls=args.allow_private_urls)
    shared_env = {name: os.environ[name] for name in args.allow_env if name in os.environ}
    process = PredictorProcess(ServiceClient(args.server), identity, args.endpoint, AssetCache(sources=sources),
                               args.poll, shared_env)
    try:
        endpoint = process.register()
    except ServiceError as exc:
        raise CommandFailed(f"cannot register with {args.server}: {exc}") from exc
    except DeliveryFailed as exc:
        raise CommandFailed(str(exc)) from exc
    print(f"mlscope: predictor {identity.name} ({identity.predictor_id}) on {identity.system.name}, runs "
          f"{', '.join(identity.execution_providers)}; results to {endpoint}", file=sys.stderr, flush=True)
    stop_on_signals()  # the running job is failed, then the predictor exits
    try:
        process.serve(threading.Event(), on_job=lambda line: print(f"mlscope: {line}", file=sys.stderr, flush=True))
    except Stopped as stopped:
        print(f"mlscope: predictor {identity.name} stopped ({stopped})", file=sys.stderr)
    except ServiceError as exc:
        raise CommandFailed(f"predictor {identity.name}: {args.server} refused its heartbeat: {exc}") from exc
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Reads a model's evaluations from a query service; prints them and writes the figures."""
    from mlscope.evaluation.report import footnotes, table, write_figure
    from mlscope.client import ServiceClient, ServiceError

    try:
        rows = ServiceClient(args.url).get("/api/evaluations", {"model": args.model})["evaluations"]
    except ServiceError as error:
        raise UsageError(f"cannot read evaluations from {args.url}: {error}") from error
    if not rows:
        raise UsageError(f"no evaluations of model {args.model!r} at {args.url}")
    systems = sorted({str(row.get(key)) for row in rows for key in ("system_name", "system") if row.get(key)})
    if args.baseline and args.baseline not in systems:
        raise UsageError(f"no evaluations of model {args.model!r} on system {args.baseline!r}; "
                         f"its systems: {', '.join(systems)}")
    sys.stdout.write(render_rows(table(rows), "table") + footnotes(rows))
    if args.out:
        try:
            write_figure(rows, Path(args.out), args.baseline)
        except ValueError as exc:  # a baseline with no results
            raise UsageError(str(exc)) from exc
        print(f"mlscope: figure written to {args.out}", file=sys.stderr)
    return 0


def _names(load_choices: Callable[[], Sequence[str]]) -> Callable[[str], list[str]]:
    """An argparse type for a comma-separated list drawn from `load_choices()`, called only when
    the option is given: the evaluation modules cost ~0.5 s to import, which no other command pays."""

    def parse(text: str) -> list[str]:
        choices = load_choices()
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of {', '.join(choices)}")
        return names

    return parse


def _frameworks() -> Sequence[str]:
    from mlscope.evaluation import PREDICTORS

    return tuple(PREDICTORS)


def _scenarios() -> Sequence[str]:
    from mlscope.evaluation import SCENARIOS

    return SCENARIOS


def _manifest_argument(text: str) -> str:
    """A manifest file that exists (or is named as one), or a built-in model's name; else the
    reason lists the built-in models."""
    from mlscope.manifests.loader import builtin_manifests

    if Path(text).exists() or Path(text).suffix in (".yaml", ".yml"):
        return text
    builtins = sorted(builtin_manifests())
    if text not in builtins:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a manifest file nor a built-in model "
                                         f"(built-in: {', '.join(builtins)})")
    return text


def _levels(text: str) -> list[str]:
    try:
        levels = [parse_level(part.strip()) for part in text.split(",")]
    except UnknownLevel as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return list(dict.fromkeys(levels))


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive: {text!r}")
    return values


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {value}")
        return value

    return parse


def _builder(text: str) -> str:
    from mlscope.manifests.trust import BUILDER_PATTERN

    if not BUILDER_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} must be package.module:function")
    return text


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def add_commands(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="evaluate model manifests across frameworks and batch sizes")
    evaluate.add_argument("manifests", nargs="+", metavar="MANIFEST", type=_manifest_argument,
                          help="a manifest file, or a built-in model's name")
    evaluate.add_argument("--framework", type=_names(_frameworks),
                          help="comma-separated of pytorch, torchscript, onnxruntime; the first is the divergence "
                               "reference (default: the manifest's framework)")
    evaluate.add_argument("--batch-size", type=_positive_ints, default=[1], help="comma-separated (default: 1)")
    evaluate.add_argument("--scenario", type=_names(_scenarios), default=["single-stream"],
                          help="comma-separated of single-stream, offline, server (default: single-stream)")
    evaluate.add_argument("--level", type=_levels, default=["model"],
                          help="comma-separated levels, each a configuration of its own (default: model)")
    evaluate.add_argument("--repetitions", type=_count(1), default=20, help="timed queries per scenario (default: 20)")
    evaluate.add_argument("--warmup", type=_count(0), default=2, help="untimed queries first (default: 2)")
    evaluate.add_argument("--accuracy", action="store_true", help="top-1/top-5 over the manifest's labelled dataset")
    evaluate.add_argument("--execution-provider", default="cpu",
                          help="cpu, cuda or tensorrt (ONNX Runtime; PyTorch: cpu or cuda); an error names the ones here")
    evaluate.add_argument("--server-qps", type=_positive_float, help="server scenario rate (default: half of capacity)")
    evaluate.add_argument("--server-bound-ms", type=_positive_float,
                          help="server scenario p99 bound (default: 4 median service times)")
    evaluate.add_argument("--endpoint",
                          help=f"collector OTLP/HTTP URL (default: {ENV_OTLP_ENDPOINT}, else {DEFAULT_ENDPOINT})")
    evaluate.add_argument("--figure", help="write the latency-per-batch figure here (.png or .svg)")
    evaluate.add_argument("--remote", action="store_true",
                          help="queue the plan for every live predictor matching --where instead of running it here")
    evaluate.add_argument("--server", default=server_url(), help=f"with --remote: the mlscope serve to queue on (default: "
                          f"{ENV_SERVER}, else {DEFAULT_SERVER})")
    evaluate.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                          help="with --remote: predictors whose system (fingerprint or host), name, host or label KEY "
                               "is VALUE; repeat to require several")
    evaluate.add_argument("--no-wait", action="store_true", help="with --remote: queue and return")
    evaluate.set_defaults(handler=cmd_evaluate)

    predictor = commands.add_parser("predictor", help="run evaluation jobs queued on an mlscope serve (evaluate --remote)")
    predictor.add_argument("--server", default=server_url(),
                           help=f"the mlscope serve whose dispatch queues the jobs "
                                f"(default: {ENV_SERVER}, else {DEFAULT_SERVER})")
    predictor.add_argument("--endpoint", help="collector OTLP/HTTP URL (default: the one beside the query service "
                                              f"when it has one, else {ENV_OTLP_ENDPOINT} or {DEFAULT_ENDPOINT})")
    predictor.add_argument("--name", help="how jobs and results name this predictor (default: host-pid)")
    predictor.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                           help="a label --where can select on (e.g. gpu=h200); repeatable")
    predictor.add_argument("--poll", type=_positive_float, default=1.0, help="seconds between queue reads (default: 1)")
    predictor.add_argument("--allow-builder", action="append", default=[], metavar="MODULE:FUNCTION", type=_builder,
                           help="a model builder jobs may name besides mlscope's built-in ones (it runs as this "
                                "process: allow only your own code); repeatable")
    predictor.add_argument("--allow-path", action="store_true",
                           help="let jobs read a model from a path on this machine (default: refused)")
    predictor.add_argument("--allow-private-urls", action="store_true",
                           help="let jobs download from private, loopback or link-local addresses (default: refused)")
    predictor.add_argument("--allow-env", action="append", default=[], metavar="NAME",
                           help="an environment variable jobs' manifests may read as ${NAME} (default: none); "
                                "repeatable")
    predictor.set_defaults(handler=cmd_predictor)

    report = commands.add_parser("report", help="a model's evaluations as a table and figures")
    report.add_argument("--model", required=True)
    report.add_argument("--url", default=DEFAULT_SERVER, help="the query service")
    report.add_argument("--baseline", help="a system (fingerprint or host name): adds latency normalized to it")
    report.add_argument("--out", help="write the figure here (.png or .svg)")
    report.set_defaults(handler=cmd_report)
