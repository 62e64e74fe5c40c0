"""``loradeck push RUN --repo NAME [--adapter] [--public] [--gguf [Q]]...``: publish a run on
the Hub (with its exported GGUF files when asked)."""

from __future__ import annotations

from loradeck.engine.runs.events import EventWriter
from loradeck.engine.runs.store import RunStore


def run(args) -> int:
    from loradeck.engine.publish.hub import push_run, quiet_hub_output

    quiet_hub_output()
    target = RunStore().resolve(args.run)
    url = push_run(target, args.repo, adapter=args.adapter, public=args.public,
                   gguf=getattr(args, "gguf", None) or [], events=EventWriter(target.events_path),
                   progress=lambda line: print(line, flush=True))
    print(url, flush=True)
    return 0
