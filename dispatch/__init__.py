"""Dispatch: predictors across machines. The registry of `mlscope predictor` processes (their
heartbeats) and the evaluation jobs queued for them (`mlscope evaluate --remote`), served at
/api/predictors and /api/jobs beside the read-only query API:

    dispatcher = Dispatcher(store)
    app = create_query_app(store, mounts=[dispatch_mount(dispatcher, otlp_http_port)])

State lives in the store (tables `predictor_heartbeats` and `job_states`, read through the views
`predictors` and `jobs`): it outlives the process and SQL reads it like any table.

One dispatch per store (the single-writer rule): a state change checks the job's current state
and then writes the next one, and the lock that makes check-then-write atomic holds within one
process. `mlscope serve` and `mlscope query` mount dispatch unless given `--no-dispatch`: run any
number of query processes over one store, all but one with `--no-dispatch`.

Inside: `core` is pure (parse, match, render, SQL); `dispatcher` does the store I/O; `api` maps
HTTP to them; `openapi` is its part of /openapi.json.
"""

from __future__ import annotations

from .api import dispatch_mount
from .core import DispatchTiming
from .dispatcher import Dispatcher

__all__ = ["DispatchTiming", "Dispatcher", "dispatch_mount"]
