"""The viewer: static pages (static/index.html, app.js, app.css; no build step) served by the
query app. The same index.html answers every page path (/, /traces/{id}, /evaluations, /compare, /sql) so that deep
links work in a new tab; app.js routes on location.pathname and reads the JSON API.

Untrusted strings (span names, attributes) reach the page only as text nodes, and a strict
Content-Security-Policy keeps anything else from running even if one slipped through.

The pages and static files are public: they hold no data. The data calls need a `read` token
(mlscope.auth); on a 401 app.js asks for one once, keeps it in sessionStorage and sends it as a
bearer header, never in a URL.
"""

from __future__ import annotations

import importlib.resources

from aiohttp import web

from mlscope.auth import public

PAGES = ("/", "/traces/{trace_id}", "/evaluations", "/compare", "/sql")
_CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

# Revalidate on every load: a viewer upgraded under a running browser must not mix versions.
_NO_CACHE = {"Cache-Control": "no-cache"}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """file name -> (bytes, content type); read once, the files are small and never change."""
    folder = importlib.resources.files(__name__) / "static"
    files = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if suffix in _CONTENT_TYPES:
            files[entry.name] = (entry.read_bytes(), _CONTENT_TYPES[suffix])
    return files


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def add_viewer(app: web.Application) -> None:
    """Adds the viewer's pages and static files to `app`, and the security headers to every
    response `app` sends."""
    files = _static_files()
    index_body, index_type = files["index.html"]

    @public
    async def page(request: web.Request) -> web.Response:
        return web.Response(body=index_body, content_type=index_type, charset="utf-8", headers=_NO_CACHE)

    @public
    async def static(request: web.Request) -> web.Response:
        found = files.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(reason="no such file")
        body, content_type = found
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_NO_CACHE)

    app.add_routes([*(web.get(path, page) for path in PAGES), web.get("/static/{name}", static)])
    app.on_response_prepare.append(_security_headers)


__all__ = ["PAGES", "SECURITY_HEADERS", "add_viewer"]
