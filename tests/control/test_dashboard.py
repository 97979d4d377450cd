"""The dashboard's files over real HTTP: served without a token, locked down by headers,
shipped in the wheel, and no way around the token for the data they show."""

from __future__ import annotations

import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from consortium.control.dashboard import CSP, STATIC, load_assets

from .conftest import ROOT, Api

JS = sorted((STATIC / "js").rglob("*.js"))


class _Tags(HTMLParser):
    """Every tag of a page with its attributes, and the text inside each <script>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_text.append(data)


def test_the_page_is_served_without_a_token_under_a_strict_policy(api: Api) -> None:
    answer = api.call("GET", "/")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/html")
    policy = answer.headers["content-security-policy"]
    assert policy == CSP
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in policy  # no 'unsafe-inline', no 'unsafe-eval'
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    # the page has no inline code: every script comes from a file, no on*= handlers
    page = _Tags()
    page.feed(answer.body.decode())
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert scripts and all(attrs.get("src", "").startswith("/dashboard/") for attrs in scripts)
    assert page.script_text == []
    assert not [(t, a) for t, a in page.tags for name in a if name.startswith("on")]
    assert not [t for t, _ in page.tags if t == "style"]


@pytest.mark.parametrize(
    ("path", "media"),
    [
        ("/dashboard/js/app.js", "text/javascript"),
        ("/dashboard/js/pages/run.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
        ("/dashboard/favicon.svg", "image/svg+xml"),
    ],
)
def test_each_file_is_served_with_its_type_and_the_same_headers(
    api: Api, path: str, media: str
) -> None:
    answer = api.call("GET", path)
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"].startswith(media)
    assert answer.headers["content-security-policy"] == CSP
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.body == (STATIC / path.removeprefix("/dashboard/")).read_bytes()


@pytest.mark.parametrize(
    "path",
    ["/dashboard/nope.js", "/dashboard/../api.py", "/dashboard/%2e%2e/__init__.py",
     "/dashboard/js", "/dashboard/"],
)  # fmt: skip
def test_only_the_dashboards_own_files_are_served(api: Api, path: str) -> None:
    answer = api.call("GET", path)
    assert answer.status == 404
    assert answer.json()["error"]["code"] in ("not-found", "http-error")


def test_the_data_the_page_shows_still_needs_the_token(api: Api) -> None:
    for path in ("/api/v1/nodes", "/api/v1/apps", "/api/v1/runs", "/api/v1/runs/0123/metrics",
                 "/api/v1/runs/0123/events", "/api/v1/runs/0123/model"):  # fmt: skip
        answer = api.call("GET", path)
        assert answer.status == 401, path
        assert answer.json()["error"]["code"] == "unauthenticated"
        # the page's token, even from the page's own origin, is the only way in
        answer = api.call("GET", path, headers={"Referer": api.url + "/", "Origin": api.url})
        assert answer.status == 401, path
    assert api.call("GET", "/api/v1/runs", token=api.token["observer"]).status == 200


def test_the_dashboard_stays_out_of_the_api_schema(api: Api) -> None:
    paths = api.call("GET", "/openapi.json").json()["paths"]
    assert "/" not in paths
    assert not [p for p in paths if p.startswith("/dashboard")]


def test_every_file_ships_in_the_wheel() -> None:
    """pyproject's package-data globs cover every dashboard file (no build step adds any)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["consortium"]
    package = ROOT / "src" / "consortium"
    shipped = {path for pattern in globs for path in package.glob(pattern)}
    missing = [name for name in load_assets() if STATIC / name not in shipped]
    assert not missing, f"not in pyproject's package-data: {missing}"


@pytest.mark.parametrize("path", JS, ids=lambda p: p.relative_to(STATIC).as_posix())
def test_scripts_never_parse_data_as_html_nor_put_the_token_in_a_url(path: Path) -> None:
    """Values from the API become text nodes (dom.js), never markup; the token travels in
    the Authorization header only."""
    text = path.read_text()
    for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                  "new Function", "new EventSource"):  # fmt: skip
        assert risky not in text, f"{path.name} uses {risky}"
    assert not re.search(r"[?&]token=", text), f"{path.name} puts a token in a URL"
