"""A time limit on a piece of pure-Python work that may loop for ever (a chat template).

In the main thread a real-time timer (SIGALRM) interrupts the work at no cost while it runs.
Elsewhere (the app's worker threads) a trace function checks the clock on each line; slower,
and used there for a few preview rows only.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class TimeLimitExceeded(Exception):
    """The work ran past its time limit."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeLimitExceeded inside the block once it has run ``seconds``."""
    if threading.current_thread() is threading.main_thread():
        def expired(_signum, _frame):
            raise TimeLimitExceeded(f"ran past {seconds:g} s")

        previous = signal.signal(signal.SIGALRM, expired)
        left, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if left:  # an outer timer keeps the time it had left
                signal.setitimer(signal.ITIMER_REAL, left, interval)
        return
    deadline = time.monotonic() + seconds
    outer = sys.gettrace()

    def check(frame, event, arg):
        if time.monotonic() > deadline:
            raise TimeLimitExceeded(f"ran past {seconds:g} s")
        return check

    sys.settrace(check)
    try:
        yield
    finally:
        sys.settrace(outer)
