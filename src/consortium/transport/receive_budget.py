"""The server's budget of bytes held because of the transport (see :class:`ReceiveBudget`)."""

from __future__ import annotations

import threading
import weakref

#: ``--transfer-budget-mb``'s default: small and medium models still move several at
#: once (4 x the model, see below), while a model of 128 MiB or more is received one
#: reply at a time, so the server holds its app's running sum and one reply: under 3 x
#: the model however many nodes reply (docs/operations.md, "Server memory for large
#: models"). A larger budget lets large replies overlap, a model more each.
DEFAULT_TRANSFER_BUDGET_MB = 256
#: Models a ReceiveBudget fitted to a model holds (see :meth:`ReceiveBudget.fit`): the
#: one being sent, the running sum, two replies received at once.
MODELS_IN_BUDGET = 4
#: ...but never less than this, so that small models still move several at once.
MIN_FITTED_BUDGET = 32 * 1024 * 1024


class ReceiveBudget:
    """Bytes of messages the server holds because of the transport, at most ``limit``.

    Three kinds count:

    * *outgoing*: a round's task payload while it is still being sent (a model
      shared by every node's task counts once), and a model a checkpoint is
      still being written from (:meth:`hold_outgoing`);
    * *in flight*: replies being received, or received and waiting for the
      round loop (:meth:`acquire` ... :meth:`consumed`);
    * *retained*: replies the round loop is done with whose memory lives on
      (FedAvg keeps the first one as its running sum), until that memory is
      freed.

    A reply that does not fit waits before anything is allocated (gRPC flow
    control holds the sender meanwhile). Outgoing and in-flight bytes always
    end on their own, so a reply is admitted whenever none is in flight and
    nothing is outgoing, whatever its size and whatever is retained: nothing
    waits forever. With a model larger than a third of the limit this keeps
    the server at about two models during the fold (the running sum and one
    reply), however many nodes reply at once.
    """

    def __init__(self, limit: int) -> None:
        #: the most it may hold, whatever the model (``--transfer-budget-mb``)
        self.ceiling = limit
        self.limit = limit
        #: the model the budget was last fitted to (0: none yet)
        self.model_bytes = 0
        self._in_flight = 0
        self._outgoing = 0
        self._retained = 0
        #: replies waiting in acquire
        self._waiting = 0
        self._cond = threading.Condition()

    def fit(self, model_bytes: int) -> None:
        """Hold a few models of ``model_bytes``, not the whole ceiling: with a small model and
        many nodes, a budget of a fixed size lets hundreds of replies be held at once."""
        limit = min(self.ceiling, max(MIN_FITTED_BUDGET, MODELS_IN_BUDGET * model_bytes))
        with self._cond:
            self.limit, self.model_bytes = limit, model_bytes
            self._cond.notify_all()

    def reads_at_once(self) -> int | None:
        """How many replies are worth reading at once for the model the budget was fitted
        to: those it admits together, and the next one's first chunk. A reply read further
        than its first chunk waits in the server's memory for the budget; one not read
        yet waits with its node (HTTP/2 flow control). None (no bound of the budget's):
        a model under :data:`MIN_FITTED_BUDGET`, whose replies are small."""
        with self._cond:
            if self.model_bytes < MIN_FITTED_BUDGET:
                return None
            return max(1, self.limit // self.model_bytes) + 1

    def acquire(self, nbytes: int, timeout: float | None = None) -> bool:
        """Take ``nbytes`` once they fit; False (nothing taken) if they did not within
        ``timeout`` seconds (None: wait as long as it takes)."""
        with self._cond:
            self._waiting += 1
            try:
                fits = self._cond.wait_for(lambda: self._fits(nbytes), timeout)
            finally:
                self._waiting -= 1
            if fits:
                self._in_flight += nbytes
            return fits

    def _fits(self, nbytes: int) -> bool:
        return not (self._in_flight or self._outgoing) or self._held() + nbytes <= self.limit

    def waiting(self) -> bool:
        """Whether a reply waits for the budget (behind what is in flight or outgoing)."""
        with self._cond:
            return self._waiting > 0

    def release(self, nbytes: int) -> None:
        """An acquired reply was refused or dropped before the round loop had it."""
        with self._cond:
            self._in_flight -= nbytes
            self._cond.notify_all()

    def consumed(self, nbytes: int, owner: object) -> None:
        """The round loop is done with a reply; its bytes count until ``owner`` (the
        object whose death frees the reply's memory) is gone."""
        with self._cond:
            self._in_flight -= nbytes
            self._retained += nbytes
            self._cond.notify_all()
        weakref.finalize(owner, self._unretain, nbytes)

    def hold_outgoing(self, nbytes: int) -> None:
        with self._cond:
            self._outgoing += nbytes

    def release_outgoing(self, nbytes: int) -> None:
        with self._cond:
            self._outgoing -= nbytes
            self._cond.notify_all()

    @property
    def held_bytes(self) -> int:
        with self._cond:
            return self._held()

    def _unretain(self, nbytes: int) -> None:
        with self._cond:
            self._retained -= nbytes
            self._cond.notify_all()

    def _held(self) -> int:
        return self._in_flight + self._outgoing + self._retained
