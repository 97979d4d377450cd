"""What a fleet-load run watches from its own process: the server's memory
(:class:`ServerSampler`) and the latency of admin calls during the rounds
(:class:`AdminProbe`)."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from bench_processes import ADMIN
from fleet_report import Result
from transport_report import median

PROBE_EVERY_S = 0.1


#: what the command line of the run's tracking process holds (the server's other child is
#: the run's own program)
TRACKING_CHILD = "consortium.server.tracking_process"


class ServerSampler:
    """Samples the server's RSS every 50 ms: its own process, each child (the run's
    program, the run's tracking process) and the tree; keeps the peaks."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self.peak_main = self.peak_child = self.peak_tree = self.peak_tracking = 0
        self._tracking: dict[int, bool] = {}  # child pid -> is the tracking process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss", daemon=True)
        self._thread.start()

    def sample(self) -> None:
        import psutil

        with contextlib.suppress(psutil.Error):
            main = self._root.memory_info().rss
            children = 0
            for child in self._root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    rss = child.memory_info().rss
                    children += rss
                    if child.pid not in self._tracking:
                        self._tracking[child.pid] = TRACKING_CHILD in " ".join(child.cmdline())
                    if self._tracking[child.pid]:
                        self.peak_tracking = max(self.peak_tracking, rss)
                    else:
                        self.peak_child = max(self.peak_child, rss)
            self.peak_main = max(self.peak_main, main)
            self.peak_tree = max(self.peak_tree, main + children)

    def current_main(self) -> int:
        """The ``consortium server`` process's RSS now (0 if it is gone)."""
        import psutil

        try:
            return int(self._root.memory_info().rss)
        except psutil.Error:
            return 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()


def client_tls(creds: Path, role: str) -> Any:
    from consortium.transport.credentials import load_client_credentials
    from consortium.transport.grpc_client import ClientTls

    loaded = load_client_credentials(creds, role=role)  # type: ignore[arg-type]
    return ClientTls(
        key=loaded.private_key, certificate=loaded.certificate_chain, ca=loaded.root_certificates
    )


class AdminProbe:
    """Calls ``list_runs`` and ``show_run`` in turn every ~100 ms from its own thread, timing
    each; remembers the run's last status. Started with the run: until ``run_id`` is set
    (``consortium run start`` returned) it calls ``list_runs`` only."""

    def __init__(self, address: str, pki: Path, result: Result) -> None:
        from consortium.transport.grpc_client import ControlClient

        self.client = ControlClient(address, tls=client_tls(pki / "credentials" / ADMIN, "admin"))
        self.run_id: str | None = None
        self.result = result
        self.info: dict[str, Any] | None = None
        self.stop = threading.Event()
        self.done = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="admin-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=40)  # at most one call in flight (30 s deadline)

    def close_client(self) -> None:
        self.close()
        self.client.close()

    def at_rest(self, calls: int = 10) -> dict[str, float]:
        """Median milliseconds of each call once the run is over (the nodes still
        long-polling): the calls' own cost, apart from the rounds' load."""
        from consortium.core.errors import ConsortiumError

        run_id = self.run_id
        timings: dict[str, list[float]] = {"list_runs": [], "show_run": []}
        for _ in range(calls):
            for call, times in timings.items():
                t = time.monotonic()
                try:
                    if call == "list_runs":
                        self.client.list_runs()
                    elif run_id is not None:
                        self.client.show_run(run_id)
                except ConsortiumError:
                    continue
                times.append((time.monotonic() - t) * 1000)
        return {call: median(times) for call, times in timings.items() if times}

    def _loop(self) -> None:
        from consortium.core.errors import ConsortiumError

        n = 0
        while not self.stop.is_set():
            run_id = self.run_id
            call = "list_runs" if n % 2 == 0 or run_id is None else "show_run"
            n += 1
            t = time.monotonic()
            ok = True
            try:
                if call == "list_runs":
                    self.client.list_runs()
                else:
                    assert run_id is not None
                    self.info = self.client.show_run(run_id)
                    if self.info.get("status") not in ("pending", "running"):
                        self.done.set()
            except ConsortiumError:
                ok = False
            ms = (time.monotonic() - t) * 1000
            self.result.admin_calls.append((t - self._t0, call, ms, ok))
            self.stop.wait(max(0.0, PROBE_EVERY_S - ms / 1000))
