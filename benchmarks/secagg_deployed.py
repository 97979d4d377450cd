"""Heart disease in deployment, with SecAgg+ and without: accuracy and seconds per round.

    python benchmarks/secagg_deployed.py                    # 15 rounds, 3 repeats
    python benchmarks/secagg_deployed.py --rounds 5 --repeats 1 --json secagg_deployed.json

Real processes on loopback, mutual TLS on, as an operator starts them: a CA
and certificates (``CertificateAuthority``), ``consortium server``, the four
hospitals as ``consortium node`` processes (each with only its own rows, its
app in a confined process), and a run started through the Control API. Twice,
from fresh processes and the same seed: ``examples/heart_disease`` (plain
FedAvg) and ``examples/secagg_heart`` (the same training through
SecAggPlusWorkflow + secaggplus_mod; node keys signed with the node
certificates). Both evaluate on every hospital every round. ``--repeats``
times, alternating which system goes first, so both see the same machine.

Reported: accuracy of the final model on the four test sets (mean over
hospitals, FLamby's figure, and pooled) from ``model.npz``; the largest
parameter difference between the two final models; seconds per round as the
round loop records them (tasks sent to evaluation done), median over rounds
2..N (round 1 also starts the app processes and, for SecAgg+, sets up the
keys), and their ratio within each repeat; that median divided by the
server-node round trips of a round (2 for FedAvg: train and evaluate; 3 for
SecAgg+ once its keys are set up: masked-input train, unmask, evaluate); for
SecAgg+ the median seconds of each stage (the workflow's ``secagg.seconds.*``
train metrics) and of the rest of the round (evaluation, records); and the
load average before each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from consortium.datasets import heart_disease as hd
from consortium.examples import heart_disease as app
from consortium.server import load_model
from consortium.transport.ca import CertificateAuthority
from consortium.transport.grpc_client import ClientTls, ControlClient

ROOT = Path(__file__).resolve().parents[1]
APPS = {
    "fedavg": ROOT / "examples" / "heart_disease",
    "secagg+": ROOT / "examples" / "secagg_heart",
}
EXE = str(Path(sys.executable).parent / "consortium")
#: server-to-node round trips per round: train + evaluate; SecAgg+ adds unmask after its
#: (masked-input) train task, and its first round a key setup (advertise keys)
ROUND_TRIPS = {"fedavg": 2, "secagg+": 3}
#: the workflow's per-stage seconds, as the run's round metrics show them
STAGES = {part: f"train_secagg.seconds.{part}"
          for part in ("setup", "train", "unmask", "sum", "before-evaluate")}  # fmt: skip
#: the split reported: each stage, the rest before evaluation (sampling, the strategy's
#: aggregate), and the evaluation with the round's records
SPLIT = ("setup", "train", "unmask", "sum", "other", "evaluate")
SEED = 11


@dataclass
class Row:
    system: str
    rounds: int
    mean_accuracy: float
    pooled_accuracy: float
    round_seconds: list[float]
    median_round_s: float
    #: median seconds per round divided by the round trips of a round
    per_round_trip_s: float
    wall_s: float
    #: 1-minute load average when the measurement started
    load_average: float
    #: SecAgg+: median seconds of each part of a round over rounds 2..N (setup: round
    #: 1's), see SPLIT
    stage_s: dict[str, float]


class Federation:
    """A CA, a server and the four hospital nodes, each in its own process."""

    def __init__(self, root: Path, app_dir: Path) -> None:
        self.root, self.procs = root, list[subprocess.Popen[bytes]]()
        ca = CertificateAuthority.init(root / "ca")
        self.creds = root / "credentials"
        ca.issue("server", "localhost", self.creds / "localhost", ips=["127.0.0.1"])
        for name in hd.CENTERS:
            ca.issue("node", name, self.creds / name)
        ca.issue("admin", "bench", self.creds / "bench")
        port_file = root / "port"
        self._spawn("server", [
            EXE, "server", "--address", "127.0.0.1:0",
            "--credentials", str(self.creds / "localhost"), "--ca-dir", str(root / "ca"),
            "--workdir", str(root / "server"),
            "--port-file", str(port_file), "--no-tracking",
            *[a for n in hd.CENTERS for a in ("--allow", n)],
        ])  # fmt: skip
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start: " + (root / "server.out").read_text())
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        for name in hd.CENTERS:
            self._spawn(name, [
                EXE, "node", "--server", f"127.0.0.1:{self.port}",
                "--credentials", str(self.creds / name), "--app", str(app_dir),
                "--config", f"center={name}", "--work-dir", str(root / "nodes" / name),
            ])  # fmt: skip
        folder = self.creds / "bench"
        tls = ClientTls(key=(folder / "bench.key").read_bytes(),
                        certificate=(folder / "bench.crt").read_bytes(),
                        ca=(folder / "ca.crt").read_bytes())  # fmt: skip
        self.admin = ControlClient(f"127.0.0.1:{self.port}", tls=tls)

    def _spawn(self, name: str, args: list[str]) -> None:
        out = open(self.root / f"{name}.out", "ab")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True))  # fmt: skip

    def run(self, app_dir: Path, config: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """Start a run, wait for it: (``run show``, wall seconds)."""
        from consortium.apps.bundle import make_bundle

        started = time.perf_counter()
        run_id = self.admin.start_run(make_bundle(app_dir), config, SEED)
        while (info := self.admin.show_run(run_id))["status"] in ("pending", "running"):
            time.sleep(0.2)
        if info["status"] != "finished":
            raise RuntimeError(f"run {run_id} {info['status']}: {info.get('error')}")
        info["model"] = str(self.root / "server" / "runs" / run_id / "model.npz")
        return info, time.perf_counter() - started

    def close(self) -> None:
        self.admin.close()
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def measure(system: str, rounds: int) -> tuple[Row, dict[str, np.ndarray]]:
    config: dict[str, Any] = {"num-rounds": rounds}  # the apps' defaults: the tuned config
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix=f"secagg-bench-{system}-") as tmp:
        federation = Federation(Path(tmp), APPS[system])
        try:
            info, wall = federation.run(APPS[system], config)
            model = load_model(Path(info["model"]))
        finally:
            federation.close()
    centers = hd.load_all(split_seed=int(app.TUNED_RUN_CONFIG["split-seed"]))  # type: ignore[arg-type]
    scores = app.score(model, centers)
    seconds = [float(r["seconds"]) for r in info["rounds"]]
    steady = seconds[1:] or seconds
    stages: dict[str, float] = {}
    if system == "secagg+":
        metrics = [r["metrics"] for r in info["rounds"]]
        later = metrics[1:] or metrics
        stages["setup"] = float(metrics[0].get(STAGES["setup"], 0.0))
        for stage in ("train", "unmask", "sum"):
            stages[stage] = statistics.median(float(m[STAGES[stage]]) for m in later)
        before = [float(m[STAGES["before-evaluate"]]) for m in later]
        other = [b - sum(float(m[STAGES[k]]) for k in ("train", "unmask", "sum"))
                 for b, m in zip(before, later, strict=True)]  # fmt: skip
        stages["other"] = statistics.median(other)
        stages["evaluate"] = statistics.median(
            s - b for s, b in zip(seconds[1:] or seconds, before, strict=True)
        )
    row = Row(system, rounds, scores.mean_accuracy, scores.pooled_accuracy, seconds,
              statistics.median(steady), statistics.median(steady) / ROUND_TRIPS[system],
              wall, load, stages)  # fmt: skip
    return row, {k: np.asarray(v) for k, v in model.items()}


@dataclass
class Repeat:
    """One measurement of each system, back to back."""

    fedavg: Row
    secure: Row
    max_param_diff: float

    @property
    def ratio(self) -> float:
        return self.secure.median_round_s / self.fedavg.median_round_s

    @property
    def same_accuracy(self) -> bool:
        return f"{self.fedavg.mean_accuracy:.3f}" == f"{self.secure.mean_accuracy:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    repeats: list[Repeat] = []
    for repeat in range(args.repeats):
        order = ("fedavg", "secagg+") if repeat % 2 == 0 else ("secagg+", "fedavg")
        done = {system: measure(system, args.rounds) for system in order}
        (plain, plain_model), (secure, secure_model) = done["fedavg"], done["secagg+"]
        gap = max(float(np.abs(plain_model[k] - secure_model[k]).max()) for k in plain_model)
        repeats.append(Repeat(plain, secure, gap))
    print(f"heart disease, 4 hospitals, {args.rounds} rounds, deployed (mTLS, loopback), "
          f"{args.repeats} repeats")  # fmt: skip
    print("| repeat | system | mean accuracy | pooled accuracy | s/round (median 2..N) "
          "| round trips | s/round trip | load avg | SecAgg+/FedAvg |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for i, rep in enumerate(repeats, 1):
        for r in (rep.fedavg, rep.secure):
            print(f"| {i} | {r.system} | {r.mean_accuracy:.3f} | {r.pooled_accuracy:.3f} | "
                  f"{r.median_round_s:.3f} | {ROUND_TRIPS[r.system]} | "
                  f"{r.per_round_trip_s:.3f} | {r.load_average:.1f} | "
                  f"{rep.ratio:.2f}x |")  # fmt: skip
    ratios = [rep.ratio for rep in repeats]
    split = {stage: statistics.median(rep.secure.stage_s[stage] for rep in repeats)
             for stage in SPLIT}  # fmt: skip
    same = all(rep.same_accuracy for rep in repeats)
    gap = max(rep.max_param_diff for rep in repeats)
    print(f"accuracy equal to 3 decimals in every repeat: {same}; largest parameter "
          f"difference {gap:.2e}")  # fmt: skip
    print(f"SecAgg+ / FedAvg seconds per round: median {statistics.median(ratios):.2f}x "
          f"(repeats: {', '.join(f'{x:.2f}x' for x in ratios)})")  # fmt: skip
    print("SecAgg+ stages, median s: " + ", ".join(f"{k} {v:.3f}" for k, v in split.items())
          + " (setup: round 1 only)")  # fmt: skip
    if args.json:
        report = {
            "repeats": [{"fedavg": asdict(rep.fedavg), "secagg+": asdict(rep.secure),
                         "max_param_diff": rep.max_param_diff, "round_ratio": rep.ratio,
                         "accuracy_equal_3dp": rep.same_accuracy} for rep in repeats],
            "round_ratio_median": statistics.median(ratios),
            "secagg_stage_s_median": split,
            "accuracy_equal_3dp": same,
            "max_param_diff": gap,
        }  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
