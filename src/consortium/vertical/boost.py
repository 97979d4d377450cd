"""Vertical gradient boosting (SecureBoost-style): labels, gradients and thresholds stay home.

The label holder encrypts each row's gradient and hessian of the logistic
loss under its Paillier key; the passive parties return encrypted sums of
them per split candidate of their own binned columns; the label holder
decrypts, picks each node's split by XGBoost's gain, and a passive party
that owns a split keeps its threshold and tells only which rows go left (the
protocol and who learns what: ``docs/vertical.md``, "Vertical gradient
boosting (SecureBoost)"; ``pip install 'consortium[vertical]'``)::

    # the client app (every party)
    app = ClientApp()
    register_psi(app, lambda context: party_data(context).ids)
    register_vertical_boost(app, party_data, aligned_rows)

    # the server app's main
    run_psi(grid, run_id=context.run_id, parties=nodes)
    result = run_vertical_boost(grid, context, BoostParams.from_config(cfg), nodes)
"""

from consortium.vertical.boost_node import register_vertical_boost
from consortium.vertical.boost_protocol import VSB_KINDS, BoostParams
from consortium.vertical.boost_server import VerticalBoostResult, run_vertical_boost

__all__ = [
    "VSB_KINDS",
    "BoostParams",
    "VerticalBoostResult",
    "register_vertical_boost",
    "run_vertical_boost",
]
