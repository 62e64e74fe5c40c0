"""The phases of a run, one Enum; the groups of them that the store, the CLI and the app test.

``Phase`` is a StrEnum, so a phase read from events.jsonl (a plain string) compares equal to
its member and is found in these sets.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    QUEUED = "queued"
    LOADING = "loading"
    TRAINING = "training"
    SAVING = "saving"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DONE = "done"
    FAILED = "failed"
    MERGING = "merging"
    MERGED = "merged"
    PUSHING = "pushing"
    PUSHED = "pushed"


ACTIVE = frozenset({Phase.QUEUED, Phase.LOADING, Phase.TRAINING, Phase.SAVING, Phase.STOPPING})
"""A training job is (or should be) running."""
TERMINAL = frozenset({Phase.STOPPED, Phase.DONE, Phase.FAILED})
"""The training job has ended."""
AFTER_TRAINING = frozenset({Phase.MERGING, Phase.MERGED, Phase.PUSHING, Phase.PUSHED})
"""Merge and push, after a finished run."""
FINISHED = frozenset({Phase.DONE}) | AFTER_TRAINING
"""Training finished: nothing left to resume."""
SETTLED = TERMINAL | frozenset({Phase.MERGED, Phase.PUSHED})
"""No job needs to be alive for the run to read right."""
