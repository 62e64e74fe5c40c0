"""The draft config's file, $LORADECK_HOME/draft.yaml: read validated (``load_draft``), or
previewed with yaml alone for the first frames (``draft_preview``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs import paths

if TYPE_CHECKING:
    from loradeck.engine import config as cfg


def draft_path() -> Path:
    """Where the config being edited is kept between sessions."""
    return paths.home() / "draft.yaml"


def load_draft() -> tuple[cfg.Config, LoradeckError | None]:
    """The saved draft; defaults (and the reason) when there is none or it is invalid."""
    from loradeck.engine import config as cfg

    p = draft_path()
    if not p.is_file():
        return cfg.Config(), None
    try:
        return cfg.load(p), None
    except LoradeckError as exc:
        return cfg.Config(), exc


def draft_preview() -> tuple[str, str | None] | None:
    """The draft's model name and quantization as draft.yaml writes them, read with yaml
    alone (not validated: loradeck.engine.config and pydantic load later); None when there is
    no such file or it cannot be read."""
    import yaml

    try:
        model = yaml.safe_load(draft_path().read_text(encoding="utf-8"))["model"]
        name, quant = model["name"], model.get("quantization")
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError):
        return None
    if not isinstance(name, str):
        return None
    return name, quant if isinstance(quant, str) else None
