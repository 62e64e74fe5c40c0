"""Where a run's notification URLs live: outside the run directory, readable by the user only.

A run's saved config keeps each URL's scheme alone (``NotifySection.masked``), so no token in
a URL reaches its events, logs, run files or model card; the job reads the URLs from here.
Light module: the standard library only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from loradeck.engine.runs import paths

FOLDER = "notify"


def _path(run_id: str) -> Path:
    return paths.home() / FOLDER / f"{run_id}.json"


def keep(run_id: str, urls: list[str]) -> None:
    """Store ``urls`` for the run (mode 0600, written whole or not at all); none: nothing."""
    if not urls:
        return
    folder = paths.home() / FOLDER
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = _path(run_id)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"urls": urls}, fh)
    os.replace(tmp, path)


def urls_of(run_id: str) -> list[str]:
    """The run's notification URLs (none when it has none, or the file is unreadable)."""
    try:
        data = json.loads(_path(run_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    urls = data.get("urls") if isinstance(data, dict) else None
    return [u for u in urls if isinstance(u, str)] if isinstance(urls, list) else []
