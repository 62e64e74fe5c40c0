"""``model.adapter``: the adapter a second stage starts from (a run id or prefix, one of its
checkpoints, or an adapter directory), resolved and checked before launch. Light module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs.store import Run, RunStore


@dataclass
class AdapterSource:
    path: Path
    run_id: str | None = None
    checkpoint: str | None = None  # checkpoint-N, when it is one
    model: str | None = None  # the base its run trained on

    def describe(self) -> str:
        where = f"run {self.run_id}" if self.run_id else str(self.path)
        return f"{where}" + (f" ({self.checkpoint})" if self.checkpoint else " (its adapter)")


def _run_of(path: Path) -> Run | None:
    """The run a checkpoint or adapter directory belongs to, if any."""
    for parent in (path.parent, path.parent.parent):
        if (parent / "config.yaml").is_file() and (parent / "state.json").is_file():
            return Run(parent)
    return None


def resolve(ref: str) -> AdapterSource:
    """What ``model.adapter`` names; one line when it names nothing usable."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "adapter_config.json").is_file():
            raise LoradeckError(f"{path} holds no adapter (no adapter_config.json)",
                                kind="config", where="model.adapter",
                                hint="name a run, a checkpoint-N directory or an adapter "
                                     "directory")
        run = _run_of(path.resolve())
        checkpoint = path.name if path.name.startswith("checkpoint-") else None
        return AdapterSource(path.resolve(), run.id if run else None, checkpoint,
                             _model_of(run))
    try:
        run = RunStore().resolve(ref)
    except LoradeckError as exc:
        raise LoradeckError(f"{ref!r} is neither an adapter directory nor a run ({exc.message})",
                            kind="config", where="model.adapter",
                            hint="see the runs with: loradeck runs") from None
    if (run.adapter_dir / "adapter_config.json").is_file():
        return AdapterSource(run.adapter_dir, run.id, None, _model_of(run))
    latest = run.latest_checkpoint()
    if latest is None:
        raise LoradeckError(f"run {run.id} has no adapter or checkpoint yet", kind="config",
                            where="model.adapter", hint="let it train, or name another run")
    return AdapterSource(latest, run.id, latest.name, _model_of(run))


def _model_of(run: Run | None) -> str | None:
    if run is None:
        return None
    try:
        return run.config().model.name
    except LoradeckError:
        return None


def check(config: Any) -> AdapterSource | None:
    """The source of ``model.adapter`` (None without one), refused in one line when it
    trained on another base."""
    if not config.model.adapter:
        return None
    source = resolve(config.model.adapter)
    if source.model and source.model != config.model.name:
        raise LoradeckError(f"{source.describe()} was trained on {source.model}, and this "
                            f"config's model is {config.model.name}", kind="config",
                            where="model.adapter",
                            hint=f"set model.name to {source.model}")
    return source
