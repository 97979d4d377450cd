"""Process-backend worker: loads the ClientApp once, then runs tasks sent as bytes."""

from __future__ import annotations

from collections.abc import Sequence

from consortium.apps.loader import load_app
from consortium.client import task
from consortium.client.app import ClientApp
from consortium.core.context import Context, NodeState
from consortium.core.message import Message
from consortium.core.records import Config
from consortium.core.state_codec import decode_state, encode_state

_APP: ClientApp | None = None


def init_worker(ref: str, path: Sequence[str]) -> None:
    global _APP
    _APP = load_app(ref, path)


def run_task(
    message: bytes,
    node_id: str,
    node_config: Config,
    run_config: Config,
    seed: int,
    state: bytes | None,
) -> tuple[bytes, bytes | None, bool]:
    """Run one task; returns the encoded reply, the node's encoded state, and whether the
    app raised (its state changes are then dropped, as a deployed node drops them)."""
    assert _APP is not None, "init_worker was not called"
    msg = Message.from_bytes(message)
    context = Context(
        node_id=node_id,
        node_config=node_config,
        run_config=run_config,
        state=decode_state(state) if state else NodeState(),
        seed=seed,
    )
    result = task.run_task(_APP, msg, context, error_detail=task.SIMULATION_ERROR_DETAIL)
    new_state = None if context.state.is_empty() else encode_state(context.state)
    return bytes(result.reply.to_bytes()), new_state, result.raised
