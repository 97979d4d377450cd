"""How far the server forwards a round's replies ahead of its app process's fold.

The app says when it has consumed a reply (it asks for the next one); the server
forwards at most :data:`REPLIES_AHEAD` beyond that. The rest wait in the server,
where the transfer budget counts them and holds further uploads back at the nodes,
instead of piling up in the app process while it folds.

A forwarded reply counts as in flight in the transfer budget until the app says it
consumed it (the window holds its release, :meth:`ReplyWindow.hold`), not merely
until the server forwards the next: in flight, it holds the next upload back until
the app has also let go of its block (told at once, ``sandbox/channel.py``), so that
the upload is received into that block instead of a new one.
"""

from __future__ import annotations

import collections
import threading

from consortium.server.fleet_state import Release, call_release

#: replies of one ``send_and_receive`` the server forwards ahead of the app: one being
#: folded, one on its way
REPLIES_AHEAD = 2


class ReplyWindow:
    """How far the forwarding of one ``send_and_receive``'s replies is ahead of the app:
    replies sent to the app process less those it said it consumed (it says so when it
    asks for the next one)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._ahead = 0
        #: the releases of the replies forwarded and not yet consumed, oldest first
        self._releases: collections.deque[Release | None] = collections.deque()
        self.closed = False

    def hold(self, release: Release | None) -> None:
        """Keep the release of a reply about to be forwarded until the app consumed it."""
        with self._changed:
            self._releases.append(release)

    def sent(self) -> None:
        with self._changed:
            self._ahead += 1

    def consumed(self) -> None:
        with self._changed:  # never below zero, whatever the app says
            self._ahead = max(0, self._ahead - 1)
            release = self._releases.popleft() if self._releases else None
            self._changed.notify_all()
        call_release(release)

    def close(self) -> None:
        """The app stopped reading these replies, or ended."""
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def release_all(self) -> None:
        """The forwarding is over: release what the app has not said it consumed."""
        with self._changed:
            releases, self._releases = list(self._releases), collections.deque()
        for release in releases:
            call_release(release)

    def wait_for_room(self) -> bool:
        """Wait until the app may be sent one more reply; False once closed."""
        with self._changed:
            self._changed.wait_for(lambda: self.closed or self._ahead < REPLIES_AHEAD)
            return not self.closed
