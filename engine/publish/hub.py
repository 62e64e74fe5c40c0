"""Push a run's merged model (or its adapter) to the Hub, with its model card.

Only allow-listed files go up (weights as safetensors, configs, tokenizer files, chat template,
adapter files, the generated README.md and loss chart; with ``web``, the browser page's own
files under ``web/``); never checkpoints, optimizer states,
pickles, logs or dotfiles. The repo is private unless asked otherwise. The token comes from
huggingface_hub (HF_TOKEN or the saved login) and is never printed nor written anywhere.
Rate limits (429) and server errors (5xx) are retried with backoff; running the same push again
after an interruption completes it (the repo is reused, files already there are not resent).

Run as a process: ``python -m loradeck.engine.publish.hub RUN_DIR --repo NAME [--adapter]
[--public] [--web]``.
Light module: huggingface_hub only; torch loads only if the run must be merged first.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from loradeck.engine import __version__
from loradeck.engine.errors import LoradeckError, redact
from loradeck.engine.publish.model_card import hub_id, write_card
from loradeck.engine.runs import lock as joblock
from loradeck.engine.runs import run_files
from loradeck.engine.runs.events import EventWriter
from loradeck.engine.runs.state import fold
from loradeck.engine.runs.store import Run, RunStore
from loradeck.engine.system.process_exit import exit_now
from loradeck.engine.units import byte_size

T = TypeVar("T")

# File names (matched on the name, at the top of the pushed folder) that may go up.
ALLOWED_FILES = (
    "*.safetensors", "model.safetensors.index.json",
    "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "*.model",
    "chat_template.jinja", "chat_template.json",
    "adapter_config.json", "adapter_model.safetensors",
    "*.gguf", "*.Modelfile",
)
RETRIES = 4
BACKOFF_S = 2.0  # first wait; doubles each try. LORADECK_PUSH_BACKOFF overrides (tests).
MAX_WAIT_S = 60.0
LOGIN_HINT = "log in with `hf auth login` or set HF_TOKEN"


def allowed(name: str) -> bool:
    """True for a file name on the upload allow-list (dotfiles never are)."""
    return not name.startswith(".") and any(fnmatch.fnmatchcase(name, p) for p in ALLOWED_FILES)


def select_files(folder: Path, root: Path | None = None) -> list[Path]:
    """The allow-listed files directly in ``folder`` (subfolders are never pushed), each a
    regular file inside ``root`` (the run directory; default ``folder``) once its links are
    resolved. A link that leaves it is refused in one line naming the link."""
    names = sorted(p for p in folder.iterdir() if allowed(p.name)
                   and (p.is_symlink() or p.is_file()))
    for p in names:
        run_files.inside(p, root or folder)
    return names


# ---- errors ------------------------------------------------------------------------------------
def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _mro_names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind an error from huggingface_hub, if there was one."""
    for e in _chain(exc):
        code = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(code, int):
            return code
    return None


def _server_message(exc: BaseException) -> str:
    for e in _chain(exc):
        resp = getattr(e, "response", None)
        if resp is None:
            continue
        msg = resp.headers.get("X-Error-Message") if hasattr(resp, "headers") else None
        if not msg:
            try:
                msg = resp.json().get("error")
            except Exception:
                msg = None
        if isinstance(msg, str) and msg:
            return msg.strip().rstrip(".")
    return ""


def _network_kind(exc: BaseException) -> str | None:
    """'offline', 'unreachable' (no connection at all), 'transient' (cut mid-way) or None."""
    for e in _chain(exc):
        names = _mro_names(e)
        if "OfflineModeIsEnabled" in names:
            return "offline"
        if names & {"ConnectError", "ConnectTimeout", "ConnectionRefusedError", "gaierror"}:
            return "unreachable"
        if names & {"TransportError", "ConnectionError", "TimeoutError"}:
            return "transient"
    return None


def _retry_after(exc: BaseException) -> float | None:
    for e in _chain(exc):
        resp = getattr(e, "response", None)
        value = resp.headers.get("Retry-After") if resp is not None else None
        if value and value.strip().isdigit():
            return float(value)
    return None


def _transient(exc: BaseException) -> bool:
    status = http_status(exc)
    if status is not None:
        return status == 429 or status >= 500
    return _network_kind(exc) == "transient"


def to_error(exc: BaseException, repo_id: str, endpoint: str, token: str | None,
             tries: int = 1) -> LoradeckError:
    """One line a person can act on, for anything a push can run into."""
    if isinstance(exc, LoradeckError):
        return exc
    status = http_status(exc)
    server = redact(_server_message(exc), token)
    said = f": {server}" if server else ""
    after = f" after {tries} tries" if tries > 1 else ""
    if status == 401:
        return LoradeckError(f"the Hub rejected the token (401 unauthorized){said}", kind="auth",
                             where=endpoint, hint=f"{LOGIN_HINT} to a valid token")
    if status == 403:
        return LoradeckError(f"no permission to write to {repo_id} (403 forbidden){said}",
                             kind="auth", where=endpoint,
                             hint="use a token with write access, or a namespace you own")
    if status == 404:
        return LoradeckError(f"{repo_id} or its namespace was not found (404){said}", kind="auth",
                             where=endpoint, hint="check the name (namespace/name) and that your "
                             "token can see that namespace")
    if status == 409:
        return LoradeckError(f"the name {repo_id} is taken (409){said}", kind="usage",
                             where=endpoint, hint="choose another --repo name")
    if status == 429:
        return LoradeckError(f"rate limited by the Hub (429){after}", kind="network",
                             where=endpoint, hint="wait a few minutes, then run the same push "
                             "again; files already sent are not sent twice")
    if status is not None and status >= 500:
        return LoradeckError(f"Hub server error ({status}){after}{said}", kind="network",
                             where=endpoint, hint="run the same push again later; files already "
                             "sent are not sent twice")
    if status is not None:
        return LoradeckError(f"the Hub refused the push ({status}){said}", kind="network",
                             where=endpoint, hint="check the repo name and your token")
    net = _network_kind(exc)
    if net == "offline":
        return LoradeckError("offline mode is on (HF_HUB_OFFLINE=1)", kind="network",
                             where=endpoint, hint="unset HF_HUB_OFFLINE to push")
    if net == "unreachable":
        return LoradeckError("cannot reach the Hub (no network?)", kind="network", where=endpoint,
                             hint="check your connection, proxy or HF_ENDPOINT, then run the "
                             "same push again")
    if net == "transient":
        return LoradeckError(f"the connection to the Hub broke off{after}", kind="network",
                             where=endpoint, hint="run the same push again to finish it")
    names = _mro_names(exc)
    if "HFValidationError" in names:
        return LoradeckError(f"{repo_id!r} is not a valid repo name", kind="usage",
                             hint="use namespace/name with letters, digits, '-', '_' or '.'")
    return LoradeckError(f"push failed: {type(exc).__name__}: {redact(str(exc), token)}",
                         kind="internal", where=endpoint,
                         hint="run again with --debug for details")


class _Retrier:
    """Calls a Hub function, retrying 429 / 5xx / cut connections with exponential backoff."""

    def __init__(self, retries: int, backoff: float, say: Callable[[str], None]) -> None:
        self.retries, self.backoff, self.say = retries, backoff, say
        self.tries = 1

    def __call__(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(self.retries + 1):
            self.tries = attempt + 1
            try:
                return fn()
            except Exception as exc:
                if attempt >= self.retries or not _transient(exc):
                    raise
                status = http_status(exc)
                why = f"HTTP {status}" if status else "connection broke off"
                wait = _retry_after(exc)
                wait = min(MAX_WAIT_S, wait if wait is not None else self.backoff * 2 ** attempt)
                self.say(f"{what}: {why}; retrying in {wait:.1f}s "
                         f"(try {attempt + 2} of {self.retries + 1})")
                time.sleep(wait)
        raise AssertionError("unreachable")


# ---- the push ----------------------------------------------------------------------------------
def _has_weights(folder: Path, marker: str) -> bool:
    return (folder / marker).is_file() and any(folder.glob("*.safetensors"))


def _source_dir(run: Run, adapter: bool, events: EventWriter, say: Callable[[str], None],
                checkpoint: int | None = None) -> Path:
    """The folder to push: RUN/adapter, or RUN/merged (merging first when it is missing, or
    holds another adapter than checkpoint ``checkpoint``)."""
    if checkpoint is not None:
        from loradeck.engine.publish.merge import merge_run, needs_merge

        if adapter:
            raise LoradeckError("--checkpoint pushes a merged model", kind="usage",
                                where="--adapter", hint="leave out --adapter, or push the final "
                                                        "adapter without --checkpoint")
        if needs_merge(run, checkpoint):
            say(f"merging checkpoint-{checkpoint}'s adapter into the base first")
            return Path(merge_run(run, events=events, checkpoint=checkpoint))
        return run.merged_dir
    if adapter:
        if not _has_weights(run.adapter_dir, "adapter_config.json"):
            raise LoradeckError("the run has no adapter to push yet", kind="usage",
                                where=str(run.adapter_dir),
                                hint="let training finish (loradeck status RUN), or resume it")
        return run.adapter_dir
    if _has_weights(run.merged_dir, "config.json"):
        return run.merged_dir
    if not _has_weights(run.adapter_dir, "adapter_config.json"):
        raise LoradeckError("the run has neither a merged model nor an adapter to push",
                            kind="usage", where=str(run.dir),
                            hint="let training finish (loradeck status RUN), or resume it")
    say("no merged model yet: merging the adapter into the base first")
    from loradeck.engine.publish.merge import merge_run

    merged = Path(merge_run(run, events=events))
    if not _has_weights(merged, "config.json"):
        raise LoradeckError("the merge left no model to push", kind="internal", where=str(merged),
                            hint="run loradeck merge RUN and check its output")
    return merged


def _stage(files: list[tuple[Path, str]], staging: Path, base_id: str | None,
           root: Path) -> int:
    """Link each file into ``staging`` under its name in the repo (copying the adapter
    config, to name its Hub base); each must be a regular file inside ``root``, the run
    directory."""
    total = 0
    for f, name in files:
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        real = run_files.inside(f, root)
        total += real.stat().st_size
        if name == "adapter_config.json" and base_id:
            data = json.loads(run_files.read_text(f))
            data["base_model_name_or_path"] = base_id
            target.write_text(json.dumps(data, indent=2), encoding="utf-8")
            continue
        try:
            os.link(real, target)
        except OSError:
            os.symlink(real, target)
    return total


def gguf_files(run: Run, quants: list[str]) -> list[Path]:
    """The run's exported GGUF files of these types, each with its Modelfile; one line
    naming the export to run when one is missing."""
    from loradeck.engine.publish.gguf_export import exported_file, modelfile_path

    out = []
    for quant in quants:
        path = exported_file(run, quant)
        out.append(path)
        modelfile = modelfile_path(path)
        if modelfile.is_file():
            out.append(modelfile)
    return out


def web_files(run: Run) -> list[tuple[Path, str]]:
    """The run's browser page (RUN/web), each file with its name in the repo (under
    ``web/``); one line naming the export to run when there is none."""
    from loradeck.engine.publish import web_export

    folder = web_export.web_dir(run)
    return [(folder / rel, f"{web_export.WEB_DIR}/{rel}")
            for rel in web_export.page_files(folder)]


def push_run(run: Run, repo: str, *, adapter: bool = False, public: bool = False,
             gguf: list[str] | None = None, web: bool = False, checkpoint: int | None = None,
             token: str | None = None, endpoint: str | None = None,
             events: EventWriter | None = None, progress: Callable[[str], Any] | None = None,
             retries: int | None = None, backoff: float | None = None) -> str:
    """Push RUN/merged (default) or RUN/adapter to ``repo``; returns the repo URL.

    ``repo`` is ``namespace/name`` or a bare name (the token's user namespace). Private unless
    ``public``. ``events`` defaults to the run's events.jsonl; ``progress`` gets one line per
    step. Raises LoradeckError (kind auth, network or usage) with one line for a person. A run
    whose job is alive (training, merging, another push) is refused before anything is written
    or the Hub is contacted; the run's lock is held for the whole push.
    """
    if run.alive() and not joblock.held_here(run.dir):
        pid = joblock.holder_pid(run.dir)
        raise LoradeckError(f"run {run.id} is still running" + (f" (pid {pid})" if pid else ""),
                            kind="usage", hint="push after it finishes (loradeck status RUN)")
    try:
        with joblock.holding(run.dir, run.id):
            return _push_locked(run, repo, adapter=adapter, public=public, gguf=gguf or [],
                                web=web, token=token, checkpoint=checkpoint,
                                endpoint=endpoint, events=events, progress=progress,
                                retries=retries, backoff=backoff)
    except joblock.AlreadyRunning as exc:  # a job started between the check and the lock
        raise LoradeckError(exc.message, kind="usage", hint="push after it finishes") from None


def _push_locked(run: Run, repo: str, *, adapter: bool, public: bool, gguf: list[str],
                 web: bool, token: str | None, checkpoint: int | None,
                 endpoint: str | None, events: EventWriter | None,
                 progress: Callable[[str], Any] | None, retries: int | None,
                 backoff: float | None) -> str:
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.utils import validate_repo_id

    events = events or EventWriter(run.events_path)
    retries = RETRIES if retries is None else retries
    if backoff is None:
        backoff = float(os.environ.get("LORADECK_PUSH_BACKOFF") or BACKOFF_S)

    def say(text: str) -> None:
        events.log(text)
        if progress is not None:
            progress(text)

    token = token or get_token()
    api = HfApi(endpoint=endpoint, token=token or False, library_name="loradeck",
                library_version=__version__)
    endpoint = api.endpoint
    repo_id = repo.strip()
    what = "adapter" if adapter else "merged model"
    retry = _Retrier(retries, backoff, say)
    events.status("pushing", f"pushing the {what} to {repo_id}")
    try:
        if not token:
            raise LoradeckError("no Hub token found", kind="auth", hint=LOGIN_HINT)
        if repo_id.count("/") > 1 or not repo_id.strip("/"):
            raise LoradeckError(f"{repo!r} is not a valid repo name", kind="usage",
                                hint="use namespace/name, e.g. you/my-model")
        say(f"checking the token with {endpoint}")
        me = retry("checking the token", lambda: api.whoami(token=token))
        mine = {me.get("name")} | {o.get("name") for o in me.get("orgs") or []}
        if "/" not in repo_id:
            repo_id = f"{me.get('name')}/{repo_id}"
        validate_repo_id(repo_id)
        # refused before the repo is made when one is missing, and so is a planted link
        ggufs = gguf_files(run, gguf)
        extra = [(f, f.name) for f in ggufs] + (web_files(run) if web else [])
        for f, _name in extra:
            run_files.inside(f, run.dir)
        source = _source_dir(run, adapter, events, say, checkpoint)  # may merge first
        files = [(f, f.name) for f in select_files(source, run.dir)] + extra
        url = _ensure_repo(api, repo_id, public, mine, retry, say)
        with tempfile.TemporaryDirectory(prefix="loradeck-push-") as tmp:
            staging = Path(tmp)
            total = _stage(files, staging, hub_id(run.config().model.name) if adapter else None,
                           run.dir)
            page = None
            if web:
                from loradeck.engine.publish import web_export

                page = web_export.manifest(web_export.web_dir(run))
                readme = staging / web_export.WEB_DIR / "README.md"
                readme.write_text(web_export.space_readme(f"{repo_id.split('/')[-1]} chat"),
                                  encoding="utf-8")
            card = write_card(run, adapter, staging, repo_id=repo_id,
                              gguf=[f.name for f in ggufs if f.suffix == ".gguf"], web=page)
            names = [n for _f, n in files] + [c.name for c in card]
            if web:
                names.append(f"{web_export.WEB_DIR}/README.md")
            say(f"uploading {len(names)} files ({byte_size(total)}): {', '.join(names)}")
            retry("uploading", lambda: api.upload_folder(
                repo_id=repo_id, folder_path=staging, repo_type="model",
                commit_message=f"Upload {what} with loradeck",
                commit_description=f"loradeck run {run.id}"))
    except KeyboardInterrupt:
        events.status(fold(run.events()).restore_phase(), f"push to {repo_id} interrupted; run the same push "
                      "again to finish it")
        raise
    except Exception as exc:
        err = to_error(exc, repo_id, endpoint, token, retry.tries)
        events.error(err.kind, redact(err.to_event()["message"], token), err.hint or "")
        events.status(fold(run.events()).restore_phase(),
                      f"push to {repo_id} failed: {redact(err.message, token)}")
        if err is exc:
            raise
        raise err from None
    events.status("pushed", f"pushed the {what} to {url}")
    say(f"pushed the {what} to {url} ({'public' if public else 'private'})")
    return url


def _ensure_repo(api, repo_id: str, public: bool, mine: set[str], retry: _Retrier,
                 say: Callable[[str], None]) -> str:
    """Create the repo (private unless ``public``), or reuse ours after an interrupted push."""
    url = f"{api.endpoint}/{repo_id}"
    visibility = "public" if public else "private"
    try:
        retry("creating the repo", lambda: api.create_repo(repo_id, private=not public,
                                                           repo_type="model", exist_ok=False))
        say(f"created {visibility} repo {repo_id}")
        return url
    except Exception as exc:
        if http_status(exc) != 409:
            raise
    if repo_id.split("/")[0] not in mine:
        raise LoradeckError(f"the name {repo_id} is taken by someone else", kind="usage",
                            where=api.endpoint, hint="choose another --repo name")
    info = retry("reading the repo", lambda: api.model_info(repo_id))
    if info.private is False and not public:
        raise LoradeckError(f"{repo_id} already exists and is public", kind="usage",
                            where=api.endpoint, hint="add --public to update it, or choose "
                            "another --repo name")
    if info.private and public:
        retry("making the repo public",
              lambda: api.update_repo_settings(repo_id, private=False, repo_type="model"))
        say(f"made {repo_id} public")
    say(f"{repo_id} exists: updating it")
    return url


# ---- process entry point -----------------------------------------------------------------------
def quiet_hub_output() -> None:
    """No progress bars or library warnings unless stderr is a terminal (lines come from us)."""
    from huggingface_hub.utils import disable_progress_bars, logging

    if not sys.stderr.isatty():
        disable_progress_bars()
    logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loradeck.engine.publish.hub",
                                description="push a run's merged model or adapter to the Hub")
    p.add_argument("run", metavar="RUN_DIR", help="run directory (or run id)")
    p.add_argument("--repo", required=True, help="namespace/name or a bare name")
    p.add_argument("--adapter", action="store_true", help="push the adapter, not the merged model")
    p.add_argument("--public", action="store_true", help="make the repo public (default private)")
    p.add_argument("--web", action="store_true", help="also push the browser page (RUN/web)")
    args = p.parse_args(argv)
    quiet_hub_output()
    try:
        run = RunStore().resolve(args.run)
        url = push_run(run, args.repo, adapter=args.adapter, public=args.public, web=args.web,
                       progress=lambda line: print(line, flush=True))
    except LoradeckError as exc:
        print(f"loradeck: {exc.line()}", file=sys.stderr)
        return exc.kind.exit_status
    print(url, flush=True)
    return 0


if __name__ == "__main__":
    exit_now(main())
