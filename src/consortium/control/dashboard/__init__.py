"""The web dashboard: a small static front end served at ``/`` beside the REST API.

The page and its scripts hold no data, so they are served without a token;
every figure the page shows comes from ``/api/v1`` with the bearer token the
user pasted (kept in the tab's ``sessionStorage``, sent in the
``Authorization`` header, never in a URL). The files ship in the wheel
(``static/``: HTML, CSS and ES modules; no build step, no Node.js) and are read
once, when the API is created. Every dashboard response carries a strict
Content-Security-Policy (scripts and styles from this origin only, nothing
inline, no framing) so that a value the API returns can never run as code.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response

from consortium.control.guard import ApiError

#: the folder of the dashboard's files (package data)
STATIC = Path(__file__).parent / "static"
#: the URL prefix of the dashboard's assets (the page itself is ``/``)
ASSETS = "/dashboard"
INDEX = "index.html"
#: scripts and styles from this origin only (no inline code, no eval), data only from
#: this origin's API, no plugins, no framing, forms never submitted by the browser
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # an upgraded server's dashboard is fetched again, not taken from a stale cache
    "Cache-Control": "no-cache",
}
#: media types by suffix, not from the host's mime database (which varies by machine)
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def load_assets(root: Path = STATIC) -> dict[str, tuple[bytes, str]]:
    """Every dashboard file by its path under ``root`` (``js/app.js``): bytes and media type."""
    assets = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            media = MEDIA_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
            assets[path.relative_to(root).as_posix()] = (
                path.read_bytes(),
                media or "application/octet-stream",
            )
    return assets


def mount_dashboard(api: FastAPI, root: Path = STATIC) -> None:
    """Serve the dashboard at ``/`` and its files under ``/dashboard/`` (not in the schema).

    Only the files found here now are served: a request names one by its key, so no
    path from a URL ever reaches the file system.
    """
    assets = load_assets(root)
    if INDEX not in assets:
        raise FileNotFoundError(f"the dashboard's {INDEX} is missing from {root}")

    def serve(name: str) -> Response:
        found = assets.get(name)
        if found is None:
            raise ApiError(404, "not-found", f"no dashboard file {name!r}", field="path")
        body, media = found
        return Response(body, media_type=media, headers=SECURITY_HEADERS)

    @api.get("/", include_in_schema=False)
    def index() -> Response:
        return serve(INDEX)

    @api.get(ASSETS + "/{name:path}", include_in_schema=False)
    def asset(name: str) -> Response:
        return serve(name)
