"""The query service: trace listing, one trace's timeline (tree, self time, adjusters), exports
to Jaeger and Perfetto, and read-only SQL, over HTTP; it also serves the viewer (mlscope.ui).

    app = create_query_app(store, collector.status)   # an aiohttp Application
    web.run_app(app, port=HTTP_PORT)            # mlscope.conventions.HTTP_PORT

    TraceReader(store).run_sql("SELECT ...")          # the same guard and limits, without HTTP

It reads spans and never writes them: the store's writers are the collector and mlscope.dispatch,
which `mlscope serve` mounts beside this app (`create_query_app(..., mounts=[...])`). What it does
write is derived: the windowed read's cache (span_depths and its pyramid), filled on a trace's
first window read and, in the process that owns writes, by `settler` once a big trace goes quiet
(`create_query_app(..., fill_window_caches=SettlerPolicy())`).

Inside: `timeline`, `depths`, `listing`, `evaluations`, `params`, `export` and `sqlguard` are
pure; `reader` is the one place that talks to the store; `traces` reads one trace for a request,
`windows` keeps the windowed read's cache (fills, pyramids, their worker threads) and reads it;
`api` maps HTTP to them; `http` is how every route answers (shared with what is mounted beside it).
"""

from __future__ import annotations

from .api import create_query_app
from .errors import BadRequest, NotFound
from .reader import SqlAnswer, SqlLimits, TraceReader
from .settler import SettlerPolicy

__all__ = ["BadRequest", "NotFound", "SettlerPolicy", "SqlAnswer", "SqlLimits", "TraceReader", "create_query_app"]
