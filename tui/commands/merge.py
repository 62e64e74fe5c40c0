"""``loradeck merge RUN``: merge a run's adapter into its 16-bit base model, check it, save it."""

from __future__ import annotations

from loradeck.engine.runs.store import RunStore


def run(args) -> int:
    from loradeck.engine.publish import merge

    target = RunStore().resolve(args.run)
    merge.check_mergeable(target)  # one line, before any heavy import, when there is no adapter
    merge.quiet_libraries()
    print(f"merging run {target.id}: {target.adapter_dir} into its base model", flush=True)
    result = merge.merge(target, say=lambda line: print(line, flush=True))
    print(f"merged model: {result.path}")
    return 0
