"""``loradeck export RUN --web``: RUN/web, a self-contained chat page that runs the run's GGUF
in the user's own browser through wllama (WebGPU when the browser has it, CPU threads
otherwise). It holds ``index.html`` and ``chat.js`` (loradeck's), ``wllama/`` (the runtime)
and the GGUF file; nothing is loaded from another origin (its Content-Security-Policy says
so). Written under a temporary name and renamed when whole."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loradeck.engine.publish import web_runtime
from loradeck.engine.runs.store import Run

WEB_DIR = "web"
PAGE_FILES = ("index.html", "chat.js")
TEMPLATE = Path(__file__).with_name("web")


def web_dir(run: Run) -> Path:
    return run.dir / WEB_DIR


def manifest(folder: Path) -> dict[str, Any] | None:
    """What a written page holds (None when there is no whole page)."""
    try:
        return json.loads((folder / "loradeck-web.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def ensure_gguf(run: Run, quant: str, say: Callable[[str], None]) -> Path:
    """The run's GGUF file of ``quant``, exported (merging first) when missing."""
    from loradeck.engine.publish import gguf_export, merge

    path = gguf_export.run_file(run, quant)
    if path.is_file():
        return path
    if not run.merged_dir.is_dir():
        merge.check_mergeable(run)
    say(f"exporting run {run.id} to GGUF {quant} first")
    gguf_export.export(run, [quant], say=say)
    return path


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def export_web(run: Run, quant: str, say: Callable[[str], None] = lambda _l: None) -> Path:
    """Write RUN/web for the run's ``quant`` GGUF file; returns the folder."""
    gguf = ensure_gguf(run, quant, say)
    out = write_page(web_dir(run), gguf, {"run": run.id, "model": _model_name(run),
                                          "quant": quant}, work_in=run.dir, say=say)
    return out


def write_page(out: Path, gguf: Path, about: dict[str, Any], *, work_in: Path | None = None,
               say: Callable[[str], None] = lambda _l: None) -> Path:
    """The page around ``gguf`` in ``out`` (written beside it under a temporary name, then
    renamed over any earlier one); ``about`` names the run, model and type it shows."""
    runtime = web_runtime.runtime(say)
    config = {**about, "file": gguf.name, "bytes": gguf.stat().st_size,
              "wllama": web_runtime.WLLAMA_VERSION}
    parent = work_in or out.parent
    work = parent / f".web-tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "wllama").mkdir(parents=True)
    page = (TEMPLATE / "index.html").read_text(encoding="utf-8")
    data = json.dumps(config, ensure_ascii=False).replace("</", "<\\/")
    (work / "index.html").write_text(page.replace("{{CONFIG}}", data), encoding="utf-8")
    shutil.copy2(TEMPLATE / "chat.js", work / "chat.js")
    for name in web_runtime.FILES.values():
        shutil.copy2(runtime / name, work / "wllama" / name)
    _link_or_copy(gguf, work / gguf.name)
    (work / "loradeck-web.json").write_text(json.dumps(config, indent=1) + "\n",
                                            encoding="utf-8")
    old = parent / f".web-old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(work, out)
    shutil.rmtree(old, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    say(f"browser page written: {out} ({size / 1e6:.1f} MB for the browser to download)")
    return out


def _model_name(run: Run) -> str:
    try:
        return run.config().model.name
    except Exception:  # noqa: BLE001 - the page still works without the name
        return run.id
