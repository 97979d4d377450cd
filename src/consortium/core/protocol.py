"""Every name the framework reserves in what the server and the nodes exchange.

A record name, metric key or config key that one side writes and the other
reads is a protocol constant: it lives here, once, and both sides import it.
An app may use any other name for its own records, metrics and configs; it
should not reuse these for something else. Each entry says who writes it and
who reads it.

The message vocabulary (record names, message kinds, the server's node id)
is defined in :mod:`consortium.core.message` and re-exported here, so this
module is the one place to look.
"""

from __future__ import annotations

from consortium.core.message import (
    CONFIG,
    EVALUATE,
    METRICS,
    MODEL,
    QUERY,
    SERVER_ID,
    TIMING_RECORD,
    TRAIN,
)

__all__ = [
    "BASE_SETTINGS",
    "CLIPPED_UPDATES",
    "COMPRESSION_AUX_RECORD",
    "COMPRESSION_CODES_RECORD",
    "COMPRESSION_RECORD",
    "COMPRESSION_RESIDUAL_STATE",
    "CONFIG",
    "DITTO_STATE",
    "ERROR_APP_PROCESS",
    "ERROR_NODE_LOST",
    "ERROR_NODE_OFFLINE",
    "ERROR_UNKNOWN_NODE",
    "EVALUATE",
    "FEDBUFF_BUFFERED",
    "FEDBUFF_STALENESS_MAX",
    "FEDBUFF_STALENESS_MEAN",
    "GLOBAL_SUFFIX",
    "INITIAL_LOSS_KEY",
    "LOCAL_LAYERS_STATE",
    "LOCAL_STEPS_KEY",
    "LOSS",
    "MALICIOUS",
    "METRICS",
    "MODEL",
    "NUM_EXAMPLES",
    "NUM_PARTITIONS",
    "PARAM_BACKEND",
    "PARAM_NUM_NODES",
    "PARAM_NUM_ROUNDS",
    "PARAM_NUM_STEPS",
    "PARAM_SEED",
    "PARTITION_ID",
    "PERSONAL_SUFFIX",
    "PROX_MU_KEY",
    "QUERY",
    "SCAFFOLD_CONTROL_RECORD",
    "SCAFFOLD_DELTA_RECORD",
    "SCAFFOLD_STATE_KEY",
    "SERVER_ID",
    "STRATEGY_NAME_PARAM",
    "STRATEGY_PARAM_PREFIX",
    "STRATEGY_SETTING",
    "TIMING_RECORD",
    "TIMING_TRAIN",
    "TIMING_UPLOAD",
    "TIMING_WAIT",
    "TRAIN",
]

# -- message records and kinds (defined in consortium.core.message) -----------------------
# MODEL          Arrays record with the model: the server writes it into train/evaluate
#                tasks, a node into its train and query replies.
# CONFIG         Config record of a task: the strategy's per-node config (server -> node).
# METRICS        Metrics record of a reply: written by the node's handler, read by the
#                server's reply validation and the strategy.
# TIMING_RECORD  Metrics record of a reply saying where a task's time went: the node
#                runner writes TIMING_TRAIN, the server's fleet adds TIMING_WAIT and
#                TIMING_UPLOAD; the round loop, the state store and `consortium run`
#                read them.
# TRAIN, EVALUATE, QUERY  message kinds of the default round loop (server -> node).
# SERVER_ID      node id of the aggregation server (the source of every task).

# -- metrics in a reply's METRICS record ---------------------------------------------------

#: How many examples the node trained or evaluated on. Written by every node handler
#: (NumPyClient's adapter, ``scaffold_train``, ``ml.*.evaluate``); read by the server's
#: reply validation (a train reply without it is rejected), the strategies (example
#: weights), the metric aggregations (which skip it) and the trackers.
NUM_EXAMPLES = "num_examples"

#: Evaluation loss. Written by NumPyClient's evaluate adapter (``EvaluateResult.loss``)
#: and the ``ml`` evaluators; read by the trackers and reports like any metric.
LOSS = "loss"

#: Local SGD steps a node ran this round (τ_i; ``||a_i||_1`` for other local optimisers).
#: Written by the node's train handler; read by :class:`~consortium.strategy.FedNova`.
LOCAL_STEPS_KEY = "local_steps"

#: The node's loss at the received global model, before training. Written by the node's
#: train handler; read by :class:`~consortium.strategy.QFedAvg`.
INITIAL_LOSS_KEY = "initial_loss"

#: Suffix of an evaluation metric of a node's personalised model (``accuracy_personal``).
#: Written by the ``client.personal`` wrappers; read by reports and benchmarks.
PERSONAL_SUFFIX = "_personal"

#: Suffix of an evaluation metric of the global model beside a personal one
#: (``accuracy_global``). Written by :class:`~consortium.client.personal.Ditto`.
GLOBAL_SUFFIX = "_global"

# -- timing keys inside TIMING_RECORD (seconds) ---------------------------------------------

#: Time the node's handler took. Written by the node runner; read by the server's fleet
#: (to split the rest of the round trip), the round loop, the state store and the CLI.
TIMING_TRAIN = "train"
#: Time a task waited in the server's queue before the node pulled it. Written by the
#: server's fleet; read by the state store and ``consortium run show``.
TIMING_WAIT = "wait"
#: Transfer time (download and upload) of a task. Written by the server's fleet; read by
#: the state store and ``consortium run show``.
TIMING_UPLOAD = "upload"

# -- train config (server -> node) ----------------------------------------------------------

#: FedProx's proximal coefficient μ. Written by :class:`~consortium.strategy.FedProx`
#: into every train config; read by the node's trainer (``ml.logistic.train(prox_mu=...)``).
PROX_MU_KEY = "prox-mu"

# -- extra Arrays records of a task or reply ------------------------------------------------

#: SCAFFOLD's server control variate ``c``. Written by
#: :class:`~consortium.strategy.Scaffold` into every train task; read by
#: :func:`consortium.client.scaffold.scaffold_train` on the node.
SCAFFOLD_CONTROL_RECORD = "scaffold.c"
#: SCAFFOLD's control-variate update ``c_i+ - c_i``. Written by ``scaffold_train`` into
#: the train reply; read by :class:`~consortium.strategy.Scaffold`.
SCAFFOLD_DELTA_RECORD = "scaffold.delta_c"

#: A compressed train reply (``consortium.client.compression_mod``) carries no ``model``
#: record but these: the codec's settings (a Config record: ``codec``, ``delta``,
#: ``chunk``, ``version``), the codes (one array per model array) and the side arrays
#: (int8 scales, top-k indices). Written by ``compression_mod``; read (decoded, then
#: validated like any update) by the server's reply validation, ``server.decode``.
COMPRESSION_RECORD = "compression"
COMPRESSION_CODES_RECORD = "compression.codes"
COMPRESSION_AUX_RECORD = "compression.aux"

# -- keys of a node's persistent NodeState (node only, but shared with the app's own) ------

#: SCAFFOLD's node control variate ``c_i`` in ``context.state.arrays``
#: (written and read by ``scaffold_train``).
SCAFFOLD_STATE_KEY = "scaffold.c_i"
#: The local parameters (``state.arrays``) and parameter order (``state.configs``) kept
#: by :class:`~consortium.client.personal.LocalLayers`.
LOCAL_LAYERS_STATE = "personal.local-layers"
#: The personal model kept by :class:`~consortium.client.personal.Ditto` in ``state.arrays``.
DITTO_STATE = "personal.ditto"
#: The error-feedback residual of ``compression_mod`` (what compression left out of
#: the updates so far, added to the next one), in ``state.arrays``.
COMPRESSION_RESIDUAL_STATE = "compression.residual"

# -- node config (what a node is told about itself) -----------------------------------------

#: This node's index among the simulated nodes (0-based). Written by the simulation's
#: default node config; read by apps to pick their data partition.
PARTITION_ID = "partition-id"
#: How many nodes the simulation runs. Written and read as :data:`PARTITION_ID`.
NUM_PARTITIONS = "num-partitions"
#: True on a node the simulation plays as an attacker. Written by
#: ``simulation.attacks.mark_malicious``; read by ``simulation.attacks.is_malicious``.
MALICIOUS = "malicious"

# -- train metrics the server adds to a round's aggregate ----------------------------------

#: How many replies :class:`~consortium.strategy.ClippedUpdates` scaled down this round.
CLIPPED_UPDATES = "clipped_updates"
#: How many arrivals a FedBuff step folded, and their mean and largest staleness.
FEDBUFF_BUFFERED = "buffered"
FEDBUFF_STALENESS_MEAN = "staleness_mean"
FEDBUFF_STALENESS_MAX = "staleness_max"
#: Added by the FedBuff workflow to each folded update's per-node metrics in the history:
#: its staleness, the model version it started from, and its task number (the RNG round
#: the node trained with). Together, in arrival order, they are the run's update sequence.
FEDBUFF_UPDATE_STALENESS = "fedbuff.staleness"
FEDBUFF_UPDATE_BASE_VERSION = "fedbuff.base_version"
FEDBUFF_UPDATE_TASK = "fedbuff.task"

# -- strategy settings and the run's recorded params ---------------------------------------

#: Key of the strategy's name in ``Strategy.settings()``. Written by every strategy; the
#: round loop records it as :data:`STRATEGY_NAME_PARAM`.
STRATEGY_SETTING = "strategy"
#: Namespace of a wrapped strategy's settings inside its wrapper's settings:
#: ``{"strategy": "FedAdam", "base": "FedAvg", "base.fraction_train": 1.0, ...}``.
#: Written by ``StrategyWrapper.settings``; recorded by the round loop like any setting.
BASE_SETTINGS = "base"
#: Prefix under which the round loop records each strategy setting in the run's params
#: (``strategy.fraction_train``), so an app's run config never hides one.
STRATEGY_PARAM_PREFIX = "strategy."
#: The run param holding the strategy's name (its :data:`STRATEGY_SETTING`).
STRATEGY_NAME_PARAM = "strategy.name"
#: Run params the server loops and the simulation record beside the app's run config;
#: read by the trackers, the state store and the dashboard.
PARAM_NUM_ROUNDS = "num_rounds"
PARAM_NUM_STEPS = "num_steps"
PARAM_SEED = "seed"
PARAM_NUM_NODES = "num_nodes"
PARAM_BACKEND = "backend"

# -- error codes of replies the server or the simulation makes up --------------------------

#: A task's node went offline before it was sent (written by the server's fleet).
ERROR_NODE_OFFLINE = "node-offline"
#: A task's node went offline while the task was in flight (written by the server's fleet).
ERROR_NODE_LOST = "node-lost"
#: The server refused a node's result for good (too large, malformed, out of limits); the
#: node answers the task with this error instead (written by the node runner).
ERROR_RESULT_REFUSED = "result-refused"
#: A node's app process for the task's run could not start, died, broke a limit of the
#: node's ``[sandbox]`` or sent what the node refuses; the reason says which, in the
#: node's own words (written by the node runner).
ERROR_APP_PROCESS = "app-process-failed"
#: A task's transfer to its node, or the node's reply, stopped moving and was cut off
#: (written by the server's fleet).
ERROR_TRANSFER_STALLED = "transfer-stalled"
#: A task addressed a node the simulation does not run (written by the simulation grid).
ERROR_UNKNOWN_NODE = "unknown-node"
