"""``loradeck`` (the app), ``loradeck --demo`` and ``loradeck attach RUN``."""

from __future__ import annotations


def run(args) -> int:
    """Open the app; ``--demo`` chooses demo:tiny and the demo dataset; ``attach RUN`` opens
    on that run's Train view (RUN is an id or a unique prefix)."""
    run_id = None
    if getattr(args, "command", None) == "attach":
        from loradeck.engine.runs.store import RunStore

        run_id = RunStore().resolve(args.run).id  # LoradeckError names what to do
    from loradeck.tui.app import LoradeckApp

    LoradeckApp(demo=bool(getattr(args, "demo", False)), run_id=run_id, tune_gc=True).run()
    return 0
