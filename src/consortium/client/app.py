"""ClientApp: the code a silo runs on each task, the same in simulation and deployment."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from consortium.client.numpy_client import NumPyClient, numpy_client_handlers
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.message import EVALUATE, QUERY, TRAIN, Message

#: A handler turns a task message into its reply.
Handler = Callable[[Message, Context], Message]
ClientFn = Callable[[Context], NumPyClient]
#: A mod (middleware) sees each task on its way in and its reply on the way out:
#: ``mod(message, context, call_next)`` returns the reply, usually ``call_next(message,
#: context)`` or a changed copy of it; it may also answer without calling ``call_next``.
Mod = Callable[[Message, Context, Handler], Message]


class ClientApp:
    """Routes each incoming message to the handler registered for its kind.

    Two styles, mixable:

    * message handlers, registered with ``@app.train()``, ``@app.evaluate()``,
      ``@app.query()`` or ``@app.handler("my-kind")``;
    * ``ClientApp(client_fn=...)`` where ``client_fn(context)`` returns a
      :class:`NumPyClient` (``get_parameters`` / ``fit`` / ``evaluate``).

    ``mods`` (see :data:`Mod` and ``docs/mods.md``) wrap every call, whatever
    the message kind: the first mod is the outermost, so it sees the task first
    and the reply last. Calling the app runs its mods, so an app wrapped by
    another (``Ditto.wrap``) keeps them.

    Exceptions raised by a mod or a handler propagate to the caller; the task
    runner (:func:`consortium.client.task.run_task`) turns them into an error
    reply with their traceback.
    """

    def __init__(self, client_fn: ClientFn | None = None, *, mods: Iterable[Mod] = ()) -> None:
        self._handlers: dict[str, Handler] = {}
        self.client_fn = client_fn
        if client_fn is not None:
            self._handlers.update(numpy_client_handlers(client_fn))
        self._mods = _check_mods(mods)
        self._entry: Handler = self._dispatch
        for position in reversed(range(len(self._mods))):
            self._entry = _link(position, self._mods[position], self._entry)

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
    def mods(self) -> tuple[Mod, ...]:
        """The mods every call passes through, outermost first."""
        return self._mods

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def __call__(self, message: Message, context: Context) -> Message:
        """The reply to ``message``: through the mods, then the handler for its kind."""
        return self._entry(message, context)

    def _dispatch(self, message: Message, context: Context) -> Message:
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


def _check_mods(mods: Iterable[Mod]) -> tuple[Mod, ...]:
    if callable(mods) or isinstance(mods, str | bytes):
        raise ConfigError(f"mods must be a list of mods, got {mods!r}")
    try:
        out = tuple(mods)
    except TypeError:
        raise ConfigError(f"mods must be a list of mods, got {mods!r}") from None
    for position, mod in enumerate(out):
        if not callable(mod):
            raise ConfigError(
                f"mods[{position}] must be a callable mod(message, context, call_next), "
                f"got {type(mod).__name__} {mod!r}"
            )
    return out


def _link(position: int, mod: Mod, call_next: Handler) -> Handler:
    """``mod`` in front of ``call_next``, checking that it answers with a Message."""

    def call(message: Message, context: Context) -> Message:
        reply = mod(message, context, call_next)
        if not isinstance(reply, Message):
            raise TypeError(
                f"mods[{position}] ({mod!r}) must return a Message (the reply), "
                f"got {type(reply).__name__}"
            )
        return reply

    return call
