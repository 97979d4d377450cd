"""``kill -USR1 PID`` prints every thread's stack of a running Consortium process.

A server, a node or an app process that seems stuck is asked what each of its
threads is doing without stopping it: Python's :mod:`faulthandler` writes the
stacks to the process's standard error (``consortium server`` and ``consortium
node``: their terminal or journal; a sandboxed app process: its ``app.log``).
"""

from __future__ import annotations

import faulthandler
import signal

#: the signal that asks a Consortium process for its threads' stacks
STACK_DUMP_SIGNAL = signal.SIGUSR1


def dump_stacks_on_signal() -> None:
    """From now on, :data:`STACK_DUMP_SIGNAL` prints every thread's stack to stderr."""
    faulthandler.register(STACK_DUMP_SIGNAL, all_threads=True)
