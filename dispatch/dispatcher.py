"""The store side of the registry and the queue: every write dispatch makes, and its reads.

Blocking (the HTTP layer runs it in worker threads). Versions are stamped with this process's
clock, never a predictor's. A state change reads the job, checks the transition and writes the
new row under a lock; the lock holds within this process only, which is why a store has one
dispatch (the package docstring states the rule).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from mlscope.auth import Caller
from mlscope.query.errors import BadRequest, Conflict, NotFound
from mlscope.store import Store

from .core import (
    PREDICTORS_SQL, DispatchTiming, Heartbeat, JobFilter, StateChange, Submission, allows_builders, check_acts_as,
    check_transition, describe_predictors, heartbeat_columns, job_columns, job_json, job_sql, jobs_sql, matches,
    owner_sql, predictor_json,
)


class Dispatcher:
    def __init__(self, store: Store, timing: DispatchTiming = DispatchTiming(),
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._store = store
        self.timing = timing
        self._clock_ns = clock_ns
        self._lock = threading.Lock()  # one state change at a time: check, then write
        # Each predictor's --allow-builder names, from its latest heartbeat. Kept in memory, not in the
        # store: the next heartbeat (every heartbeat_s) says it again after a restart.
        self._allowed_builders: dict[str, frozenset[str]] = {}
        # Each predictor's owner (the token that registered it), read from the store once: it never changes.
        self._owners: dict[str, str] = {}

    def heartbeat(self, heartbeat: Heartbeat, caller: Caller) -> dict[str, Any]:
        """Registers or refreshes a predictor; NotYours when another token registered it."""
        with self._lock:  # check, then write: two tokens racing to register one id cannot both win
            owner = self._owner(heartbeat.predictor_id)
            owner = caller.owner if owner is None else owner
            check_acts_as(heartbeat.predictor_id, owner, caller)
            self._store.insert("predictor_heartbeats", heartbeat_columns(heartbeat, self._clock_ns(), owner))
            self._owners[heartbeat.predictor_id] = owner
        self._allowed_builders[heartbeat.predictor_id] = frozenset(heartbeat.allowed_builders)
        return {"predictor_id": heartbeat.predictor_id, "heartbeat_s": self.timing.heartbeat_s}

    def predictors(self) -> list[dict[str, Any]]:
        now_ns = self._clock_ns()
        return [predictor_json(row, now_ns, self.timing) for row in self._rows(PREDICTORS_SQL)]

    def submit(self, submission: Submission) -> dict[str, Any]:
        """Queues one job per live predictor matching the submission's `where` that runs every
        pair it needs; Conflict (naming the live predictors) when there is none."""
        alive = [predictor for predictor in self.predictors() if predictor["alive"]]
        chosen = [predictor for predictor in alive if matches(predictor, submission.where, submission.needs)]
        allowing = [predictor for predictor in chosen if allows_builders(predictor, submission, self._allowed_builders)]
        if chosen and not allowing:
            builders = ", ".join(submission.builders)
            raise BadRequest(f"model.builder {builders} is not one of mlscope's built-in builders and no matching live "
                             f"predictor allows it (mlscope predictor --allow-builder MODULE:FUNCTION): a manifest sent "
                             f"to a predictor names no other code")
        chosen = allowing
        if not chosen:
            wanted = " and ".join([f"{key}={value}" for key, value in submission.where]
                                  + [f"runs {', '.join(submission.needs)}"])
            raise Conflict(f"no live predictor matches {wanted}; {describe_predictors(alive)}")
        run_id, now_ns = uuid.uuid4().hex, self._clock_ns()
        request_text = json.dumps(submission.request, ensure_ascii=False)
        jobs = [{"job_id": uuid.uuid4().hex, "run_id": run_id, "predictor_id": predictor["predictor_id"],
                 "created_ns": now_ns, "updated_ns": now_ns, "state": "queued", "message": "", "results": 0,
                 "request": request_text} for predictor in chosen]
        columns = {name: [value for job in jobs for value in job_columns(job)[name]] for name in job_columns(jobs[0])}
        self._store.insert("job_states", columns)
        return {"run_id": run_id, "jobs": [
            {"job_id": job["job_id"], "predictor_id": predictor["predictor_id"], "predictor": predictor["name"],
             "system_name": predictor["system_name"]} for job, predictor in zip(jobs, chosen)]}

    def jobs(self, job_filter: JobFilter, caller: Caller) -> list[dict[str, Any]]:
        """The jobs the filter selects, of the caller's own predictors unless it is an admin."""
        seen = self._seen_ns()
        now_ns = self._clock_ns()
        sql = jobs_sql(job_filter, owner=None if caller.admin else caller.owner)
        return [job_json(row, seen, now_ns, self.timing) for row in self._rows(sql)]

    def job(self, job_id: str, caller: Caller) -> dict[str, Any]:
        """One job (by a checked id), with its request; NotFound when there is none, NotYours
        when it was sent to a predictor of another token."""
        row = self._job_row(job_id)
        check_acts_as(row["predictor_id"], self._owner(row["predictor_id"]), caller)
        return job_json(row, self._seen_ns(), self._clock_ns(), self.timing, with_request=True)

    def change_state(self, job_id: str, change: StateChange, caller: Caller) -> dict[str, Any]:
        """Moves a job on (NotYours unless the caller acts as the predictor named, Conflict if
        the job's state or owner does not allow it); the job as it is now, with its request
        (what a predictor that starts running it needs)."""
        check_acts_as(change.predictor_id, self._owner(change.predictor_id), caller)
        with self._lock:
            row = self._job_row(job_id)
            check_transition(row, change)
            updated = {**row, "state": change.state, "message": change.message, "results": change.results,
                       "updated_ns": max(self._clock_ns(), row["updated_ns"] + 1)}
            self._store.insert("job_states", job_columns(updated))
        return job_json(updated, self._seen_ns(), self._clock_ns(), self.timing, with_request=True)

    def _job_row(self, job_id: str) -> dict[str, Any]:
        rows = self._rows(job_sql(job_id))
        if not rows:
            raise NotFound(f"job {job_id} not found")
        return rows[0]

    def _owner(self, predictor_id: str) -> str | None:
        """The owner of a registered predictor; None when none registered it."""
        if predictor_id not in self._owners:
            rows = self._store.execute(owner_sql(predictor_id)).rows
            if not rows:
                return None
            self._owners[predictor_id] = rows[0][0]
        return self._owners[predictor_id]

    def _seen_ns(self) -> dict[str, int]:
        return {row[0]: row[1] for row in self._store.execute("SELECT predictor_id, seen_ns FROM predictors").rows}

    def _rows(self, sql: str) -> list[dict[str, Any]]:
        result = self._store.execute(sql)
        names = [column.name for column in result.columns]
        return [dict(zip(names, row)) for row in result.rows]
