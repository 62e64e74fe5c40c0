"""The Push screen: merge the run if needed, then push the merged model or the adapter to the
Hub (private unless switched to public), with the model card previewed, progress while it runs
and the repo's address at the end. Beside it: export a GGUF file, or the browser page (RUN/web,
a chat page that runs the GGUF in the user's own browser), which the push can take along.

Merge and push run as processes (``python -m loradeck.engine.publish.merge RUN_DIR``, ``python -m loradeck.engine.publish.hub
RUN_DIR --repo NAME``) that report in RUN/events.jsonl; the token stays with huggingface_hub in
that process and is never shown here.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import reactive
from textual.widgets import Input, Label, Markdown, ProgressBar, Select, Switch
from textual.worker import Worker, WorkerState

from loradeck.engine.errors import redact
from loradeck.engine.publish.gguf_export import DEFAULT_QUANT as GGUF_DEFAULT
from loradeck.engine.publish.gguf_export import QUANTS as GGUF_TYPES
from loradeck.tui.run_view import RunView
from loradeck.tui.screens import LoradeckScreen
from loradeck.tui.widgets.footer import KeysFooter
from loradeck.tui.widgets.help_line import HelpLine
from loradeck.tui.widgets.inline_message import InlineMessage
from loradeck.tui.widgets.line_input import LineInput
from loradeck.tui.widgets.nav import NavBar

POLL_SECONDS = 0.3
REFRESH_SECONDS = 3.0
URL_RE = re.compile(r"https?://\S+")
FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n+", re.S)


def process_env() -> dict[str, str]:
    """The environment of merge and push processes: ours, unbuffered."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def card_preview(markdown: str) -> str:
    """The card without its YAML metadata block (kept on the Hub, noise in a preview)."""
    return FRONT_MATTER.sub("", markdown, count=1)


def default_repo_name(run: Any) -> str:
    """A repo name for the run: its configured name, else the run id."""
    try:
        name = run.config().run.name
    except Exception:
        name = None
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name or run.id).strip("-.")[:96] or "loradeck-model"


SWITCH_STATE = {False: "off", True: "on"}


class PushScreen(LoradeckScreen):
    """Merge and push the current run."""

    MODE = "push"
    TITLE = "Push"
    BINDINGS = [
        Binding("ctrl+s", "push", "Push", id="push.push",
                tooltip="Push to the Hub (merging first when the merged model is missing)"),
        Binding("ctrl+e", "export", "Export GGUF", id="push.export",
                tooltip="Write a GGUF file (the type chosen) for llama.cpp and Ollama, checked "
                        "in llama.cpp (merging first when needed)"),
        Binding("ctrl+o", "web", "Browser page", id="push.web",
                tooltip="Write RUN/web: a chat page that runs the GGUF (the type chosen) in "
                        "your own browser (exporting the GGUF first when needed)"),
        Binding("ctrl+g", "merge", "Merge", id="push.merge",
                tooltip="Merge the adapter into the base model (16-bit)"),
    ]
    DEFAULT_CSS = """
    PushScreen #push-title { padding: 0 1; text-style: bold; width: 1fr; }
    PushScreen #push-state { padding: 0 1; color: $text-muted; width: 1fr; }
    PushScreen .push-row { height: 1; padding: 0 1; margin-top: 1; }
    PushScreen .push-row > Label { padding: 0 1 0 0; width: auto; }
    PushScreen #push-repo { width: 1fr; }
    PushScreen .push-row > Switch { border: none; height: 1; padding: 0; width: 6;
                                    margin-right: 1; }
    PushScreen .push-row > .switch-state { width: 5; color: $text-muted; }
    PushScreen .push-row > .switch-state.-on { color: $text-success; text-style: bold; }
    PushScreen #push-switches, PushScreen #push-web-row { margin-top: 0; }
    PushScreen #push-web-info { width: 1fr; color: $text-muted; text-wrap: nowrap;
                                text-overflow: ellipsis; }
    PushScreen #push-progress-row { height: 1; padding: 0 1; }
    PushScreen #push-progress-row > ProgressBar { width: auto; margin-right: 1; }
    PushScreen #push-status { width: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    PushScreen #push-url { padding: 0 1; color: $text-success; text-style: bold; display: none; }
    PushScreen #push-url.-shown { display: block; }
    PushScreen #push-card-box { height: 1fr; border: round $panel; }
    PushScreen #push-card-box:focus-within { border: round $primary; }
    """

    AUTO_FOCUS = "#push-card-box"
    busy: reactive[str | None] = reactive(None)

    def __init__(self, *, name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self.run_obj: Any = None
        self.summary: dict[str, Any] = {}
        self.repo_url: str | None = None
        self.card_text: str = ""
        self._card_repo = ""
        self._auto_repo: str | None = None

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        with Vertical(id="push"):
            yield Label("No run chosen", id="push-title", markup=False)
            yield Label("", id="push-state", markup=False)
            with Horizontal(classes="push-row"):
                yield Label("repo")
                yield LineInput(placeholder="namespace/name, or a name under your account",
                                id="push-repo", compact=True,
                                tooltip="The Hub repo: namespace/name, or a bare name under the "
                                        "token's user")
            with Horizontal(classes="push-row", id="push-switches"):
                yield Label("public")
                yield Switch(False, id="push-public",
                             tooltip="Off: a private repo (the default). On: anyone can see it")
                yield Label(SWITCH_STATE[False], id="push-public-state", classes="switch-state")
                yield Label("adapter only")
                yield Switch(False, id="push-adapter",
                             tooltip="Off: the merged model (loads without PEFT). On: only the "
                                     "LoRA adapter")
                yield Label(SWITCH_STATE[False], id="push-adapter-state", classes="switch-state")
                yield Label("GGUF")
                yield Select([(q, q) for q in GGUF_TYPES], value=GGUF_DEFAULT,
                             allow_blank=False, compact=True, id="push-gguf-type",
                             tooltip="The GGUF type ctrl+e exports (llama.cpp, Ollama), "
                                     "and ctrl+o puts in the browser page")
            with Horizontal(classes="push-row", id="push-web-row"):
                yield Label("browser page")
                yield Switch(False, id="push-web",
                             tooltip="On: the push takes the browser page along, as web/ (a "
                                     "static Space as it is)")
                yield Label(SWITCH_STATE[False], id="push-web-state", classes="switch-state")
                yield Label("", id="push-web-info", markup=False)
            yield InlineMessage(id="push-message")
            with Horizontal(id="push-progress-row"):
                yield ProgressBar(total=1, show_eta=False, show_percentage=False,
                                  id="push-bar")
                yield Label("", id="push-status", markup=False)
            yield Label("", id="push-url", markup=False)
            with VerticalScroll(id="push-card-box"):
                yield Markdown("", id="push-card")
        yield HelpLine("tab/shift+tab move · space toggles · ctrl+s push · ctrl+g merge · "
                       "ctrl+e GGUF · ctrl+o page", id="help-line")
        yield KeysFooter()

    def on_mount(self) -> None:
        self.query_one("#push-card-box").border_title = "model card preview"
        self.set_interval(REFRESH_SECONDS, self._refresh_if_training, name="push-refresh")
        self.watch(self.lapp, "current_run_id", self._run_changed, init=True)

    def on_screen_resume(self) -> None:
        if self.run_obj is not None and not self.busy:
            self._refresh_run()

    # run -------------------------------------------------------------------------------------
    def _run_changed(self, run_id: str | None) -> None:
        self.show_run(run_id)

    def show_run(self, run_id: str | None) -> None:
        self.repo_url = None
        self.query_one("#push-url", Label).remove_class("-shown")
        self.query_one("#push-message", InlineMessage).clear()
        self.query_one("#push-status", Label).update("")
        if run_id is None:
            self.run_obj = None
            self.query_one("#push-title", Label).update(
                "No run chosen: open one from the Runs screen (r), or train one (t)")
            self.query_one("#push-state", Label).update("")
            self.query_one("#push-card", Markdown).update("")
            self.refresh_bindings()
            return
        from loradeck.engine.runs.store import RunStore

        try:
            self.run_obj = RunStore().resolve(run_id)
        except Exception as exc:
            self.run_obj = None
            self.query_one("#push-message", InlineMessage).show_error(exc)
            self.refresh_bindings()
            return
        self.query_one("#push-title", Label).update(f"Push run {self.run_obj.id}")
        repo = self.query_one("#push-repo", Input)
        if repo.value.strip() in ("", self._auto_repo or ""):
            repo.value = self._auto_repo = default_repo_name(self.run_obj)
        self._refresh_run()

    def _refresh_if_training(self) -> None:
        """While the run's job is alive, look again (push applies once it finishes)."""
        if not self.busy and self.summary.get("alive"):
            self._refresh_run()

    def _refresh_run(self) -> None:
        if self.run_obj is not None:
            self._card_repo = self.query_one("#push-repo", Input).value.strip()
            self._load_run_state(self.run_obj, self.query_one("#push-adapter", Switch).value,
                                 self._card_repo, self._web_on())

    @work(thread=True, exclusive=True, group="push-state", exit_on_error=False,
          description="reading the run's push state")
    def _load_run_state(self, run: Any, adapter: bool, repo: str, web: bool) -> None:
        """Read the run's summary and its page, and render the card preview (in a thread)."""
        summary = run.summary()
        from loradeck.engine.publish import web_export
        from loradeck.engine.publish.model_card import render_card

        folder = web_export.web_dir(run)
        page = web_export.manifest(folder)
        if page is not None:
            page = {**page, "download": web_export.download_size(folder)}
        summary = {**summary, "page": page}
        card = card_preview(render_card(run, adapter, repo_id=repo or None,
                                        web=page if web else None))
        self.app.call_from_thread(self._show_state, run, summary, card)

    def _web_on(self) -> bool:
        return self.query_one("#push-web", Switch).value

    def _show_state(self, run: Any, summary: dict[str, Any], card: str) -> None:
        if run is not self.run_obj:
            return
        self.summary = summary
        page = summary.get("page")
        self.query_one("#push-web-info", Label).update(
            f"· RUN/web: {page.get('quant')}, {page['download'] / 1e6:.1f} MB for the browser "
            f"to download · loradeck web {run.id} serves it" if page else
            "· none yet: ctrl+o writes it around the GGUF type above")
        merged = "merged model ready" if summary.get("has_merged") else "not merged yet"
        adapter = "adapter ready" if summary.get("has_adapter") else "no adapter yet"
        self.query_one("#push-state", Label).update(
            f"{summary.get('phase')} · {adapter} · {merged} · private unless public is on")
        if card != self.card_text:
            self.card_text = card
            self.query_one("#push-card", Markdown).update(card)
        self._show_plan()
        self.refresh_bindings()

    @on(Switch.Changed)
    def _show_switch_state(self, event: Switch.Changed) -> None:
        """The switch's state in a word beside it: its colours alone do not say it."""
        state = self.query_one(f"#{event.switch.id}-state", Label)
        state.update(SWITCH_STATE[event.value])
        state.set_class(event.value, "-on")

    @on(Switch.Changed, "#push-adapter")
    @on(Switch.Changed, "#push-web")
    def _adapter_switched(self) -> None:
        self._refresh_run()
        self._show_plan()

    @on(Switch.Changed, "#push-public")
    def _public_switched(self) -> None:
        self._show_plan()

    @on(Input.Changed, "#push-repo")
    def _repo_changed(self) -> None:
        self._show_plan()
        self.set_timer(0.4, self._refresh_if_repo_settled, name="push-card-debounce")

    def _refresh_if_repo_settled(self) -> None:
        if self.query_one("#push-repo", Input).value.strip() != self._card_repo:
            self._refresh_run()

    def plan(self) -> str:
        """What ctrl+s will do, in words."""
        adapter = self.query_one("#push-adapter", Switch).value
        public = self.query_one("#push-public", Switch).value
        what = "the adapter" if adapter else (
            "the merged model" if self.summary.get("has_merged") else "the merged model "
            "(merging first)")
        if self._web_on():
            what += " and the browser page" if self.summary.get("page") else \
                " and the browser page (none yet: ctrl+o writes it)"
        return f"{what} as a {'public' if public else 'private'} repo"

    def _show_plan(self) -> None:
        if not self.busy and self.repo_url is None and self.run_obj is not None:
            self.query_one("#push-status", Label).update(f"ctrl+s pushes {self.plan()}")

    # actions ---------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action not in ("push", "merge", "export", "web"):
            return True
        if self.busy or self.run_obj is None:
            return None
        s = self.summary
        if s.get("alive") and s.get("phase") in ("queued", "loading", "training", "saving",
                                                  "stopping"):
            return None
        if action == "merge":
            return True if s.get("has_adapter") and not s.get("has_merged") else None
        return True if (s.get("has_adapter") or s.get("has_merged")) else None

    def watch_busy(self) -> None:
        self.refresh_bindings()

    def action_merge(self) -> None:
        run = self.run_obj
        if run is None:
            return
        self._run_process("merging", [sys.executable, "-m", "loradeck.engine.publish.merge", str(run.dir)])

    def action_export(self) -> None:
        self._export("exporting")

    def action_web(self) -> None:
        self._export("writing the page", "--web")

    def _export(self, what: str, *flags: str) -> None:
        """The GGUF file of the type chosen (or, with ``--web``, the browser page around it),
        in a process of its own."""
        run = self.run_obj
        if run is None:
            return
        quant = str(self.query_one("#push-gguf-type", Select).value)
        self._run_process(what, [sys.executable, "-m", "loradeck.engine.publish.gguf_export",
                                 str(run.dir), "--quant", quant, *flags])

    def action_push(self) -> None:
        run = self.run_obj
        if run is None:
            return
        repo = self.query_one("#push-repo", Input).value.strip()
        message = self.query_one("#push-message", InlineMessage)
        if not repo or repo.count("/") > 1 or any(c.isspace() for c in repo):
            message.show_error("repo: give a name like you/my-model (or just my-model)")
            self.query_one("#push-repo", Input).focus()
            return
        cmd = [sys.executable, "-m", "loradeck.engine.publish.hub", str(run.dir), "--repo", repo]
        if self.query_one("#push-adapter", Switch).value:
            cmd.append("--adapter")
        if self.query_one("#push-public", Switch).value:
            cmd.append("--public")
        if self._web_on():
            if not self.summary.get("page"):
                message.show_error("browser page: none yet; write it first with ctrl+o, or "
                                   "switch browser page off")
                return
            cmd.append("--web")
        self._run_process("pushing", cmd)

    def _run_process(self, what: str, cmd: list[str]) -> None:
        self.busy = what
        self.repo_url = None
        self.query_one("#push-url", Label).remove_class("-shown")
        self.query_one("#push-message", InlineMessage).clear()
        self.query_one("#push-bar", ProgressBar).update(total=None, progress=0)
        self.query_one("#push-status", Label).update(f"{what}…")
        self._process(what, cmd)

    @work(exclusive=True, group="push-process", exit_on_error=False,
          description="merging or pushing in a child process")
    async def _process(self, what: str, cmd: list[str]) -> None:
        """Run a merge or push process; follow its events; show the result in place."""
        from loradeck.engine.runs.events import EventTail

        run = self.run_obj
        status = self.query_one("#push-status", Label)
        tail = EventTail(run.events_path)
        tail.offset = run.events_path.stat().st_size if run.events_path.exists() else 0
        view = RunView(max_log_lines=50)
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL, env=process_env())
        out_task = asyncio.create_task(proc.stdout.read())
        err_task = asyncio.create_task(proc.stderr.read())
        try:
            while proc.returncode is None:
                try:
                    await asyncio.wait_for(proc.wait(), POLL_SECONDS)
                except TimeoutError:
                    pass
                delta = view.feed(tail.poll())
                if delta.new_lines:
                    status.update(redact(delta.new_lines[-1].split("] ", 1)[-1]))
        except asyncio.CancelledError:
            proc.terminate()
            raise
        out = (await out_task).decode("utf-8", errors="replace")
        err = (await err_task).decode("utf-8", errors="replace")
        view.feed(tail.poll())
        self._finished(what, proc.returncode, out, err, view)

    def _finished(self, what: str, code: int, out: str, err: str, view: RunView) -> None:
        self.busy = None
        bar = self.query_one("#push-bar", ProgressBar)
        message = self.query_one("#push-message", InlineMessage)
        status = self.query_one("#push-status", Label)
        if code != 0:
            bar.update(total=1, progress=0)
            lines = [ln for ln in err.splitlines() if ln.strip()]
            reason = lines[-1] if lines else f"the {what} process exited with status {code}"
            reason = reason.removeprefix("loradeck merge: ").removeprefix("loradeck: ")
            verb = {"merging": "merge", "exporting": "export",
                    "writing the page": "browser page"}.get(what, "push")
            message.show_error(f"{verb} failed: {reason}")
            status.update("")
        elif what == "exporting":
            bar.update(total=1, progress=1)
            written = [ln for ln in out.splitlines() if ".gguf: " in ln and "MB;" in ln]
            message.show_success(written[-1] if written else "exported")
            status.update("exported: RUN/gguf holds the file and loradeck-report.json")
        elif what == "writing the page":
            bar.update(total=1, progress=1)
            said = [ln for ln in out.splitlines()
                    if ln.startswith(("browser page written", "serve it"))]
            message.show_success("\n".join(said) or "browser page written")
        elif what == "merging":
            bar.update(total=1, progress=1)
            message.show_success("merged: the merged model is ready to push")
        else:
            bar.update(total=1, progress=1)
            urls = [m.group(0) for ln in out.splitlines() for m in [URL_RE.match(ln.strip())] if m]
            self.repo_url = urls[-1] if urls else view.repo_url
            status.update("pushed")
            url_label = self.query_one("#push-url", Label)
            url_label.update(f"pushed to {redact(self.repo_url or 'the Hub')}")
            url_label.add_class("-shown")
        self._refresh_run()

    def show_worker_error(self, worker: Worker, error: BaseException) -> None:
        self.busy = None
        self.query_one("#push-bar", ProgressBar).update(total=1, progress=0)
        self.query_one("#push-message", InlineMessage).show_error(error)

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "push-process" and event.state in (WorkerState.ERROR,
                                                                    WorkerState.CANCELLED):
            self.busy = None
