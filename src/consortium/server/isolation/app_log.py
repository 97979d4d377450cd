"""An app process's log lines in the server's log, rate-limited."""

from __future__ import annotations

import logging
import time
from typing import Any

#: how many log lines a second of one app process reach the server's log
LOG_LINES_PER_SECOND = 50
#: the longest app log line the server's log keeps
LOG_LINE_CHARS = 2000


class AppLog:
    """Log lines of an app process, logged by the server as ``consortium.app``: at most
    :data:`LOG_LINES_PER_SECOND` a second and :data:`LOG_LINE_CHARS` characters each,
    so an app cannot flood the server's log (its own ``app.log`` keeps everything it
    prints)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.logger = logging.getLogger(f"consortium.app.{run_id}")
        self._second = 0
        self._count = 0
        self._dropped = 0

    def emit(self, header: dict[str, Any]) -> None:
        now = int(time.monotonic())
        if now != self._second:
            if self._dropped:
                self.logger.warning("run %s: %d app log line(s) dropped (over %d a second)",
                                    self.run_id, self._dropped, LOG_LINES_PER_SECOND)  # fmt: skip
            self._second, self._count, self._dropped = now, 0, 0
        self._count += 1
        if self._count > LOG_LINES_PER_SECOND:
            self._dropped += 1
            return
        level = header.get("level")
        level = level if isinstance(level, int) and logging.DEBUG <= level <= logging.CRITICAL \
            else logging.INFO  # fmt: skip
        text = str(header.get("message", ""))[:LOG_LINE_CHARS]
        self.logger.log(level, "run %s: %s", self.run_id, text)
