"""The dashboard in a real browser, against a real federation.

``consortium local`` starts a CA, a server with the REST API and the four heart-disease
hospitals as ``consortium node`` processes over mutual TLS; headless Chromium (Debian's
``chromium`` package, driven by Playwright without ``playwright install``) then does what
a coordinator does: log in with a token, see the hospitals online, start a run with
edited hyperparameters, watch its charts grow round by round, download the model. The
model is then scored with numpy on each hospital's test rows: it must give the AUC the
server reported.

Where Chromium or Playwright is missing the tests skip, naming the install line; on CI
(``CI=true``) they fail instead, so a broken setup cannot pass unseen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from consortium.datasets import heart_disease as hd
from consortium.examples.heart_disease import score

from .conftest import local_logs, start_local

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path(os.environ.get("CONSORTIUM_CHROMIUM", "/usr/bin/chromium"))
INSTALL = "apt-get install chromium (Debian), or bash .ci/chromium.sh"
HOSPITALS = sorted(hd.CENTERS)
#: the run the browser starts: 3 rounds, a changed learning rate, and enough local steps
#: that a round takes long enough (about a second) to be seen arriving on its own
EDITS = {"num-rounds": "3", "lr": "0.05", "local-steps": "40000"}
WAIT_MS = 90_000


def _on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need_a_browser() -> None:
    """Skip (fail on CI) with the install line when Playwright or Chromium is missing."""
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the playwright Python package (pip install -e '.[test]')"
    if missing is None and not os.access(CHROMIUM, os.X_OK):
        missing = f"Chromium at {CHROMIUM}; install it with: {INSTALL}"
    if missing is not None:
        message = f"the dashboard's browser tests need {missing}"
        if _on_ci():
            pytest.fail(message + "; CI must run them")
        pytest.skip(message)


@dataclass
class Federation:
    url: str
    token: str
    directory: Path

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + "/api/v1" + path)
        request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    _need_a_browser()
    directory = tmp_path_factory.mktemp("local")
    out = directory / "local.out"
    log = open(out, "wb")  # noqa: SIM115 - closed at teardown
    proc, url = start_local(directory, log)
    try:
        deadline = time.monotonic() + 60
        fed = Federation(url, (directory / "admin-token").read_text().strip(), directory)
        while sum(n["status"] == "online" for n in fed.get("/nodes")["nodes"]) < 4:
            if time.monotonic() > deadline:
                raise AssertionError("the hospitals did not come online:\n" + local_logs(directory))
            time.sleep(0.2)
        yield fed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def browser(federation: Federation) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Tab:
    """A page and everything it did that a test checks afterwards."""

    page: Page
    urls: list[str]
    errors: list[str]


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    seen = Tab(page, [], [])
    page.on("request", lambda r: seen.urls.append(r.url))
    page.on("pageerror", lambda exc: seen.errors.append(f"page error: {exc}"))
    page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
    try:
        yield seen
    finally:
        context.close()


def _log_in(page: Page, federation: Federation) -> None:
    page.goto(federation.url + "/")
    page.wait_for_url("**/#/login")
    page.get_by_label("API token").fill(federation.token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/#/nodes")


def _chart_points(page: Page, chart: str) -> int:
    value = page.evaluate(
        "(c) => document.querySelector(`figure[data-chart='${c}'] svg`)?.dataset.points ?? '-1'",
        chart,
    )
    return int(value)


def test_a_coordinator_runs_watches_and_downloads_a_model(
    federation: Federation, tab: Tab, tmp_path: Path
) -> None:
    page = tab.page
    # log in -> the four hospitals online
    _log_in(page, federation)
    page.wait_for_selector("text=4 of 4 online")
    online = page.locator("tr[data-status=online]")
    assert sorted(online.evaluate_all("rows => rows.map(r => r.dataset.node)")) == HOSPITALS

    # start a heart-disease run with edited hyperparameters
    page.get_by_role("link", name="Start a run").first.click()
    page.wait_for_selector("#run-config .kv")
    assert page.locator("#app option:checked").inner_text() == "heart-disease 1.0.0"
    rows = page.locator("#run-config .kv")
    # the form starts from the app's own [run-config] defaults
    assert "The defaults of heart-disease 1.0.0" in page.locator("#config-origin").inner_text()
    keys = rows.evaluate_all("rows => rows.map(r => r.querySelector('.key').value)")
    assert {"num-rounds", "lr", "local-steps"} <= set(keys), keys
    for key, value in EDITS.items():
        index = rows.evaluate_all(
            "(rows, k) => rows.findIndex(r => r.querySelector('.key').value === k)", key
        )
        if index < 0:  # not filled in: add it
            page.get_by_role("button", name="+ Add a field").click()
            index = rows.count() - 1
            rows.nth(index).locator(".key").fill(key)
        rows.nth(index).locator(".value").fill(value)
    page.fill("#seed", "7")
    assert page.locator("#node-picker input:checked").count() == 4
    page.get_by_role("button", name="Start the run").click()
    page.wait_for_url("**/#/runs/*")
    run_id = page.url.rsplit("/", 1)[-1]
    page.evaluate("window.stillTheSamePage = true")

    # the charts grow as rounds finish, pushed by the event stream (no reload)
    counts, live_seen = [], False
    deadline = time.monotonic() + WAIT_MS / 1000
    while (status := page.locator("#run-status").inner_text()) != "finished":
        assert time.monotonic() < deadline, f"the run did not finish; saw {counts}"
        assert status in ("pending", "running"), local_logs(federation.directory)
        live_seen = live_seen or page.locator("#live.on").count() == 1
        points = _chart_points(page, "auc")
        if points >= 0 and (not counts or counts[-1] != points):
            counts.append(points)
        page.wait_for_timeout(50)
    counts.append(_chart_points(page, "auc"))
    assert live_seen
    assert counts[-1] == 3 * 4  # three rounds, four hospitals
    assert 4 in counts or 8 in counts, f"the chart never showed a round on its own: {counts}"
    assert counts == sorted(counts), counts
    print("points on the AUC chart as the run went:", counts)
    assert page.evaluate("window.stillTheSamePage") is True
    # the rounds came over the event stream: the metrics were read once, when the page opened
    assert [u for u in tab.urls if u.endswith(f"/runs/{run_id}/metrics")] == [
        f"{federation.url}/api/v1/runs/{run_id}/metrics"
    ]
    assert [u for u in tab.urls if f"/runs/{run_id}/events" in u]
    assert page.locator("#rounds-done").inner_text() == "3 of 3"
    assert _chart_points(page, "loss") == 12 and _chart_points(page, "global") == 3

    # the server ran what the form said
    run = federation.get(f"/runs/{run_id}")
    assert run["status"] == "finished" and run["seed"] == 7
    assert run["run_config"]["num-rounds"] == 3 and run["run_config"]["lr"] == 0.05
    assert run["run_config"]["local-steps"] == 40000
    page.get_by_role("link", name="Parameters").click()
    page.wait_for_selector("#run-config-table")
    config = page.locator("#run-config-table tbody tr").all_inner_texts()
    assert "lr\t0.05" in config and "num-rounds\t3" in config

    # the AUC the page shows for each hospital is the server's
    page.get_by_role("link", name="Training").click()
    page.wait_for_selector("#latest-metrics")
    shown = {
        node: float(page.locator(f"#latest-metrics tr[data-node='{node}'] td.auc").get_attribute(
            "data-value") or "nan")
        for node in HOSPITALS
    }  # fmt: skip
    reported = federation.get(f"/runs/{run_id}/metrics")["rounds"][-1]
    server_auc = {
        n["node"]: n["metrics"]["auc"] for n in reported["nodes"] if n["stage"] == "evaluate"
    }
    assert shown == server_auc

    # download the model; numpy alone loads it, and it scores what the server reported
    page.get_by_role("link", name="Models").click()
    with page.expect_download() as download:
        page.get_by_role("button", name="Download .npz").click()
    assert download.value.suggested_filename == f"{run_id}.npz"
    path = tmp_path / "model.npz"
    download.value.save_as(path)
    page.wait_for_selector("#download-result .ok")
    with np.load(path, allow_pickle=False) as saved:
        params = {name: saved[name] for name in saved.files}
    centers = hd.load_all(split_seed=int(run["run_config"]["split-seed"]))
    scored = dict(zip(hd.CENTERS, score(params, centers).auc, strict=True))
    for node in HOSPITALS:
        assert scored[node] == pytest.approx(server_auc[node], abs=1e-9), node

    # the audit log shows who started the run (the admin token's holder)
    page.get_by_role("link", name="Audit log").click()
    page.fill("#audit-run_id", run_id)
    page.get_by_role("button", name="Refresh").click()
    started = page.locator("#audit tr[data-action='run.start'][data-outcome='ok']")
    started.first.wait_for()
    assert started.count() == 1 and run_id in started.inner_text()
    assert ":" in page.locator("#audit-head code").inner_text()  # SEQ:HASH

    # the token went only in headers, never in a URL; the page raised no error
    assert not [u for u in tab.urls if federation.token in u]
    assert not tab.errors, tab.errors


def test_a_refused_token_sends_the_user_back_to_log_in(federation: Federation, tab: Tab) -> None:
    page = tab.page
    page.goto(federation.url + "/#/login")
    page.get_by_label("API token").fill("not-a-token")
    page.get_by_role("button", name="Log in").click()
    assert "refused this token" in page.locator("#login-message .error").inner_text()
    # a token that stops working mid-session (expired, revoked): back to the login page
    _log_in(page, federation)
    page.evaluate("sessionStorage.setItem('consortium.token', 'revoked-meanwhile')")
    page.get_by_role("link", name="Runs", exact=True).click()
    page.wait_for_url("**/#/login")
    assert "refused your token" in page.locator("#login-message").inner_text()
    # logging out forgets the token
    _log_in(page, federation)
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/#/login")
    assert page.evaluate("sessionStorage.getItem('consortium.token')") is None
    page.goto(federation.url + "/#/runs")
    page.wait_for_url("**/#/login")
    # the 401s of the refused tokens are reported as console errors by Chromium: expected
    assert all("401" in e for e in tab.errors), tab.errors
