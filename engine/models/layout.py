"""What a model on disk holds, read from its files without loading it: module names and shapes
from the safetensors headers, and the Python files ``trust_remote_code`` would run.

Light module (safetensors reads headers with numpy; no torch). ``check(config)`` refuses, before
a run starts, a model directory that cannot load, ``lora.target_modules`` names the model does
not have, and a ``lora.r`` larger than a target layer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradeck.engine.errors import LoradeckError

EMBEDDING_NAMES = ("embed", "wte", "wpe")
OUTPUT_NAMES = ("lm_head", "embed_out", "output")


@dataclass
class ModelLayout:
    """Weight-bearing modules of a model: full module name -> weight shape (2-D only)."""

    files: list[Path]
    modules: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def linear_names(self) -> list[str]:
        """Leaf names of the linear layers (what ``target_modules`` lists), in model order."""
        seen: dict[str, None] = {}
        for name in self.modules:
            leaf = name.rsplit(".", 1)[-1]
            if not any(e in name for e in EMBEDDING_NAMES) and leaf not in OUTPUT_NAMES:
                seen.setdefault(leaf, None)
        return list(seen)

    def matching(self, targets: str | list[str]) -> dict[str, list[str]]:
        """For each target, the modules it selects as PEFT selects them (a list entry: the name
        or a dotted suffix; a string: a regular expression over the whole name)."""
        if isinstance(targets, str):
            if targets == "all-linear":
                leaves = set(self.linear_names())
                return {targets: [n for n in self.modules if n.rsplit(".", 1)[-1] in leaves
                                  and not any(e in n for e in EMBEDDING_NAMES)]}
            return {targets: [n for n in self.modules if re.fullmatch(targets, n)]}
        return {t: [n for n in self.modules if n == t or n.endswith("." + t)] for t in targets}


def model_dir(name: str, revision: str | None = None) -> Path | None:
    """The directory holding the model's files: demo:tiny's, a local one, or a Hub model's
    cached snapshot. None when not on this machine (a Hub model not downloaded yet)."""
    from loradeck.engine.models.loading import resolve_source

    src = resolve_source(name, revision, build_demo=False)
    if src.kind == "demo":
        return Path(src.ref) if (Path(src.ref) / "config.json").is_file() else None
    if src.kind == "local":
        return Path(src.ref)
    if src.kind == "gguf":  # its converted directory, once converted
        return Path(src.ref) if src.ready else None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(src.ref, "config.json", revision=revision)
    return Path(cached).parent if isinstance(cached, str) else None


def check_on_hub(name: str, revision: str | None = None) -> None:
    """Refuse a Hub model that is not in the cache and that the Hub does not have (or that
    cannot be reached, or is gated): the job would fail on it, so it fails before launch."""
    from huggingface_hub import HfApi

    from loradeck.engine.models.loading import hub_error, resolve_source

    src = resolve_source(name, revision, build_demo=False)
    if src.kind != "hub":
        return
    try:
        HfApi().model_info(src.ref, revision=revision, timeout=15)
    except Exception as exc:  # huggingface_hub's errors, and the network's
        raise hub_error(exc, src) from None


def read_layout(directory: Path) -> ModelLayout | None:
    """The 2-D weights of the safetensors files in ``directory`` (None when it has none).

    Raises LoradeckError naming the file whose header cannot be read."""
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    layout = ModelLayout(files=files)
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as st:
                for key in st.keys():
                    if key.endswith(".weight"):
                        shape = tuple(st.get_slice(key).get_shape())
                        if len(shape) == 2:
                            layout.modules[key[: -len(".weight")]] = shape
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise LoradeckError(f"cannot read the safetensors header ({exc})", kind="config",
                                where=str(f), hint="the file is damaged or incomplete: "
                                "download or save the model again") from None
    config = _json(directory / "config.json") or {}
    text = config.get("text_config") or config
    embed = next((n for n in layout.modules if "embed_tokens" in n or n.endswith("wte")), None)
    if text.get("tie_word_embeddings") and embed and "lm_head" not in layout.modules:
        layout.modules["lm_head"] = layout.modules[embed]  # tied: saved once, as the embedding
    return layout


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remote_code_files(name: str, revision: str | None = None) -> list[str]:
    """The .py files ``trust_remote_code`` would run for this model (as far as this machine
    can know: a Hub model not downloaded yet names the modules its config maps, if cached)."""
    directory = model_dir(name, revision)
    if directory is None:
        return []
    files = sorted(p.name for p in directory.glob("*.py"))
    config = _json(directory / "config.json") or {}
    for ref in (config.get("auto_map") or {}).values():
        for item in ref if isinstance(ref, list) else [ref]:
            if isinstance(item, str) and "." in item:
                module = item.split("--")[-1].rsplit(".", 1)[0] + ".py"
                if module not in files:
                    files.append(module)
    return files


def check_remote_code(config: Any, allowed: bool) -> list[str]:
    """Refuse ``model.trust_remote_code: true`` unless ``allowed`` (--trust-remote-code or the
    app's confirmation); returns the line announcing which files will run."""
    if not config.model.trust_remote_code:
        return []
    files = remote_code_files(config.model.name, config.model.revision)
    named = ", ".join(files) if files else "the model's own Python files (not downloaded yet)"
    if not allowed:
        raise LoradeckError(f"is true: the model's own code would run ({named})", kind="config",
                            where="model.trust_remote_code",
                            hint="add --trust-remote-code to allow it, or set it to false")
    return [f"model.trust_remote_code: running the model's own code: {named}"]


def check_targets(layout: ModelLayout, targets: str | list[str], model_name: str
                  ) -> dict[str, list[str]]:
    """The modules each of ``targets`` selects; one line naming the targets that select none
    (PEFT would drop them silently while another one matches)."""
    matches = layout.matching(targets)
    missing = [t for t, found in matches.items() if not found]
    if missing:
        bad = ", ".join(missing)
        raise LoradeckError(
            f"{'no module named' if isinstance(targets, list) else 'matches no module:'} "
            f"{bad} in {model_name}", kind="config", where="lora.target_modules",
            hint=f"its linear modules are: {', '.join(layout.linear_names())} (or all-linear)")
    return matches


def layout_of(model: Any) -> ModelLayout:
    """The layout of a loaded model (its modules with 2-D weights), for the same checks once
    a model that was not on disk before the launch has loaded."""
    modules = {name: tuple(mod.weight.shape) for name, mod in model.named_modules()
               if getattr(getattr(mod, "weight", None), "ndim", 0) == 2}
    return ModelLayout(files=[], modules=modules)


def check(config: Any) -> None:
    """Refuse a model that cannot load, absent target modules, or a rank too large."""
    m, lora = config.model, config.lora
    directory = model_dir(m.name, m.revision)
    if directory is None:
        check_on_hub(m.name, m.revision)  # a Hub model not downloaded yet: is it there?
        return  # its files are checked when it loads
    if not (directory / "config.json").is_file():
        raise LoradeckError("no config.json in this directory", kind="config", where=str(directory),
                            hint="point model.name at a saved Hugging Face model directory")
    layout = read_layout(directory)
    if layout is None or not layout.modules:
        return  # other weight formats (.bin): checked when they load
    matches = check_targets(layout, lora.target_modules, m.name)
    targeted = {n for found in matches.values() for n in found}
    smallest = min(targeted, key=lambda n: min(layout.modules[n]))
    limit = min(layout.modules[smallest])
    if lora.r > limit:
        raise LoradeckError(
            f"{lora.r} is larger than the smallest target layer ({smallest}: "
            f"{' x '.join(map(str, layout.modules[smallest]))})", kind="config", where="lora.r",
            hint=f"set lora.r to {limit} or less")
