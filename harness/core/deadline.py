"""A time limit on a block of code run in the main thread, for work that cannot be asked to stop (a cell, an export).

It is SIGALRM's interval timer, and the alarm repeats until the block is left: Python runs a signal handler wherever
the main thread happens to be, and when that is a finaliser (``__del__``, a weakref callback the garbage collector
runs) the handler's exception is printed and dropped, so a single alarm can be lost and the block would run on past
its limit. Outside the main thread, or where there is no ``setitimer``, the block runs without a limit; the
process-pool executor enforces its own deadlines from the driver."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


def can_limit() -> bool:
    return threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")


@contextlib.contextmanager
def deadline(seconds: float, exception: type[BaseException]) -> Iterator[None]:
    """Raise ``exception`` in the block once it has run ``seconds``, and again every ``min(seconds, 1)`` s after
    until it is left. ``exception`` should be a BaseException, so that code catching Exception lets it through."""
    if not can_limit():
        yield
        return

    def expire(signum, frame):
        raise exception()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, min(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
