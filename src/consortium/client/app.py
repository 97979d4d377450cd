"""ClientApp: the code a silo runs on each task, the same in simulation and deployment."""

from __future__ import annotations

from collections.abc import Callable

from consortium.client.numpy_client import NumPyClient, numpy_client_handlers
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.message import EVALUATE, QUERY, TRAIN, Message

#: A handler turns a task message into its reply.
Handler = Callable[[Message, Context], Message]
ClientFn = Callable[[Context], NumPyClient]


class ClientApp:
    """Routes each incoming message to the handler registered for its kind.

    Two styles, mixable:

    * message handlers, registered with ``@app.train()``, ``@app.evaluate()``,
      ``@app.query()`` or ``@app.handler("my-kind")``;
    * ``ClientApp(client_fn=...)`` where ``client_fn(context)`` returns a
      :class:`NumPyClient` (``get_parameters`` / ``fit`` / ``evaluate``).

    Exceptions raised by a handler propagate to the runner (simulation engine
    or node process), which reports them with their traceback.
    """

    def __init__(self, client_fn: ClientFn | None = None) -> None:
        self._handlers: dict[str, Handler] = {}
        self.client_fn = client_fn
        if client_fn is not None:
            self._handlers.update(numpy_client_handlers(client_fn))

    def handler(self, kind: str) -> Callable[[Handler], Handler]:
        """Register a handler for messages of ``kind``."""
        if not kind or not isinstance(kind, str):
            raise ConfigError(f"a message kind must be a non-empty string, got {kind!r}")

        def register(fn: Handler) -> Handler:
            self._handlers[kind] = fn
            return fn

        return register

    def train(self) -> Callable[[Handler], Handler]:
        return self.handler(TRAIN)

    def evaluate(self) -> Callable[[Handler], Handler]:
        return self.handler(EVALUATE)

    def query(self) -> Callable[[Handler], Handler]:
        return self.handler(QUERY)

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def __call__(self, message: Message, context: Context) -> Message:
        kind = message.metadata.kind
        handler = self._handlers.get(kind)
        if handler is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            raise ConfigError(f"this ClientApp has no handler for {kind!r} messages (has: {known})")
        reply = handler(message, context)
        if not isinstance(reply, Message):
            raise TypeError(
                f"the {kind!r} handler must return a Message (use message.reply(...)), "
                f"got {type(reply).__name__}"
            )
        return reply
