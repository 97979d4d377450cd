"""Where each party's rows come from: the synthetic federation, or real provider CSVs.

Three sources, one table layout (one row per provider, numeric feature
columns, a 0/1 ``fraud`` label column, optionally a ``silo`` column):

* simulation on synthetic data (``data-csv = ""``): ``make_provider_fraud``;
* simulation on a real table (``data-csv = "providers.csv"``): rows go to the
  silos by their ``silo`` column, or evenly after a seeded shuffle;
* deployment: each node reads its own ``data-file`` (node config) and the
  server reads its held-out providers from ``data-csv``.

In both simulations each silo's rows are split once: ``holdout-fraction``
goes to the server's central evaluation, the rest to the silo, which splits it
75/25 into training rows and its own test rows. Nothing here downloads anything.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.protocol import NUM_PARTITIONS, PARTITION_ID
from consortium.core.records import Config
from consortium.datasets.fraud import make_provider_fraud

LABEL = "fraud"
SILO = "silo"


@dataclass(frozen=True, eq=False)
class Table:
    """Providers as rows: raw (unscaled) features ``x``, labels ``y``, column names."""

    x: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Split:
    """One silo's rows: training rows (SMOTE may add to them) and its own test rows."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True, eq=False)
class Federation:
    """Every silo's rows (held-out rows removed) and the server's held-out rows."""

    silos: tuple[Table, ...]
    holdout: Table


def read_csv(path: Path) -> tuple[Table, list[str] | None]:
    """A provider table from a CSV with a header; the ``silo`` column's values if it has one."""
    if not path.is_file():
        raise ConfigError(f"data-csv: no file at {path}")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        if LABEL not in header:
            raise ConfigError(f"data-csv {path}: no {LABEL!r} label column (columns: {header})")
        names = tuple(n for n in header if n not in (LABEL, SILO))
        rows = list(reader)
    if not rows or not names:
        raise ConfigError(f"data-csv {path}: needs feature columns and at least one row")
    try:
        x = np.array([[float(r[n]) for n in names] for r in rows], dtype=np.float64)
        y = np.array([int(float(r[LABEL])) for r in rows], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"data-csv {path}: every feature and {LABEL!r} must be a number: {exc}"
        ) from exc
    if not set(np.unique(y)) <= {0, 1}:
        raise ConfigError(f"data-csv {path}: {LABEL!r} must be 0 or 1")
    silos = [r[SILO] for r in rows] if SILO in header else None
    return Table(x, y, names), silos


def _split_rows(table: Table, fraction: float, seed: int) -> tuple[Table, Table]:
    """(kept, held out): ``fraction`` of the rows, stratified by label, held out."""
    if fraction <= 0.0:
        return table, Table(table.x[:0], table.y[:0], table.feature_names)
    if fraction >= 1.0:
        return Table(table.x[:0], table.y[:0], table.feature_names), table
    x_keep, x_out, y_keep, y_out = train_test_split(
        table.x, table.y, test_size=fraction, stratify=table.y, random_state=seed
    )
    return Table(x_keep, y_keep, table.feature_names), Table(x_out, y_out, table.feature_names)


def _sources(run: Config, num_silos: int) -> list[Table]:
    """Each silo's full table (before the hold-out), from the CSV or the generator."""
    path = str(run["data-csv"])
    if not path:
        return [
            Table(p.x, p.y, p.feature_names)
            for p in make_provider_fraud(
                num_providers=num_silos,
                rows_per_provider=int(run["rows-per-provider"]),
                positive_rate=float(run["positive-rate"]),
                seed=int(run["data-seed"]),
            )
        ]
    table, labels = read_csv(Path(path))
    if labels is not None:
        names = sorted(set(labels))
        if len(names) != num_silos:
            raise ConfigError(
                f"data-csv {path}: its {SILO!r} column names {len(names)} silos, "
                f"the run has {num_silos} nodes"
            )
        groups = [np.array([v == name for v in labels]) for name in names]
    else:
        order = np.random.default_rng(int(run["data-seed"])).permutation(len(table.y))
        groups = [
            np.isin(np.arange(len(table.y)), part) for part in np.array_split(order, num_silos)
        ]
    return [Table(table.x[g], table.y[g], table.feature_names) for g in groups]


@functools.cache
def _federation(key: tuple[tuple[str, str], ...], num_silos: int) -> Federation:
    run: Config = dict(key)
    fraction, seed = float(run["holdout-fraction"]), int(run["data-seed"])
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"holdout-fraction must be within [0, 1], got {fraction}")
    parts = [_split_rows(t, fraction, seed + i) for i, t in enumerate(_sources(run, num_silos))]
    names = parts[0][0].feature_names
    holdout = Table(
        np.concatenate([out.x for _, out in parts]),
        np.concatenate([out.y for _, out in parts]),
        names,
    )
    return Federation(tuple(keep for keep, _ in parts), holdout)


_DATA_KEYS = ("data-csv", "rows-per-provider", "positive-rate", "data-seed", "holdout-fraction")


def federation(run: Config, num_silos: int) -> Federation:
    """The whole (simulated) federation's rows; computed once per run config and size."""
    missing = [k for k in _DATA_KEYS if k not in run]
    if missing:
        raise ConfigError(f"run-config lacks {missing}")
    return _federation(tuple((k, str(run[k])) for k in _DATA_KEYS), num_silos)


def holdout(run: Config, num_silos: int) -> Table:
    """The server's held-out providers, for the central evaluation."""
    return federation(run, num_silos).holdout


def load(context: Context) -> Split:
    """This node's rows, split 75/25 stratified (seeded by the node's generator)."""
    cfg = context.node_config
    if "data-file" in cfg:  # a deployed silo: its own CSV, every row is its own
        table, _ = read_csv(Path(str(cfg["data-file"])))
    else:
        table = federation(context.run_config, int(cfg[NUM_PARTITIONS])).silos[
            int(cfg[PARTITION_ID])
        ]
    x_train, x_test, y_train, y_test = train_test_split(
        table.x,
        table.y,
        test_size=0.25,
        stratify=table.y,
        random_state=int(context.rng(0).integers(2**31)),
    )
    return Split(x_train, y_train, x_test, y_test)
