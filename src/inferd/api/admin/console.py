"""The web console at `/console/`: the single-page app built from `console/` (repository root)
into `console_dist/` beside this module, shipped in the package, served from it.

Routing inside the app is by the URL's fragment (`/console/#/models/iris`), so the server
serves files only: `index.html`, `assets/<name>-<hash>.<ext>` (the hash changes with the
content, so they are cached for a year) and what `console/public/` holds. Every answer carries
a strict Content-Security-Policy: scripts, styles and connections from this origin only, no
inline script or style, no framing. The app authenticates with `Authorization: Bearer` from
memory, never with a cookie, so no request of another site can act for a user (no CSRF).
When the app is not built (a checkout where Node.js was missing), `/console/` says how to
build it instead. Like `/docs`, these files need no credentials.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Receive, Scope, Send

from inferd.api.http.routes import CONSOLE_PATH

#: Where the built app is (written by `cd console && npm run build`, run by `make`).
DIST = Path(__file__).resolve().parent / "console_dist"
#: Scripts, styles, images and API calls from this server only; nothing inline, no plugins,
#: no framing by another page, no <base>, forms post here only.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}
#: Files named by their content's hash never change: cached for a year, never revalidated.
IMMUTABLE = "public, max-age=31536000, immutable"
#: index.html and unhashed files: the browser revalidates each time (ETag), so a new build is
#: picked up at once.
REVALIDATE = "no-cache"

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>inferd console not built</title></head>
<body><h1>The inferd web console is not built</h1>
<p>This server runs and its APIs work; only the console's files are missing. They are built
with Node.js 20 or newer, from a checkout of inferd:</p>
<pre>make install        # or: cd console &amp;&amp; npm ci &amp;&amp; npm run build</pre>
<p>then restart <code>inferd serve</code>. Installed packages of inferd ship the console
built. The API is described at <a href="../docs">/docs</a>.</p></body></html>
"""


class ConsoleFiles(StaticFiles):
    """The built app's files with the console's caching and security headers."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory=directory, html=True, check_dir=False)
        self.index = directory / "index.html"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.index.is_file():
            await _not_built()(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def file_response(self, full_path: PathLike, stat_result: os.stat_result, scope: Scope,
                      status_code: int = 200) -> Response:  # fmt: skip
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        hashed = Path(full_path).parent.name == "assets"
        response.headers["cache-control"] = IMMUTABLE if hashed else REVALIDATE
        return response


def _not_built() -> Response:
    response = HTMLResponse(NOT_BUILT, status_code=404)
    response.headers.update(SECURITY_HEADERS)
    response.headers["cache-control"] = "no-store"
    return response


def add_console(app: FastAPI, directory: Path = DIST) -> None:
    """Serve the console's files at `/console/` on `app` (`/console` redirects there, and the
    data-plane root `/` sends browsers there: api/http/routes.py)."""
    app.mount(CONSOLE_PATH.rstrip("/"), ConsoleFiles(directory), name="console")


def built(directory: Path = DIST) -> bool:
    """Whether the console's files are there to serve."""
    return (directory / "index.html").is_file()
