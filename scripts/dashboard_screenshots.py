"""Screenshots of every dashboard page for docs/dashboard.md (1280x800, PNG).

    .venv/bin/python scripts/dashboard_screenshots.py                # starts `consortium local`
    .venv/bin/python scripts/dashboard_screenshots.py --url URL --token-file DIR/admin-token

Without ``--url`` it starts ``consortium local`` in a temporary folder and stops it at
the end. It runs two heart-disease runs through the API (so that there is something to
compare), then visits each page in headless Chromium (Debian's ``chromium`` package:
``apt-get install chromium``; ``--chromium PATH`` for another) and writes
``docs/dashboard/<page>.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VIEWPORT = {"width": 1280, "height": 800}
RUNS = (
    {"num-rounds": 12, "lr": 0.1, "local-steps": 5},
    {"num-rounds": 12, "lr": 0.03, "local-steps": 20, "weighting": "examples"},
)


def call(url: str, token: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + "/api/v1" + path, data=data)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@contextmanager
def local_federation() -> Iterator[tuple[str, str]]:
    """`consortium local` in a temporary folder: its API URL and admin token."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        app = ROOT / "examples" / "heart_disease"
        log = open(directory / "local.out", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "consortium.cli.main", "local", "--dir", str(directory),
             "--http-port", "0", "--no-tracking", "--app", str(app)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while "Ctrl-C stops" not in (directory / "local.out").read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(
                        "consortium local did not start:\n" + (directory / "local.out").read_text()
                    )
                time.sleep(0.2)
            url = (directory / "server" / "api" / "url").read_text().strip()
            yield url, (directory / "admin-token").read_text().strip()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
            log.close()


def wait_online(url: str, token: str, count: int = 4) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        nodes = call(url, token, "/nodes")["nodes"]
        if sum(n["status"] == "online" for n in nodes) >= count:
            return
        time.sleep(0.5)
    sys.exit(f"fewer than {count} nodes came online")


def finished_runs(url: str, token: str) -> list[str]:
    """Two finished heart-disease runs (the newest ones, or two started now)."""
    done = [r["run_id"] for r in call(url, token, "/runs")["runs"] if r["status"] == "finished"]
    if len(done) >= 2:
        return done[:2]
    wait_online(url, token)
    ids = []
    for seed, config in enumerate(RUNS, 1):
        body = {"app": "heart-disease", "run_config": config, "seed": seed}
        ids.append(call(url, token, "/runs", body)["run_id"])
        while call(url, token, f"/runs/{ids[-1]}")["status"] in ("pending", "running"):
            time.sleep(0.5)
    return ids


def shoot(url: str, token: str, out: Path, chromium: str) -> list[Path]:
    from playwright.sync_api import sync_playwright

    first, second = finished_runs(url, token)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

        def snap(name: str, hash_: str, ready: str) -> None:
            page.goto(f"{url}/{hash_}")
            page.wait_for_selector(ready)
            page.wait_for_timeout(300)  # fonts and layout settle
            path = out / f"{name}.png"
            page.screenshot(path=str(path))
            written.append(path)

        snap("login", "#/login", "#token")
        page.fill("#token", token)
        page.click("button[type=submit]")
        page.wait_for_selector("#nodes-summary")
        snap("nodes", "#/nodes", "tr[data-node]")
        snap("apps", "#/apps", "tr[data-app]")
        snap("runs", "#/runs", "tr[data-run]")
        snap("start", "#/start", "#run-config .kv")
        snap("run-training", f"#/runs/{first}/training", "figure[data-chart=auc] circle")
        snap("run-system", f"#/runs/{first}/system", "#system-nodes")
        snap("run-models", f"#/runs/{first}/models", "#download-npz")
        snap("run-params", f"#/runs/{first}/params", "#run-config-table")
        snap("compare", f"#/compare/{first}/{second}", "#comparison")
        snap("audit", "#/audit", "#audit tr[data-seq]")
        browser.close()
    if errors:
        sys.exit("the dashboard reported errors:\n" + "\n".join(errors))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", help="a running server's API URL (default: start consortium local)"
    )
    parser.add_argument("--token-file", type=Path, help="an admin or researcher token (with --url)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    if args.url:
        if args.token_file is None:
            parser.error("--url needs --token-file")
        paths = shoot(
            args.url.rstrip("/"), args.token_file.read_text().strip(), args.out, args.chromium
        )
    else:
        with local_federation() as (url, token):
            paths = shoot(url, token, args.out, args.chromium)
    for path in paths:
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"{shown}: {path.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
