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

from loradeck.engine.errors import LoradeckError
from loradeck.engine.publish import web_runtime
from loradeck.engine.runs import lock as joblock
from loradeck.engine.runs.store import Run

WEB_DIR = "web"
PAGE_FILES = ("index.html", "chat.js")
MANIFEST = "loradeck-web.json"
TEMPLATE = Path(__file__).with_name("web")
# The front matter that makes the folder a static Space, with the headers that let wllama use
# several threads (the only headers a static Space may set).
SPACE_FRONT_MATTER = """---
title: {title}
sdk: static
pinned: false
custom_headers:
  cross-origin-embedder-policy: require-corp
  cross-origin-opener-policy: same-origin
  cross-origin-resource-policy: cross-origin
---
"""


def web_dir(run: Run) -> Path:
    return run.dir / WEB_DIR


def manifest(folder: Path) -> dict[str, Any] | None:
    """What a written page holds (None when there is no whole page)."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = data.get("file") if isinstance(data, dict) else None
    plain = isinstance(name, str) and name.endswith(".gguf") and Path(name).name == name
    return data if plain and not name.startswith(".") else None


def page_files(folder: Path) -> list[str]:
    """The files of the page in ``folder``, as paths relative to it (what goes up with
    ``push --web``); one line naming the export to run when there is no whole page."""
    about = manifest(folder)
    if about is None:
        raise LoradeckError("the run has no browser page yet", kind="usage", where=str(folder),
                            hint="write it first: loradeck export RUN --web (or Browser page "
                                 "on the Push screen)")
    names = [*PAGE_FILES, MANIFEST, about["file"],
             *(f"wllama/{name}" for name in web_runtime.FILES.values())]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise LoradeckError(f"the browser page lacks {', '.join(missing)}", kind="usage",
                            where=str(folder), hint="write it again: loradeck export RUN --web")
    return names


def download_size(folder: Path) -> int:
    """Bytes the browser downloads to run the page (the folder, whole)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def serve_hint(run_id: str) -> str:
    """How to open the page, in one line."""
    return (f"serve it with: loradeck web {run_id} (on loopback; it prints the SSH tunnel for "
            "your own machine), or copy RUN/web to any static server")


def space_readme(title: str) -> str:
    """README.md of the folder pushed as ``web/``: uploaded as it is to a Space, it is a static
    Space that serves the page with cross-origin isolation."""
    return SPACE_FRONT_MATTER.format(title=json.dumps(title[:60])) + (
        "\nA chat page that runs the model in your own browser with wllama (WebGPU when the "
        "browser has it, CPU threads otherwise). Nothing you type leaves your machine.\n")


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
    """Write RUN/web for the run's ``quant`` GGUF file (exporting it first when missing);
    returns the folder. The run's job lock is held throughout."""
    if run.alive() and not joblock.held_here(run.dir):
        raise joblock.AlreadyRunning(run.id, joblock.holder_pid(run.dir))
    with joblock.holding(run.dir, run.id):
        gguf = ensure_gguf(run, quant, say)
        return write_page(web_dir(run), gguf, {"run": run.id, "model": _model_name(run),
                                               "quant": quant}, work_in=run.dir, say=say)


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
    (work / MANIFEST).write_text(json.dumps(config, indent=1) + "\n",
                                            encoding="utf-8")
    old = parent / f".web-old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(work, out)
    shutil.rmtree(old, ignore_errors=True)
    say(f"browser page written: {out} ({download_size(out) / 1e6:.1f} MB for the browser to "
        "download)")
    return out


def _model_name(run: Run) -> str:
    try:
        return run.config().model.name
    except Exception:  # noqa: BLE001 - the page still works without the name
        return run.id

