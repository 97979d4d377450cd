"""What the server tells a node outside of Messages: its welcome, and a run's app.

Plain records shared by the node (which reads them), the server (which fills
them) and whatever carries them between the two (gRPC, or in memory), so that
none of those has to import another to name them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Welcome:
    """The server's answer to a node's hello: who the node is, and the rules of the link."""

    #: the node's name, as the server authenticated it (its certificate's name)
    node_id: str
    heartbeat_interval: float
    #: the largest message the server accepts
    max_message_bytes: int


@dataclass(frozen=True, slots=True)
class RunBundle:
    """What a node needs to run the tasks of one run."""

    run_id: str
    app_name: str
    app_version: str
    client_entry: str
    bundle: bytes
    bundle_sha256: str
    run_config_json: str
    seed: int
