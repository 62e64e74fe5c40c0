"""What ``chat RUN|MODEL`` talks to: a run's merged model, its base + adapter, or any model.

Light: reads the run directory and config only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loradeck.engine.errors import LoradeckError, RunNotFound
from loradeck.engine.models import demo
from loradeck.engine.runs.store import Run, RunStore


@dataclass
class ChatTarget:
    """A model to load in the chat worker.

    ``model``: name for loradeck.engine.models.loading (Hub id, directory, demo:tiny); ``adapter``: a PEFT
    adapter directory or None; ``quantization``: none | 8bit | 4bit; ``label``: for people.
    """

    model: str
    adapter: str | None
    quantization: str
    label: str
    revision: str | None = None
    trust_remote_code: bool = False
    system_prompt: str | None = None
    run_id: str | None = None
    untrained: bool = False  # a run's base, its adapter not written yet (training)

    def load_args(self) -> dict[str, Any]:
        """Keyword arguments for ChatClient.start / AsyncChatClient.start."""
        return {"model": self.model, "adapter": self.adapter, "quantization": self.quantization,
                "revision": self.revision, "trust_remote_code": self.trust_remote_code or None}


def find_run(target: str, store: RunStore) -> Run | None:
    """The run ``target`` names (id, unique prefix or run directory), or None if it names none."""
    if demo.is_demo(target):
        return None
    try:
        return store.resolve(target)  # an ambiguous prefix (AmbiguousRun) is said, not guessed
    except RunNotFound:
        return None


def from_run(run: Run, base: bool = False) -> ChatTarget:
    """The chat target of a run: merged if present (unless ``base``), else base + adapter."""
    config = run.config()
    m = config.model
    common = {"revision": m.revision, "trust_remote_code": m.trust_remote_code,
              "system_prompt": config.dataset.system_prompt, "run_id": run.id}
    if base:
        return ChatTarget(m.name, None, m.quantization, f"{m.name} (base of run {run.id})",
                          **common)
    if (run.merged_dir / "config.json").is_file():
        common["revision"] = None
        return ChatTarget(str(run.merged_dir), None, "none", f"run {run.id} (merged)", **common)
    if (run.adapter_dir / "adapter_config.json").is_file():
        return ChatTarget(m.name, str(run.adapter_dir), m.quantization,
                          f"run {run.id} ({m.name} + adapter)", **common)
    phase = run.summary().get("phase", "?")
    raise LoradeckError(f"run {run.id} has no adapter yet (phase: {phase})", kind="usage",
                        where=str(run.dir),
                        hint="wait until training is done, or chat with its base model "
                             "(ctrl+b in the app's Chat screen, --base on the command line)")


def from_run_gguf(run: Run, quant: str) -> ChatTarget:
    """A run's exported GGUF file of type ``quant`` (llama.cpp; see loradeck export)."""
    from loradeck.engine.publish.gguf_export import exported_file

    path = exported_file(run, quant)
    return ChatTarget(str(path), None, "none", f"run {run.id} ({quant} GGUF, llama.cpp)",
                      system_prompt=run.config().dataset.system_prompt, run_id=run.id)


def from_checkpoint(run: Run, step: int) -> ChatTarget:
    """A run's base + the adapter of its checkpoint at ``step``."""
    m = run.config().model
    return ChatTarget(m.name, str(run.checkpoint(step)), m.quantization,
                      f"run {run.id} ({m.name} + checkpoint-{step})", revision=m.revision,
                      trust_remote_code=m.trust_remote_code,
                      system_prompt=run.config().dataset.system_prompt, run_id=run.id)


def resolve(target: str, base: bool = False, store: RunStore | None = None,
            gguf: str | None = None, checkpoint: int | None = None) -> ChatTarget:
    """Resolve ``RUN|MODEL``: a run id/prefix or run directory, else a model name."""
    target = (target or "").strip()
    if not target:
        raise LoradeckError("nothing to chat with", kind="usage",
                            hint="give a run id, a model directory, a Hub id or demo:tiny")
    run = find_run(target, store or RunStore())
    if run is not None and checkpoint is not None:
        return from_checkpoint(run, checkpoint)
    if run is not None:
        return from_run_gguf(run, gguf) if gguf else from_run(run, base=base)
    if checkpoint is not None:
        raise LoradeckError("--checkpoint needs a run", kind="usage", where="RUN|MODEL",
                            hint="give a run id (loradeck runs lists them)")
    from loradeck.engine.models.loading import resolve_source

    try:
        src = resolve_source(target, build_demo=False)
    except LoradeckError as exc:
        if exc.kind != "config":
            raise
        raise LoradeckError(f"{target!r} is no run, model directory or Hub id", kind="usage",
                            where="RUN|MODEL", hint="list runs with: loradeck runs; or give "
                                                    "org/name, a directory, or demo:tiny") from None
    if src.kind == "local" and src.path is not None \
            and not (src.path / "config.json").is_file():
        return _from_adapter_dir(src.path, base)
    name = src.name if src.kind == "demo" else target
    return ChatTarget(name, None, "none", name)


def _from_adapter_dir(path, base: bool) -> ChatTarget:
    """A bare adapter directory: its base model (from adapter_config.json) + the adapter."""
    import json

    try:
        cfg = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        base_name = cfg["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        base_name = None
    if not base_name:
        raise LoradeckError("the adapter does not name its base model", kind="model",
                            where=str(path / "adapter_config.json"),
                            hint="set base_model_name_or_path, or chat with the run instead")
    if base:
        return ChatTarget(base_name, None, "none", f"{base_name} (base)")
    return ChatTarget(base_name, str(path), "none", f"{base_name} + adapter {path.name}")
