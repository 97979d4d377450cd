"""A slow link, in process: the token bucket and connection wrapper of ``benchmarks/wan.py``.

Benchmark-only: :class:`ThrottledLink` wraps the connection a ``NodeRunner`` is
given (a ``FleetClient``), so tasks and replies cross a link of ``rate`` bytes a
second with ``latency`` seconds added; production code paths are untouched.

* a **token bucket** per direction per node: ``rate`` bytes a second, burst
  :data:`BURST` bytes; a message of ``n`` bytes waits until the bucket has
  held ``n`` tokens (taken in bursts), so a large message takes ``n / rate``
  seconds, as on a link of that speed, and two messages in the same
  direction queue behind each other;
* **added latency**: every task and every reply is delayed ``latency``
  seconds more (one way), as by a WAN round trip.

Heartbeats and the one-time app bundle download pass straight through (a few
hundred bytes a second). A task's bytes reach the node at loopback speed and
are then held back until the throttle's time has passed, which is the same as
receiving them slowly for everything the node does next.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from consortium.core.fleet_info import RunBundle, Welcome
from consortium.transport.grpc_client import FleetClient

#: The token bucket's burst: what a link sends back to back before its rate applies.
BURST = 64 * 1024


class TokenBucket:
    """``rate`` bytes a second, at most ``burst`` banked; :meth:`take` blocks until paid."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()  # one direction of one link: messages queue

    def take(self, n: int) -> float:
        """Wait until ``n`` bytes have been paid for; the seconds waited."""
        waited = 0.0
        with self._lock:
            while n > 0:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                piece = min(n, self.burst)
                if self._tokens < piece:
                    pause = (piece - self._tokens) / self.rate
                    time.sleep(pause)
                    waited += pause
                    continue
                self._tokens -= piece
                n -= piece
        return waited


@dataclass
class LinkStats:
    """What crossed one node's throttled link, and when (``perf_counter`` stamps)."""

    bytes_down: int = 0
    bytes_up: int = 0
    seconds: float = 0.0  # waited on the link (both directions, latency included)
    messages: int = 0
    #: per task, in order: (received at loopback speed, delivered after the link's wait)
    tasks: list[tuple[float, float]] = field(default_factory=list)
    #: per reply, in order: (handed to the link, pushed to the server after the link's wait)
    replies: list[tuple[float, float]] = field(default_factory=list)


class ThrottledLink:
    """A node's connection behind a slow link: tasks and replies pay the token bucket of
    their direction and ``latency`` seconds; everything else passes straight through.
    Benchmark-only: it wraps the connection the NodeRunner is given."""

    def __init__(self, inner: FleetClient, rate: float, latency: float) -> None:
        self.inner = inner
        self.latency = latency
        self.down, self.up = TokenBucket(rate, BURST), TokenBucket(rate, BURST)
        self.stats = LinkStats()

    @property
    def max_message_bytes(self) -> int:
        return self.inner.max_message_bytes

    @max_message_bytes.setter
    def max_message_bytes(self, value: int) -> None:
        self.inner.max_message_bytes = value

    @property
    def address(self) -> str:
        return self.inner.address

    def hello(self, version: str, instance_id: str) -> Welcome:
        return self.inner.hello(version, instance_id)

    def heartbeat(self) -> bool:
        return self.inner.heartbeat()

    def get_run(self, run_id: str) -> RunBundle:
        return self.inner.get_run(run_id)

    def pull_task(self, wait: float) -> memoryview | None:
        payload = self.inner.pull_task(wait)
        if payload is not None:
            received = time.perf_counter()
            self._pay(self.down, len(payload))
            self.stats.bytes_down += len(payload)
            self.stats.tasks.append((received, time.perf_counter()))
        return payload

    def push_result(self, parts: Sequence[Any], message_id: str) -> tuple[bool, str]:
        handed = time.perf_counter()
        size = sum(len(memoryview(p).cast("B")) for p in parts)
        self._pay(self.up, size)
        self.stats.bytes_up += size
        try:
            return self.inner.push_result(parts, message_id)
        finally:
            self.stats.replies.append((handed, time.perf_counter()))

    def close(self) -> None:
        self.inner.close()

    def _pay(self, bucket: TokenBucket, size: int) -> None:
        time.sleep(self.latency)
        self.stats.seconds += self.latency + bucket.take(size)
        self.stats.messages += 1
