"""Vertical federated learning: parties that hold different columns of the same people.

Private set intersection (PSI) comes first: the parties learn which ids
they share, and nothing else about each other's ids; the server that relays
their messages learns only the sizes. It is ECDH-PSI over the prime-order
subgroup of Edwards25519 (``pip install 'consortium[vertical]'`` for PyNaCl)::

    # the client app (every party)
    app = ClientApp()
    register_psi(app, lambda context: load_ids(context.node_config["data"]))

    # the server app's main
    summary = run_psi(grid, run_id=context.run_id, parties=["hospital", "lab"])

    # later, on each node: its rows in the order every party shares
    rows = aligned_indices(context)   # aligned_rows(context): their ids

See ``docs/vertical.md`` for the protocol, who learns what and the numbers.
"""

from consortium.vertical.psi_node import IdsFn, psi_handlers, register_psi
from consortium.vertical.psi_protocol import NODE_MAX_SESSIONS, NODE_SECRET, NODE_THREADS, PSI_KINDS
from consortium.vertical.psi_server import PsiSummary, run_psi
from consortium.vertical.psi_state import (
    PSI_STATE_KEY,
    PsiResult,
    aligned_indices,
    aligned_rows,
    psi_result,
)

__all__ = [
    "NODE_MAX_SESSIONS",
    "NODE_SECRET",
    "NODE_THREADS",
    "PSI_KINDS",
    "PSI_STATE_KEY",
    "IdsFn",
    "PsiResult",
    "PsiSummary",
    "aligned_indices",
    "aligned_rows",
    "psi_handlers",
    "psi_result",
    "register_psi",
    "run_psi",
]
