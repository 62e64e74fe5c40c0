"""``loradeck`` (the app) and ``loradeck --demo``."""

from __future__ import annotations

import argparse

from loradeck.tui.commands.base import Command


def open_app(demo: bool = False, run_ref: str | None = None) -> int:
    """Open the app; ``demo`` chooses demo:tiny and the demo dataset; ``run_ref`` opens on
    that run's Train view (an id or a unique prefix)."""
    run_id = None
    if run_ref is not None:
        from loradeck.engine.runs.store import RunStore

        run_id = RunStore().resolve(run_ref).id  # LoradeckError names what to do
    import textual.app  # noqa: F401  (first: the parts table tells its import from ours)

    from loradeck.tui import startup_trace

    startup_trace.mark("textual imported")
    from loradeck.tui.app import LoradeckApp

    startup_trace.mark("app imported")
    app = LoradeckApp(demo=demo, run_id=run_id, tune_gc=True)
    startup_trace.mark("app constructed")
    app.run()
    return 0


class AppCommand(Command):
    """What runs with no command (not a subparser of its own)."""

    name = "app"
    help = "the app"

    def run(self, args: argparse.Namespace) -> int:
        return open_app(demo=bool(getattr(args, "demo", False)))


COMMAND = AppCommand()
