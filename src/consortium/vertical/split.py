"""Split learning: each party runs the bottom of a network on its own columns, the label
holder runs the top; only cut-layer activations and their gradients travel.

Parties hold different columns of the same people, aligned by the PSI; one
of them holds the labels. Per mini-batch, the passive parties send their
cut-layer activations (optionally with Gaussian noise, ``split-noise-std``)
through the server to the label holder, which sends back their gradients.
The rows of each mini-batch come from a permutation every party draws from
the run seed, so no id travels. The protocol and who learns what:
``docs/vertical.md``, "Split learning" (``pip install 'consortium[torch]'``)::

    # the client app (every party)
    app = ClientApp()
    register_psi(app, lambda context: party_data(context).ids)
    register_split_learning(app, party_data, aligned_rows)

    # the server app's main
    run_psi(grid, run_id=context.run_id, parties=nodes)
    result = run_split_learning(grid, context, SplitParams.from_config(cfg), nodes)

torch is imported only by the node's handlers when they run and by
:func:`~.split_central.train_central`; the server side needs no torch.
"""

from consortium.vertical.split_node import register_split_learning
from consortium.vertical.split_protocol import SPLIT_KINDS, SplitParams
from consortium.vertical.split_server import SplitResult, run_split_learning

__all__ = [
    "SPLIT_KINDS",
    "SplitParams",
    "SplitResult",
    "register_split_learning",
    "run_split_learning",
]
