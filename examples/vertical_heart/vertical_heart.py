"""Vertical heart disease: PSI, then vertical logistic regression, across three parties.

The UCI heart-disease patients (all four hospitals, FLamby's preprocessing,
740 rows) split by columns:

* ``hospital`` — demographics and chest pain (age, sex, cp) and the diagnosis:
  the label holder;
* ``cardiology`` — ECG and exercise test (restecg, thalach, exang, oldpeak);
* ``clinical-lab`` — resting blood pressure, cholesterol, fasting blood sugar.

Each party has lost a different random ``drop-fraction`` of the patients
(seeded by ``drop-seed`` and the party). A node picks its party from its node
config (``consortium node --config party=cardiology``); in simulation, node
``i`` is party ``i``. The server runs the PSI, then vertical LR, and (with
``compare-central``) fits scikit-learn on the same patients joined in one
place — the public data it can load itself — and prints both.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from types import MappingProxyType

import numpy as np

from consortium.client.app import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError, RoundFailed
from consortium.core.grid import Grid
from consortium.core.protocol import PARTITION_ID
from consortium.core.records import Config
from consortium.datasets import heart_disease as hd
from consortium.server import ServerApp
from consortium.server.context import ServerContext
from consortium.vertical import aligned_rows, register_psi, run_psi
from consortium.vertical.boost import (
    BoostParams,
    VerticalBoostResult,
    register_vertical_boost,
    run_vertical_boost,
)
from consortium.vertical.logistic import (
    PartyData,
    VerticalLRParams,
    VerticalLRResult,
    register_vertical_lr,
    run_vertical_lr,
)
from consortium.vertical.logistic_party import local_view
from consortium.vertical.split import (
    SplitParams,
    SplitResult,
    register_split_learning,
    run_split_learning,
)

log = logging.getLogger("vertical_heart")

#: Each party's columns (of :data:`consortium.datasets.heart_disease.FEATURE_NAMES`).
#: ``slope`` is not among the cardiology lab's: FLamby's preprocessing drops it (it is
#: missing for most patients outside Cleveland).
PARTIES = MappingProxyType(
    {
        "hospital": ("age", "sex", "cp_2", "cp_3", "cp_4"),
        "cardiology": ("restecg_1", "restecg_2", "thalach", "exang", "oldpeak"),
        "clinical-lab": ("trestbps", "chol", "fbs"),
    }
)
LABEL_HOLDER = "hospital"


@functools.cache
def _all_patients() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Every patient of the four hospitals: ids, raw features, labels."""
    ids: list[str] = []
    xs, ys = [], []
    for center in hd.CENTERS:
        data = hd.load_center(center, normalize=False)
        x = np.vstack([data.x_train, data.x_test])
        ids += [f"{center}-{i:03d}" for i in range(x.shape[0])]
        xs.append(x)
        ys.append(np.concatenate([data.y_train, data.y_test]))
    return tuple(ids), np.vstack(xs), np.concatenate(ys)


@functools.cache
def party_data(party: str, drop_fraction: float = 0.2, drop_seed: int = 7) -> PartyData:
    """What ``party`` holds: its columns of the patients it has not lost."""
    if party not in PARTIES:
        raise ConfigError(f"unknown party {party!r}; valid choices: {', '.join(PARTIES)}")
    ids, x, y = _all_patients()
    rng = np.random.default_rng([drop_seed, list(PARTIES).index(party)])
    dropped = rng.choice(len(ids), size=round(drop_fraction * len(ids)), replace=False)
    kept = np.setdiff1d(np.arange(len(ids)), dropped)
    columns = [hd.FEATURE_NAMES.index(name) for name in PARTIES[party]]
    return PartyData(
        ids=[ids[i] for i in kept],
        x=x[np.ix_(kept, columns)],
        feature_names=PARTIES[party],
        y=y[kept] if party == LABEL_HOLDER else None,
    )


def _number(config: Config, key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"run-config {key!r} must be a number, got {value!r}")
    return float(value)


def node_party(context: Context) -> PartyData:
    """The node's party: ``party`` in its node config, else its simulation partition."""
    party = context.node_config.get("party", context.node_config.get(PARTITION_ID))
    if isinstance(party, int) and not isinstance(party, bool) and 0 <= party < len(PARTIES):
        party = list(PARTIES)[party]
    if not isinstance(party, str):
        raise ConfigError(
            f"vertical-heart nodes need 'party' ({', '.join(PARTIES)}) in their node config"
        )
    cfg = context.run_config
    return party_data(party, _number(cfg, "drop-fraction", 0.2), int(_number(cfg, "drop-seed", 7)))


client_app = ClientApp()
register_psi(client_app, lambda context: list(node_party(context).ids))
register_vertical_lr(client_app, node_party, aligned_rows)
register_vertical_boost(client_app, node_party, aligned_rows)
register_split_learning(client_app, node_party, aligned_rows)

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: ServerContext) -> None:
    """PSI, then vertical LR (``model = "lr"``) or vertical boosting (``"boost"``)."""
    cfg = context.run_config
    if cfg.get("model", "lr") == "boost":
        return boost_main(grid, context)
    if cfg.get("model") == "split":
        return split_main(grid, context)
    params = VerticalLRParams.from_config(cfg)
    need = int(_number(cfg, "min-nodes", 3))
    nodes = grid.wait_for_nodes(need, timeout=params.timeout)
    if len(nodes) < need:
        raise RoundFailed(f"vertical heart needs {need} parties online, got {nodes}")
    context.start_run(nodes, params.iterations, {"protocol": "PSI + vertical LR (Paillier)"})
    psi = run_psi(grid, run_id=context.run_id, parties=nodes, timeout=params.timeout)
    log.info("PSI: %s", psi)
    result = run_vertical_lr(grid, context, params, nodes)
    model = Arrays()
    for node, arrays in result.weights.items():
        for name, value in arrays.items():
            model[f"{node}.{name}"] = value
    if cfg.get("compare-central", False) is True:
        print(comparison_table(result, central_baseline(cfg)))
    context.finish(model)


def central_baseline(cfg: Config) -> dict[str, object]:
    """scikit-learn on the same patients joined in one place: same split, same scaling."""
    from sklearn.linear_model import LogisticRegression

    params = VerticalLRParams.from_config(cfg)
    drop = (_number(cfg, "drop-fraction", 0.2), int(_number(cfg, "drop-seed", 7)))
    parties = {name: party_data(name, *drop) for name in PARTIES}
    shared = sorted(set.intersection(*(set(p.ids) for p in parties.values())))
    views = {name: local_view(p, shared, params) for name, p in parties.items()}
    x_train = np.hstack([v.x_train for v in views.values()])
    x_test = np.hstack([v.x_test for v in views.values()])
    label = views[LABEL_HOLDER]
    assert label.y_train is not None and label.y_test is not None
    c = 1.0 / (params.l2 * x_train.shape[0]) if params.l2 > 0 else 1e12
    model = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(x_train, label.y_train)
    names = [f"{name}.{f}" for name, v in views.items() for f in v.feature_names]
    return {
        "shared": len(shared),
        "test_accuracy": float((model.predict(x_test) == label.y_test).mean()),
        "coefficients": dict(zip(names, model.coef_[0].tolist(), strict=True)),
        "intercept": float(model.intercept_[0]),
    }


def vertical_coefficients(result: VerticalLRResult, parties: Sequence[str]) -> dict[str, float]:
    """The revealed weights by ``party.feature``, for the party each node said it is."""
    out: dict[str, float] = {}
    for p in [result.active, *result.passives]:
        name = next(n for n in parties if PARTIES[n] == p.feature_names)
        weights = result.weights[p.node]["weights"]
        out.update({f"{name}.{f}": float(w) for f, w in zip(p.feature_names, weights, strict=True)})
    return out


def comparison_table(result: VerticalLRResult, central: dict[str, object]) -> str:
    """Vertical LR next to the centralised model: accuracy and every coefficient."""
    coefficients = central["coefficients"]
    assert isinstance(coefficients, dict)
    lines = [
        f"shared patients: {central['shared']}",
        f"{'':24} {'vertical':>10} {'central':>10}",
        f"{'test accuracy':24} {result.metrics.get('test_accuracy', float('nan')):10.4f} "
        f"{central['test_accuracy']:10.4f}",
    ]
    if result.weights:
        mine = vertical_coefficients(result, list(PARTIES))
        bias = float(result.weights[result.active.node]["bias"][0])
        lines.append(f"{'intercept':24} {bias:10.4f} {central['intercept']:10.4f}")
        lines += [
            f"{name:24} {mine[name]:10.4f} {value:10.4f}" for name, value in coefficients.items()
        ]
    return "\n".join(lines)


def boost_main(grid: Grid, context: ServerContext) -> None:
    """PSI, then vertical gradient boosting (SecureBoost), and the centralised LightGBM."""
    cfg = context.run_config
    params = BoostParams.from_config(cfg)
    need = int(_number(cfg, "min-nodes", 3))
    nodes = grid.wait_for_nodes(need, timeout=params.timeout)
    if len(nodes) < need:
        raise RoundFailed(f"vertical heart needs {need} parties online, got {nodes}")
    context.start_run(nodes, params.trees, {"protocol": "PSI + vertical boosting (Paillier)"})
    log.info("PSI: %s", run_psi(grid, run_id=context.run_id, parties=nodes, timeout=params.timeout))
    result = run_vertical_boost(grid, context, params, nodes)
    if cfg.get("compare-central", False) is True:
        print(boost_table(result, central_boost_baseline(cfg)))
    context.finish(Arrays())  # the trees stay with their parties


def central_boost_baseline(cfg: Config) -> dict[str, float]:
    """LightGBM with the same hyper-parameters on the same patients joined in one place."""
    import lightgbm

    params = BoostParams.from_config(cfg)
    drop = (_number(cfg, "drop-fraction", 0.2), int(_number(cfg, "drop-seed", 7)))
    parties = {name: party_data(name, *drop) for name in PARTIES}
    shared = sorted(set.intersection(*(set(p.ids) for p in parties.values())))
    views = {name: local_view(p, shared, params.split_view) for name, p in parties.items()}
    x_train = np.hstack([v.x_train for v in views.values()])
    x_test = np.hstack([v.x_test for v in views.values()])
    label = views[LABEL_HOLDER]
    assert label.y_train is not None and label.y_test is not None
    model = lightgbm.LGBMClassifier(
        n_estimators=params.trees, max_depth=params.depth, num_leaves=2**params.depth,
        learning_rate=params.lr, reg_lambda=params.l2, min_child_weight=params.min_child_weight,
        min_child_samples=1, max_bin=params.bins, min_data_in_bin=1, min_split_gain=0.0,
        verbose=-1,
    ).fit(x_train, label.y_train)  # fmt: skip
    return {
        "shared": len(shared),
        "train_accuracy": float((model.predict(x_train) == label.y_train).mean()),
        "test_accuracy": float((model.predict(x_test) == label.y_test).mean()),
    }


def boost_table(result: VerticalBoostResult, central: dict[str, float]) -> str:
    """Vertical boosting next to centralised LightGBM, and who owns the first tree's splits."""
    rows = [("train accuracy", "accuracy"), ("test accuracy", "test_accuracy")]
    return "\n".join([
        f"shared patients: {central['shared']:.0f}",
        f"{'':24} {'vertical':>10} {'LightGBM':>10}",
        *(f"{name:24} {result.metrics.get(key, float('nan')):10.4f} "
          f"{central[key if key != 'accuracy' else 'train_accuracy']:10.4f}"
          for name, key in rows),
        f"first tree's splits (level order): {', '.join(o or '-' for o in result.owners[0])}",
    ])  # fmt: skip


def split_main(grid: Grid, context: ServerContext) -> None:
    """PSI, then split learning (torch), and the same layers trained on the joined columns."""
    cfg = context.run_config
    params = SplitParams.from_config(cfg)
    need = int(_number(cfg, "min-nodes", 3))
    nodes = grid.wait_for_nodes(need, timeout=params.timeout)
    if len(nodes) < need:
        raise RoundFailed(f"vertical heart needs {need} parties online, got {nodes}")
    context.start_run(nodes, params.epochs, {"protocol": "PSI + split learning (torch)"})
    log.info("PSI: %s", run_psi(grid, run_id=context.run_id, parties=nodes, timeout=params.timeout))
    result = run_split_learning(grid, context, params, nodes)
    if cfg.get("compare-central", False) is True:
        central = central_split_baseline(cfg, result, context.seed)
        print(split_table(result, central))
    model = Arrays()
    for node, layers in result.weights.items():
        for name, value in layers.items():
            model[f"{node}.{name}"] = value
    context.finish(model)


def central_split_baseline(cfg: Config, result: SplitResult, seed: int) -> dict[str, float]:
    """The split run's layers trained on the joined columns: same seeds, batches and steps
    (each node's layers start from its node id and the run seed, as on the node)."""
    from consortium.vertical.split_central import train_central

    params = SplitParams.from_config(cfg)
    drop = (_number(cfg, "drop-fraction", 0.2), int(_number(cfg, "drop-seed", 7)))
    data = {p.node: party_data(_party_of(p.feature_names), *drop)
            for p in [result.active, *result.passives]}  # fmt: skip
    shared = sorted(set.intersection(*(set(d.ids) for d in data.values())))
    views = [(node, local_view(d, shared, params.split_view)) for node, d in data.items()]
    return train_central(views, params, seed).metrics


def _party_of(feature_names: Sequence[str]) -> str:
    return next(name for name, columns in PARTIES.items() if columns == tuple(feature_names))


def split_table(result: SplitResult, central: dict[str, float]) -> str:
    """Split learning next to the same layers trained on the joined columns."""
    rows = [("train loss", "loss"), ("train accuracy", "accuracy"),
            ("test loss", "test_loss"), ("test accuracy", "test_accuracy")]  # fmt: skip
    return "\n".join([
        f"{'':24} {'split':>10} {'central':>10}",
        *(f"{name:24} {result.metrics.get(key, float('nan')):10.4f} {central[key]:10.4f}"
          for name, key in rows),
        f"bytes exchanged: {result.bytes_exchanged}, grid round trips: {result.round_trips}",
    ])  # fmt: skip
