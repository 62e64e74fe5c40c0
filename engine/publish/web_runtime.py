"""wllama, llama.cpp compiled to WebAssembly, for the browser page: the pinned npm package
fetched once by the ``npm`` client (``npm pack``; npm knows its registry), checked against the
integrity hash kept here, cached under the user cache directory, and its two runtime files
(``esm/index.js`` and ``esm/wasm/wllama.wasm``) extracted. Later exports work offline.
Light module: the standard library only."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs import paths

WLLAMA_VERSION = "3.13.0"
WLLAMA_INTEGRITY = ("sha512-ZvoRdQAn+E+18EvQ9qS036gudiI9rbZRBJgG/qNICPPwrA0Y6SMMdbziz/j7K/0Wxcb"
                    "JlhaRraVIYsnEy732NA==")
FILES = {"package/esm/index.js": "index.js", "package/esm/wasm/wllama.wasm": "wllama.wasm"}


def folder() -> Path:
    return paths.cache_dir() / "wllama"


def tarball_name() -> str:
    return f"wllama-wllama-{WLLAMA_VERSION}.tgz"


def integrity_of(path: Path) -> str:
    """npm's integrity string of a file: sha512, base64."""
    digest = hashlib.sha512()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def _where_by_hand() -> str:
    return (f"install npm (apt-get install npm), or put {tarball_name()} (from: npm pack "
            f"@wllama/wllama@{WLLAMA_VERSION}) in {folder()}")


def tarball(say: Callable[[str], None] = lambda _l: None) -> Path:
    """The package file, checked; fetched by ``npm pack`` when it is not cached."""
    path = folder() / tarball_name()
    if not path.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise LoradeckError(f"the browser page needs wllama {WLLAMA_VERSION}, and npm is "
                                "not installed", kind="config", hint=_where_by_hand())
        path.parent.mkdir(parents=True, exist_ok=True)
        say(f"fetching wllama {WLLAMA_VERSION} with npm (once; cached in {path.parent})")
        try:
            done = subprocess.run([npm, "pack", f"@wllama/wllama@{WLLAMA_VERSION}",
                                   "--pack-destination", str(path.parent), "--silent"],
                                  capture_output=True, text=True, timeout=600,
                                  cwd=str(path.parent))
        except subprocess.TimeoutExpired:
            raise LoradeckError("npm pack took over 10 minutes", kind="network",
                                hint=_where_by_hand()) from None
        if done.returncode != 0 or not path.is_file():
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise LoradeckError(f"npm pack @wllama/wllama@{WLLAMA_VERSION} failed: {last[0]}",
                                kind="network", hint=_where_by_hand())
    found = integrity_of(path)
    if found != WLLAMA_INTEGRITY:
        path.unlink(missing_ok=True)
        raise LoradeckError(f"{path.name} is not the wllama {WLLAMA_VERSION} package loradeck "
                            f"knows (integrity {found[:24]}…); it was removed", kind="config",
                            hint=_where_by_hand())
    return path


def runtime(say: Callable[[str], None] = lambda _l: None) -> Path:
    """The folder holding ``index.js`` and ``wllama.wasm`` of the pinned version."""
    out = folder() / WLLAMA_VERSION
    if all((out / name).is_file() for name in FILES.values()):
        return out
    package = tarball(say)
    work = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with tarfile.open(package, "r:gz") as tar:
        for member, name in FILES.items():
            source = tar.extractfile(member)
            if source is None:
                raise LoradeckError(f"{package.name} lacks {member}", kind="config",
                                    hint=_where_by_hand())
            with source, open(work / name, "wb") as fh:
                shutil.copyfileobj(source, fh)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(work, out)
    return out
