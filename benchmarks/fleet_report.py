"""What a fleet-load run measured (:class:`Result`), against issue 10's targets, and the
table it prints (``benchmarks/fleet_load.py``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from transport_report import MB, fmt, median, size_label

#: the targets of issue 10 ("Done when")
P99_TARGET_MS = 200.0
RSS_FACTOR, RSS_EXTRA_MB = 3.0, 200.0


@dataclass
class Result:
    nodes: int
    params: int
    rounds: int
    procs: int
    #: seconds from starting the node processes until every node had said hello
    connect_s: float | None = None
    #: round 1: the loop's record; rounds 2, ...: wall time between round ends
    round_seconds: list[float] = field(default_factory=list)
    #: the server process tree (``consortium server`` and the run's own process), sampled
    server_peak_rss_mb: float | None = None
    #: the server's RSS once every node was connected and long-polling, before ``run start``
    server_baseline_rss_mb: float | None = None
    #: the machine's 1-minute load average when the run started and when it ended
    load_avg: tuple[float, float] | None = None
    #: the ``consortium server`` process alone, and the run's process alone
    server_main_peak_rss_mb: float | None = None
    run_proc_peak_rss_mb: float | None = None
    #: the run's tracking process (MLflow and the plot, ``server/tracking_process.py``) alone
    tracking_proc_peak_rss_mb: float | None = None
    #: the most the server's pool of model-sized buffers held at once (as the app reports it)
    server_pool_peak_mb: float | None = None
    #: ``consortium server --offline-after`` (None: the server's default, 10 s)
    offline_after: float | None = None
    #: each node runs its app in a sandboxed process (as deployed) instead of in-process
    app_processes: bool = False
    #: options added to ``consortium server``'s command line (``--server-arg``)
    server_args: list[str] = field(default_factory=list)
    nodes_peak_rss_mb: float | None = None
    #: (seconds since the run started, call, milliseconds, ok) of every admin call
    admin_calls: list[tuple[float, str, float, bool]] = field(default_factory=list)
    #: seconds ``consortium run start`` took (its StartRun call waits like any admin call)
    run_start_s: float | None = None
    #: call -> median milliseconds once the run was over, the nodes still connected
    admin_at_rest_ms: dict[str, float] = field(default_factory=dict)
    #: from ``run start`` until the probe saw the run end
    run_wall_s: float | None = None
    status: str = ""
    note: str = ""

    @property
    def model_mb(self) -> float:
        return self.params * 4 / MB

    @property
    def rss_target_mb(self) -> float:
        return RSS_FACTOR * self.model_mb + RSS_EXTRA_MB

    def latency_ms(self, q: float, call: str | None = None) -> float | None:
        """The ``q`` quantile (nearest rank) of admin call latency, of one ``call`` or all."""
        values = sorted(ms for _, c, ms, _ in self.admin_calls if call in (None, c))
        if not values:
            return None
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    @property
    def rss_met(self) -> bool:
        """The target, for the ``consortium server`` process (its children apart)."""
        peak = self.server_main_peak_rss_mb
        return peak is not None and peak < self.rss_target_mb

    @property
    def tree_rss_met(self) -> bool:
        """The target, for the server's process tree (the run's and tracking processes too)."""
        return self.server_peak_rss_mb is not None and self.server_peak_rss_mb < self.rss_target_mb

    @property
    def p99_met(self) -> bool:
        p99 = self.latency_ms(0.99)
        failed = any(not ok for *_, ok in self.admin_calls)
        return p99 is not None and p99 < P99_TARGET_MS and not failed

    @property
    def completed(self) -> bool:
        return self.status == "finished" and len(self.round_seconds) == self.rounds

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        calls = self.admin_calls
        out.update(
            model_mb=self.model_mb,
            round_median_s=median(self.round_seconds) if self.round_seconds else None,
            round_max_s=max(self.round_seconds) if self.round_seconds else None,
            rss_target_mb=self.rss_target_mb,
            rss_over_model=(self.server_peak_rss_mb or 0.0) / self.model_mb,
            rss_target_met=self.rss_met,
            tree_rss_target_met=self.tree_rss_met,
            admin_p50_ms=self.latency_ms(0.50),
            admin_p99_ms=self.latency_ms(0.99),
            admin_max_ms=self.latency_ms(1.0),
            **{
                f"{call}_{name}_ms": self.latency_ms(q, call)
                for call in ("list_runs", "show_run")
                for name, q in (("p50", 0.5), ("p99", 0.99))
            },
            admin_call_count=len(calls),
            admin_failed=sum(1 for *_, ok in calls if not ok),
            admin_target_met=self.p99_met,
            completed=self.completed,
        )
        return out


def table(r: Result) -> str:
    d = r.as_dict()
    yes = {True: "**met**", False: "**not met**"}
    rows = [
        ("nodes (processes)", f"{r.nodes} ({r.procs})"
         + ("" if r.app_processes else ", apps in-process")),
        ("load average at start / end", f"{r.load_avg[0]:.1f} / {r.load_avg[1]:.1f}"
         if r.load_avg else "—"),
        ("server --offline-after", f"{r.offline_after:g} s" if r.offline_after else "10 s"),
        ("other server options", " ".join(f"`{a}`" for a in r.server_args) or "defaults"),
        ("model", f"{size_label(r.params)} float32 = {r.model_mb:.1f} MB"),
        ("run", f"{r.status or '—'}, {len(r.round_seconds)}/{r.rounds} rounds"),
        ("all nodes connected after", f"{fmt(r.connect_s, '.1f')} s"),
        ("round seconds", ", ".join(f"{s:.2f}" for s in r.round_seconds) or "—"),
        ("s/round median / max", f"{fmt(d['round_median_s'], '.2f')} / "
         f"{fmt(d['round_max_s'], '.2f')}"),
        ("server peak RSS (with the run's process)", f"{fmt(r.server_peak_rss_mb, '.0f')} MB "
         f"({d['rss_over_model']:.1f} × model)"),
        ("`consortium server` RSS, nodes connected, before the run",
         f"{fmt(r.server_baseline_rss_mb, '.0f')} MB"),
        ("RSS target < 3 × model + 200 MB: `consortium server` / with its children",
         f"< {r.rss_target_mb:.0f} MB: {yes[r.rss_met]} / {yes[r.tree_rss_met]}"),
        ("node processes peak RSS (sum)", f"{fmt(r.nodes_peak_rss_mb, '.0f')} MB"),
        ("`consortium run start` took", f"{fmt(r.run_start_s, '.1f')} s"),
        ("admin calls (failed)", f"{d['admin_call_count']} ({d['admin_failed']})"),
        ("admin p50 / p99 / max", f"{fmt(d['admin_p50_ms'], '.0f')} / "
         f"{fmt(d['admin_p99_ms'], '.0f')} / {fmt(d['admin_max_ms'], '.0f')} ms"),
        ("admin target p99 < 200 ms", yes[r.p99_met]),
        ("after the run: list_runs / show_run median",
         " / ".join(f"{r.admin_at_rest_ms[c]:.0f}" if c in r.admin_at_rest_ms else "—"
                    for c in ("list_runs", "show_run")) + " ms"),
    ]  # fmt: skip
    if r.run_proc_peak_rss_mb:  # the run's program in a process of its own
        rows.insert(9, ("… `consortium server` / run process / tracking process",
                        f"{fmt(r.server_main_peak_rss_mb, '.0f')} / "
                        f"{r.run_proc_peak_rss_mb:.0f} / "
                        f"{fmt(r.tracking_proc_peak_rss_mb, '.0f')} MB"))  # fmt: skip
    return "\n".join(["| | |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows)])
