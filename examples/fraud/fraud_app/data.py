"""Each node's provider data: generated in simulation, read from a CSV in deployment."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from consortium.core.context import Context
from consortium.core.protocol import NUM_PARTITIONS, PARTITION_ID
from consortium.datasets.fraud import make_provider_fraud


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@functools.cache
def _federation(num_providers: int, rows: int, positive_rate: float, seed: int) -> tuple:  # type: ignore[type-arg]
    return tuple(
        make_provider_fraud(
            num_providers=num_providers,
            rows_per_provider=rows,
            positive_rate=positive_rate,
            seed=seed,
        )
    )


def load(context: Context) -> Split:
    """This node's rows, split 75/25 stratified (seeded by the node id)."""
    cfg, run = context.node_config, context.run_config
    if "data-file" in cfg:  # a real silo: CSV with a header, label column "fraud"
        table = np.genfromtxt(Path(str(cfg["data-file"])), delimiter=",", names=True)
        names = [n for n in table.dtype.names or () if n != "fraud"]
        x = np.column_stack([table[n] for n in names]).astype(np.float64)
        y = table["fraud"].astype(np.int64)
    else:
        providers = _federation(
            int(cfg[NUM_PARTITIONS]),
            int(run["rows-per-provider"]),
            float(run["positive-rate"]),
            int(run["data-seed"]),
        )
        provider = providers[int(cfg[PARTITION_ID])]
        x, y = provider.x, provider.y
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=int(context.rng(0).integers(2**31))
    )
    return Split(x_train, y_train, x_test, y_test)
