"""Vertical logistic regression: the label holder's labels and every party's features stay home.

Parties hold different columns of the same people, aligned by the PSI; one of
them, the label holder, holds the labels. The gradient of the passive
parties' weights is computed under the label holder's Paillier key and
masked by its owner before the label holder decrypts it (the protocol and
who learns what: ``docs/vertical.md``, "Vertical logistic regression";
``pip install 'consortium[vertical]'`` for ``phe`` and ``gmpy2``)::

    # the client app (every party)
    app = ClientApp()
    register_psi(app, lambda context: party_data(context).ids)
    register_vertical_lr(app, party_data, aligned_rows)

    # the server app's main
    run_psi(grid, run_id=context.run_id, parties=nodes)
    result = run_vertical_lr(grid, context, VerticalLRParams.from_config(cfg), nodes)
"""

from consortium.vertical.logistic_node import register_vertical_lr
from consortium.vertical.logistic_party import AlignedFn, DataFn, PartyData
from consortium.vertical.logistic_protocol import VLR_KINDS, VerticalLRParams
from consortium.vertical.logistic_server import RunContext, VerticalLRResult, run_vertical_lr
from consortium.vertical.relay import Party

__all__ = [
    "VLR_KINDS",
    "AlignedFn",
    "DataFn",
    "Party",
    "PartyData",
    "RunContext",
    "VerticalLRParams",
    "VerticalLRResult",
    "register_vertical_lr",
    "run_vertical_lr",
]
