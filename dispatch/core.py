"""Dispatch's pure core: parsing, matching, rendering and the SQL of the predictor registry and
the job queue (package docstring: what they are). No I/O; `dispatcher.Dispatcher` does that.

A job is queued for each live predictor that matches the request's `where` and can run its
frameworks on its execution provider, so one request measures the same plan on every matching
system (the paper's Fig. 4). Each job belongs to one predictor, which alone moves it on:
queued -> running -> done | failed. A queued or running job whose predictor stopped
heartbeating reads as `lost`.

A predictor belongs to the token that first registered it (its `owner`, a fingerprint of the
token): only that token, or an admin's, heartbeats as it, reads the jobs sent to it (their
requests hold the manifests) and moves them on. Another token is refused with `NotYours` (403).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlscope.auth import Caller
from mlscope.evaluation.jobs import JobError, parse_job_request
from mlscope.manifests import BUILTIN_BUILDERS
from mlscope.manifests.trust import BUILDER_PATTERN
from mlscope.query.errors import BadRequest, Conflict
from mlscope.query.params import int_between, matching, one_of, parse_params
from mlscope.store import Columns, sql_string


@dataclass(frozen=True)
class DispatchTiming:
    heartbeat_s: float = 5.0  # how often predictors are told to heartbeat
    alive_s: float = 30.0  # a predictor unheard of for longer is gone; its unfinished jobs are lost


JOB_STATES = ("queued", "running", "done", "failed")
UNFINISHED = ("queued", "running")
# What each state may become, and only by the job's own predictor.
TRANSITIONS: dict[str, tuple[str, ...]] = {"queued": ("running", "failed"), "running": ("done", "failed")}

_ID = re.compile(r"[0-9a-f]{32}")
ID_DESCRIPTION = "32 lower-case hex digits"
_LABEL_KEY = re.compile(r"[a-z_][a-z0-9_.-]{0,63}")
_PROVIDER = re.compile(r"[a-z0-9_.-]+/[a-z0-9_.-]+")  # framework/provider, e.g. onnxruntime/cuda
MAX_TEXT = 1024
MAX_MESSAGE = 4096
MAX_ROWS = 10_000
MAX_BUILDERS = 64


class NotYours(PermissionError):
    """The caller's token may not act as this predictor: 403."""


def check_acts_as(predictor_id: str, owner: str | None, caller: Caller) -> None:
    """NotYours unless `caller` may act as the predictor whose owner is `owner` (None: none
    registered it, so no token but an admin's may)."""
    if caller.admin or owner == caller.owner:
        return
    if owner == "":
        # Nothing a client sends can prove it is the process that registered it (its host and pid
        # are in its spans' resource, which any read token reads): it registers again, under a new id.
        raise NotYours(f"predictor {predictor_id} was registered while auth was off, so no token owns it; start "
                       f"mlscope predictor again with MLSCOPE_TOKEN set: it registers under a new id")
    raise NotYours(f"predictor {predictor_id} was registered with another token; "
                   f"each predictor acts with the token it registered with")


# --- predictors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heartbeat:
    predictor_id: str  # 32 hex digits, new for each predictor process
    name: str
    host: str
    pid: int
    system: str  # the HW/SW stack's fingerprint
    system_name: str
    system_description: str
    execution_providers: tuple[str, ...]  # "framework/provider" pairs it can run
    labels: tuple[tuple[str, str], ...]
    started_ns: int
    allowed_builders: tuple[str, ...] = ()  # what `--allow-builder` adds to the built-in builders


def parse_heartbeat(body: Any) -> Heartbeat:
    """A predictor's heartbeat as JSON decoded it; BadRequest names the first bad field."""
    if not isinstance(body, dict):
        raise BadRequest("a heartbeat must be a JSON object")
    system = body.get("system")
    if not isinstance(system, dict):
        raise BadRequest("system: expected {fingerprint, name, description}")
    providers = body.get("execution_providers")
    if not isinstance(providers, list) or not providers or not all(isinstance(p, str) and _PROVIDER.fullmatch(p) for p in providers):
        raise BadRequest("execution_providers: expected a non-empty list of framework/provider names")
    labels = body.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(key, str) and _LABEL_KEY.fullmatch(key) and isinstance(value, str) for key, value in labels.items()
    ):
        raise BadRequest("labels: expected an object of lower-case keys and string values")
    builders = body.get("allowed_builders", [])
    if not isinstance(builders, list) or len(builders) > MAX_BUILDERS or not all(
        isinstance(builder, str) and len(builder) <= MAX_TEXT and BUILDER_PATTERN.fullmatch(builder) for builder in builders
    ):
        raise BadRequest(f"allowed_builders: expected at most {MAX_BUILDERS} module:function names")
    return Heartbeat(
        predictor_id=check_id(body.get("predictor_id"), "predictor_id"),
        name=_text(body.get("name"), "name"),
        host=_text(body.get("host"), "host"),
        pid=_natural(body.get("pid"), "pid"),
        system=_text(system.get("fingerprint"), "system.fingerprint"),
        system_name=_text(system.get("name"), "system.name"),
        system_description=_text(system.get("description", ""), "system.description", empty=True),
        execution_providers=tuple(providers),
        labels=tuple(sorted(labels.items())),
        started_ns=_natural(body.get("started_ns"), "started_ns"),
        allowed_builders=tuple(builders),
    )


def heartbeat_columns(heartbeat: Heartbeat, seen_ns: int, owner: str = "") -> Columns:
    """A heartbeat as a row; `owner` the registering token's fingerprint ('' with auth off)."""
    return {
        "predictor_id": [heartbeat.predictor_id], "name": [heartbeat.name], "host": [heartbeat.host],
        "pid": [heartbeat.pid], "system": [heartbeat.system], "system_name": [heartbeat.system_name],
        "system_description": [heartbeat.system_description],
        "frameworks": [list(dict.fromkeys(pair.split("/", 1)[0] for pair in heartbeat.execution_providers))],
        "execution_providers": [list(heartbeat.execution_providers)],
        "label_keys": [[key for key, _ in heartbeat.labels]], "label_values": [[value for _, value in heartbeat.labels]],
        "started_ns": [heartbeat.started_ns], "seen_ns": [seen_ns], "owner": [owner],
    }


PREDICTORS_SQL = f"SELECT * FROM predictors ORDER BY seen_ns DESC LIMIT {MAX_ROWS}"


def owner_sql(predictor_id: str) -> str:
    return f"SELECT owner FROM predictors WHERE predictor_id = {sql_string(predictor_id)}"


def predictor_json(row: Mapping[str, Any], now_ns: int, timing: DispatchTiming) -> dict[str, Any]:
    """A `predictors` row as the API shows it: labels as an object, and whether it is alive."""
    shown = {name: value for name, value in row.items() if name not in ("label_keys", "label_values", "owner")}
    shown["labels"] = dict(zip(row["label_keys"], row["label_values"]))
    shown["frameworks"], shown["execution_providers"] = list(row["frameworks"]), list(row["execution_providers"])
    shown["alive"] = is_alive(row["seen_ns"], now_ns, timing)
    return shown


def is_alive(seen_ns: int, now_ns: int, timing: DispatchTiming) -> bool:
    return now_ns - seen_ns <= timing.alive_s * 1e9


def matches(predictor: Mapping[str, Any], where: Sequence[tuple[str, str]], needs: Sequence[str]) -> bool:
    """Whether a predictor (as `predictor_json` shows it) satisfies every `where` pair and can
    run every framework/provider pair in `needs`. Keys: `system` (its fingerprint or system
    name), `name`, `host`, `predictor_id`, else one of its labels."""
    for key, value in where:
        if key == "system":
            found = value in (predictor["system"], predictor["system_name"])
        elif key in ("name", "host", "predictor_id"):
            found = predictor[key] == value
        else:
            found = predictor["labels"].get(key) == value
        if not found:
            return False
    return all(need in predictor["execution_providers"] for need in needs)


def describe_predictors(predictors: Sequence[Mapping[str, Any]]) -> str:
    """One line of the live predictors, for a refusal that must say what there is."""
    if not predictors:
        return "no predictor is alive (start one with: mlscope predictor --server URL)"
    return "alive: " + "; ".join(
        f"{p['name']} (system {p['system_name']}/{p['system']}, runs {', '.join(p['execution_providers'])}"
        + "".join(f", {key}={value}" for key, value in p["labels"].items()) + ")"
        for p in predictors)


# --- jobs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFilter:
    run_id: str | None = None
    predictor_id: str | None = None
    state: str | None = None
    latest: int | None = None  # only the `latest` most recently queued, newest first


JOB_PARAMS = {
    "run_id": matching(_ID, ID_DESCRIPTION),
    "predictor_id": matching(_ID, ID_DESCRIPTION),
    "state": one_of(JOB_STATES),
    "latest": int_between(1, MAX_ROWS),
}


def parse_job_filter(params: Mapping[str, str]) -> JobFilter:
    """Query parameters -> JobFilter, by query/params.py's rule."""
    return JobFilter(**parse_params(params, JOB_PARAMS))


def jobs_sql(job_filter: JobFilter, owner: str | None = None) -> str:
    """Oldest first (the order a run's jobs were queued in), or the latest ones newest first;
    with `owner`, only the jobs of the predictors that token registered."""
    conditions = [f"{name} = {sql_string(value)}" for name in ("run_id", "predictor_id", "state")
                  if (value := getattr(job_filter, name)) is not None]
    if owner is not None:
        conditions.append(f"predictor_id IN (SELECT predictor_id FROM predictors WHERE owner = {sql_string(owner)})")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    if job_filter.latest is not None:
        return f"SELECT * FROM jobs{where} ORDER BY created_ns DESC, job_id DESC LIMIT {int(job_filter.latest)}"
    return f"SELECT * FROM jobs{where} ORDER BY created_ns, job_id LIMIT {MAX_ROWS}"


def job_sql(job_id: str) -> str:
    return f"SELECT * FROM jobs WHERE job_id = {sql_string(job_id)}"


def job_columns(job: Mapping[str, Any]) -> Columns:
    return {name: [job[name]] for name in (
        "job_id", "run_id", "predictor_id", "created_ns", "updated_ns", "state", "message", "results", "request")}


def job_json(row: Mapping[str, Any], predictor_seen_ns: Mapping[str, int], now_ns: int, timing: DispatchTiming,
             with_request: bool = False) -> dict[str, Any]:
    """A `jobs` row as the API shows it: an unfinished job whose predictor is gone is `lost`."""
    shown = {name: value for name, value in row.items() if name != "request"}
    seen_ns = predictor_seen_ns.get(row["predictor_id"])
    if row["state"] in UNFINISHED and (seen_ns is None or not is_alive(seen_ns, now_ns, timing)):
        shown["state"] = "lost"
    if with_request:
        shown["request"] = row["request"]
    return shown


@dataclass(frozen=True)
class Submission:
    """A checked job request: its JSON as queued, the `where` pairs a predictor must match and the
    framework/provider pairs it must run."""

    request: dict[str, Any]
    where: tuple[tuple[str, str], ...]
    needs: tuple[str, ...]
    builders: tuple[str, ...] = ()  # builders it names beyond the built-in ones: a predictor must allow each


def parse_submission(body: Any) -> Submission:
    """A job request as JSON decoded it, checked by the same parser that runs it on a predictor
    (evaluation/jobs.py); BadRequest names the first bad field."""
    try:
        job_request = parse_job_request(body)
    except JobError as exc:
        raise BadRequest(str(exc)) from exc
    plan = job_request.plan
    needs = tuple(f"{framework}/{plan.execution_provider}" for framework in plan.frameworks)
    builders = tuple(sorted({manifest.model.builder for manifest in plan.manifests if manifest.model.builder}
                            - BUILTIN_BUILDERS))
    return Submission(job_request.to_json(), job_request.where, needs, builders)


def allows_builders(predictor: Mapping[str, Any], submission: Submission,
                    allowed: Mapping[str, frozenset[str]]) -> bool:
    """Whether the predictor allows every builder the submission names beyond the built-in ones
    (`allowed`: each predictor's `--allow-builder`s, as its heartbeats said)."""
    return set(submission.builders) <= allowed.get(predictor["predictor_id"], frozenset())


@dataclass(frozen=True)
class StateChange:
    predictor_id: str
    state: str
    message: str = ""
    results: int = 0


def parse_state_change(body: Any) -> StateChange:
    if not isinstance(body, dict):
        raise BadRequest('the body must be {"predictor_id", "state", "message", "results"}')
    state = body.get("state")
    if state not in JOB_STATES[1:]:
        raise BadRequest(f"state must be one of {', '.join(JOB_STATES[1:])}, not {str(state)[:32]!r}")
    message = body.get("message", "")
    if not isinstance(message, str):
        raise BadRequest("message must be a string")
    return StateChange(check_id(body.get("predictor_id"), "predictor_id"), state, message[:MAX_MESSAGE],
                       _natural(body.get("results", 0), "results"))


def check_transition(job: Mapping[str, Any], change: StateChange) -> None:
    """Conflict unless the job's own predictor moves it along TRANSITIONS."""
    if job["predictor_id"] != change.predictor_id:
        raise Conflict(f"job {job['job_id']} belongs to predictor {job['predictor_id']}")
    if change.state not in TRANSITIONS.get(job["state"], ()):
        raise Conflict(f"job {job['job_id']} is {job['state']}: it cannot become {change.state}")


# --- field checks -----------------------------------------------------------------------------


def check_id(value: Any, field: str) -> str:
    """A predictor, run or job id: 32 lower-case hex digits (BadRequest naming `field` otherwise)."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise BadRequest(f"{field} must be {ID_DESCRIPTION}")
    return value


def _text(value: Any, field: str, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty) or len(value) > MAX_TEXT:
        raise BadRequest(f"{field}: expected a {'' if empty else 'non-empty '}string of at most {MAX_TEXT} characters")
    return value


def _natural(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise BadRequest(f"{field}: expected a non-negative integer")
    return value
