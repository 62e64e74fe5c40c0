"""Ending a worker process at once, once its work is written.

A job, merge, push or chat worker process that has loaded torch, a model and its libraries
spends most of a second (on a CPU, with demo:tiny; more with a large model on a GPU) tearing
the interpreter down after its last line is written: collecting the model's objects, running
the libraries' exit hooks. Nothing of the run is in that teardown: events are written
unbuffered, state.json and the checkpoints are closed files. The CLI and the app wait for the
process to be gone (so a next step does not start while it still holds the GPU), so that second
is theirs too.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO


def exit_now(code: int, *streams: TextIO) -> None:
    """Flush what is buffered (``streams``, stdout and stderr, which go to the run's train.log;
    logging's handlers), then end the process with ``code`` without the interpreter's
    teardown."""
    logging.shutdown()
    for stream in (*streams, sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone: nothing left to lose
            pass
    os._exit(code)
