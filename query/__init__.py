"""The query service: trace listing, one trace's timeline (tree, self time, adjusters), exports
to Jaeger and Perfetto, and read-only SQL, over HTTP; it also serves the viewer (mlscope.ui).

    app = create_query_app(store, collector.status)   # an aiohttp Application
    web.run_app(app, port=HTTP_PORT)            # mlscope.conventions.HTTP_PORT

    TraceReader(store).run_sql("SELECT ...")          # the same guard and limits, without HTTP

It only reads: the store's writers are the collector and mlscope.dispatch, which `mlscope serve`
mounts beside this app (`create_query_app(..., mounts=[...])`).

Inside: `timeline`, `listing`, `evaluations`, `params`, `export` and `sqlguard` are pure; `reader`
is the one place that talks to the store; `api` maps HTTP to them; `http` is how every route
answers (shared with what is mounted beside it).
"""

from __future__ import annotations

from .api import create_query_app
from .errors import BadRequest, NotFound
from .reader import SqlAnswer, SqlLimits, TraceReader

__all__ = ["BadRequest", "NotFound", "SqlAnswer", "SqlLimits", "TraceReader", "create_query_app"]
