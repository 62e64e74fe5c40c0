"""The Chat screen: prompt a run's model (adapter or merged) or any model, with replies streamed
as Markdown, base and tuned side by side, or the run's GGUF file (llama.cpp) beside its 16-bit
model, sampling settings, time to first token and tokens/s.

The model runs in a chat worker process (loradeck.engine.serve.client.AsyncChatClient) that loads it once;
base vs tuned is the same load with the adapter switched off, then on. A GGUF file runs in a
second worker (llama.cpp, no torch), loaded once per file.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Input, Label
from textual.worker import Worker, WorkerState

from loradeck.engine.serve.api_child import EndpointInfo, ServedModel
from loradeck.engine.serve.replies import Failed, Finished, Reply, Token
from loradeck.tui.screens import LoradeckScreen
from loradeck.tui.widgets.chat_log import ChatPane, ReplyView
from loradeck.tui.widgets.footer import KeysFooter
from loradeck.tui.widgets.help_line import HelpLine
from loradeck.tui.widgets.inline_message import InlineMessage
from loradeck.tui.widgets.line_input import LineInput
from loradeck.tui.widgets.nav import NavBar

# (sampling param, label, input type); defaults, ranges and help from ChatParams
SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("temperature", "temp", "number"),
    ("top_p", "top_p", "number"),
    ("top_k", "top_k", "integer"),
    ("max_new_tokens", "max", "integer"),
    ("repetition_penalty", "rep", "number"),
)


def parse_params(values: dict[str, str]) -> dict[str, Any]:
    """Sampling settings from the inputs' text (empty: the default); ValueError naming the
    bad one."""
    from loradeck.engine.serve import params as chat_params

    out: dict[str, Any] = {}
    for key, _label, kind in SETTINGS:
        raw = (values.get(key) or "").strip()
        if not raw:
            continue
        try:
            out[key] = int(raw) if kind == "integer" else float(raw)
        except ValueError:
            raise ValueError(f"{key}: {raw!r} is not a {'whole ' if kind == 'integer' else ''}"
                             f"number; {chat_params.help_line(key)}") from None
    return chat_params.check(out)


@dataclass
class HeldModel:
    """What the chat worker holds now."""

    ref: str
    compare: bool
    target: Any
    info: dict[str, Any]


class ChatScreen(LoradeckScreen):
    """Prompt the tuned model, or base and tuned side by side."""

    MODE = "chat"
    TITLE = "Chat"
    BINDINGS = [
        # Send, Clear and Load are left out of the footer to fit 80 columns (enter sends; the
        # keys panel, F1, and the palette list them)
        Binding("ctrl+s", "send", "Send", id="chat.send", show=False,
                tooltip="Send the prompt (or enter)"),
        Binding("ctrl+g", "stop", "Stop", id="chat.stop", tooltip="Stop the reply being written"),
        Binding("ctrl+b", "compare", "Base|tuned", id="chat.compare",
                tooltip="Show base and tuned replies to the same prompt side by side"),
        Binding("ctrl+f", "gguf", "GGUF", id="chat.gguf",
                tooltip="Put the run's GGUF file (llama.cpp) beside its 16-bit model; again: "
                        "the next exported type, then off"),
        Binding("ctrl+y", "save", "Save chat", id="chat.save",
                tooltip="Save the conversation as Markdown in the run's chats folder"),
        Binding("ctrl+l", "clear", "Clear", id="chat.clear", show=False,
                tooltip="Clear the conversation"),
        Binding("ctrl+o", "load", "Load", id="chat.load", show=False,
                tooltip="Load the model named in the model field"),
        Binding("ctrl+t", "pick_model", "Model", id="chat.model", show=False,
                tooltip="Go to the model field (a run id, a model directory, a Hub id, "
                        "FILE.gguf or demo:tiny)"),
        Binding("ctrl+r", "pick_prompt", "Prompt", id="chat.prompt", show=False,
                tooltip="Go to the prompt field, from any field of the screen"),
        Binding("ctrl+n", "endpoint", "Endpoint", id="chat.endpoint", show=False,
                tooltip="Serve the model as an OpenAI-compatible endpoint on this machine "
                        "(loradeck api, with a new key); again: stop it"),
        Binding("f6", "arena", "Blind A/B", id="chat.arena", show=False,
                tooltip="Blind votes: a run's base and tuned model answer each prompt as A "
                        "and B in a random order; vote with a, b or = (saved in the run's "
                        "arena.jsonl); again: off"),
        Binding("a", "vote('A')", "A is better", id="chat.vote_a",
                tooltip="Vote for answer A (blind A/B)"),
        Binding("b", "vote('B')", "B is better", id="chat.vote_b",
                tooltip="Vote for answer B (blind A/B)"),
        Binding("equals_sign", "vote('tie')", "Tie", id="chat.vote_tie", key_display="=",
                tooltip="Vote a tie (blind A/B)"),
    ]
    DEFAULT_CSS = """
    ChatScreen #chat-target-row, ChatScreen #chat-settings { height: 1; padding: 0 1; }
    ChatScreen #chat-target-row > Label, ChatScreen #chat-settings > Label {
        width: auto; padding: 0 1 0 0; color: $text-muted; }
    ChatScreen #chat-target { width: 1fr; }
    ChatScreen #chat-loaded { width: 1fr; padding-left: 1; text-wrap: nowrap;
                              text-overflow: ellipsis; }
    ChatScreen #chat-settings > Input { width: 8; margin-right: 1; }
    ChatScreen #chat-panes { height: 1fr; }
    ChatScreen #pane-base { display: none; }
    ChatScreen.-compare #pane-base, ChatScreen.-gguf #pane-base,
    ChatScreen.-arena #pane-base { display: block; }
    ChatScreen #chat-prompt { margin: 0 0; }
    """

    compare: reactive[bool] = reactive(False)
    gguf_file: reactive[str | None] = reactive(None)  # shown beside the 16-bit model
    generating: reactive[bool] = reactive(False)
    arena: reactive[bool] = reactive(False)  # blind A/B votes
    vote_pending: reactive[bool] = reactive(False)  # both answered, no vote yet

    def __init__(self, *, name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self.client: Any = None
        self.endpoint = ServedModel()  # `loradeck api` for the screen's model (ctrl+n)
        self.gguf_client: Any = None
        self.gguf_loaded: str | None = None
        self.current_client: Any = None
        self.loaded: HeldModel | None = None
        self.model_loading = False
        self.current_id: str | None = None
        self._ids = itertools.count(1)
        self._auto_ref: str | None = None
        self.round: Any = None  # the blind round answered (engine.evals.arena.Round)
        self.round_prompt = ""

    # layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        with Vertical(id="chat"):
            with Horizontal(id="chat-target-row"):
                yield Label("model")
                yield LineInput(placeholder="run id, model directory, Hub id or demo:tiny",
                                id="chat-target", compact=True,
                                tooltip="What to chat with: a run (its adapter or merged model) or "
                                        "any model; enter loads it")
                yield Label("not loaded", id="chat-loaded", markup=False)
            with Horizontal(id="chat-settings"):
                from loradeck.engine.serve import params as chat_params

                for key, label, kind in SETTINGS:
                    yield Label(label)
                    yield LineInput(str(chat_params.default(key)), id=f"set-{key}", type=kind,
                                    compact=True, tooltip=chat_params.help_line(key))
            yield InlineMessage(id="chat-message")
            with Horizontal(id="chat-panes"):
                yield ChatPane("base", id="pane-base")
                yield ChatPane("tuned", id="pane-tuned")
            yield LineInput(placeholder="Type a prompt and press enter", id="chat-prompt",
                            tooltip="Your message: enter sends it · ctrl+t the model field · "
                                    "ctrl+y saves the chat · ctrl+g stops a reply · "
                                    "alt+letter another screen · Esc leaves the field")
        yield HelpLine("ctrl+r prompt · ctrl+t model · enter sends · ctrl+g stops · Esc back",
                       id="help-line")
        yield KeysFooter()

    def on_mount(self) -> None:
        self.watch(self.lapp, "current_run_id", self._run_changed, init=True)
        self.query_one("#chat-prompt", Input).focus()

    def _run_changed(self, run_id: str | None) -> None:
        """Follow the app's current run unless the user typed another target."""
        field = self.query_one("#chat-target", Input)
        if run_id and field.value.strip() in ("", self._auto_ref or ""):
            field.value = run_id
            self._auto_ref = run_id

    async def on_unmount(self) -> None:
        await asyncio.to_thread(self.endpoint.stop)
        clients = (self.client, self.gguf_client)
        self.client = self.gguf_client = None
        for client in clients:
            if client is not None:
                await client.close(timeout=5)

    # state -----------------------------------------------------------------------------------
    def watch_compare(self, compare: bool) -> None:
        if compare:
            self.gguf_file = None
            self.arena = False
        self.set_class(compare, "-compare")
        self._titles()
        self.refresh_bindings()

    def watch_gguf_file(self, path: str | None) -> None:
        if path:
            self.compare = False
            self.arena = False
        self.set_class(bool(path), "-gguf")
        self._titles()
        self.refresh_bindings()

    def _titles(self) -> None:
        from pathlib import Path

        from loradeck.engine.publish.gguf_export import quant_of

        tuned = self.query_one("#pane-tuned", ChatPane)
        base = self.query_one("#pane-base", ChatPane)
        if self.gguf_file:
            base.border_title = f"GGUF {quant_of(Path(self.gguf_file))} · llama.cpp"
            tuned.border_title = "16-bit · transformers"
        elif self.arena:
            base.border_title, tuned.border_title = "A", "B"
        else:
            base.border_title = "base"
            tuned.border_title = "tuned" if self.compare else "reply"

    def watch_generating(self) -> None:
        self.refresh_bindings()

    def watch_arena(self, arena: bool) -> None:
        if arena:
            self.compare = False
            self.gguf_file = None
        self.vote_pending = False
        self.set_class(arena, "-arena")
        self._titles()
        self.refresh_bindings()

    def watch_vote_pending(self) -> None:
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "vote":
            return True if self.vote_pending else False  # listed only while a vote is due
        if action == "stop":
            return True if self.generating else None
        if action in ("send", "load", "clear"):
            return None if (self.generating or self.model_loading) else True
        return True

    def show_message(self, text: str) -> None:
        self.query_one("#chat-message", InlineMessage).show_info(text)

    def show_worker_error(self, worker: Worker, error: BaseException) -> None:
        self.model_loading = False
        self.generating = False
        self.query_one("#chat-panes").loading = False
        self.query_one("#chat-message", InlineMessage).show_error(error)

    def _show_model_defaults(self, defaults: dict[str, Any]) -> None:
        """The loaded model's own sampling defaults (its generation config) in the settings
        the person has not changed: they are what a reply then uses."""
        from loradeck.engine.serve import params as chat_params

        for key, *_ in SETTINGS:
            field = self.query_one(f"#set-{key}", Input)
            if key in defaults and field.value == str(chat_params.default(key)):
                field.value = str(defaults[key])

    def params(self) -> dict[str, Any]:
        values = {key: self.query_one(f"#set-{key}", Input).value for key, *_ in SETTINGS}
        return parse_params(values)

    # actions ---------------------------------------------------------------------------------
    @on(Input.Submitted, "#chat-prompt")
    def _prompt_submitted(self) -> None:
        if self.check_action("send", ()) is True:
            self.action_send()

    @on(Input.Submitted, "#chat-target")
    def _target_submitted(self) -> None:
        if self.check_action("load", ()) is True:
            self.action_load()
            self.action_pick_prompt()  # named the model: next comes the prompt

    def action_pick_model(self) -> None:
        self.query_one("#chat-target", Input).focus()

    class EndpointReady(Message, bubble=False):
        """The endpoint serves (from the worker that started it)."""

        def __init__(self, info: EndpointInfo) -> None:
            super().__init__()
            self.info = info

    def action_endpoint(self) -> None:
        """Serve the model the screen names as an endpoint, or stop the one serving."""
        if self.endpoint.running:
            self._stop_endpoint("the endpoint is stopped")
            return
        ref = self.loaded.ref if self.loaded else \
            self.query_one("#chat-target", Input).value.strip()
        if not ref:
            self.show_message("name a model first")
            return
        self.show_message(f"starting an endpoint for {ref}…")
        self._start_endpoint(ref)

    @work(thread=True, exclusive=True, group="endpoint", exit_on_error=False,
          description="starting loradeck api for the screen's model")
    def _start_endpoint(self, ref: str) -> None:
        self.report(self.EndpointReady(self.endpoint.start(ref)))

    @on(EndpointReady)
    def _endpoint_ready(self, message: EndpointReady) -> None:
        info = message.info
        self.query_one("#chat-message", InlineMessage).show_success(
            f"endpoint {info.url} · key {info.key} · ctrl+n stops it")

    def _stop_endpoint(self, said: str | None = None) -> None:
        self.endpoint.stop()
        if said:
            self.show_message(said)

    def action_pick_prompt(self) -> None:
        self.query_one("#chat-prompt", Input).focus()

    def action_compare(self) -> None:
        self.compare = not self.compare

    async def action_arena(self) -> None:
        """Blind A/B votes on, or off."""
        self.arena = not self.arena
        await self._new_conversation()
        if self.arena:
            self.show_message("blind A/B: each prompt is answered by the run's base and tuned "
                              "model as A and B, in a random order; vote with a, b or =")
        else:
            self.query_one("#chat-message", InlineMessage).clear()

    def action_vote(self, label: str) -> None:
        """Save the vote on the round answered, say which side each label was, and the
        tuned model's win rate so far."""
        from loradeck.engine.enums import JudgeVerdict
        from loradeck.engine.evals import arena
        from loradeck.engine.runs.store import RunStore

        if not self.vote_pending or self.round is None or self.loaded is None:
            return
        run = RunStore().resolve(self.loaded.target.run_id)
        answers = {"A": self._last_answer("#pane-base"), "B": self._last_answer("#pane-tuned")}
        arena.record(run.dir, self.round, JudgeVerdict(label), self.round_prompt, answers,
                     tuned=self.loaded.target.label, base=self.loaded.target.model)
        self.vote_pending = False
        revealed = f"A was {self.round.side('A')}, B was {self.round.side('B')}"
        self.query_one("#pane-base", ChatPane).border_title = f"A · {self.round.side('A')}"
        self.query_one("#pane-tuned", ChatPane).border_title = f"B · {self.round.side('B')}"
        self.query_one("#chat-message", InlineMessage).show_success(
            f"vote saved ({revealed}). Tuned so far: {arena.tally(run.dir).line()}")
        self.action_pick_prompt()

    def _last_answer(self, pane_id: str) -> str:
        turns = self.query_one(pane_id, ChatPane).conversation.turns
        return turns[-1].content if turns else ""

    async def action_gguf(self) -> None:
        """The run's next exported GGUF file beside its 16-bit model, then off."""
        from loradeck.engine.errors import LoradeckError
        from loradeck.engine.publish.gguf_export import run_files
        from loradeck.engine.runs.store import RunStore

        message = self.query_one("#chat-message", InlineMessage)
        ref = self.query_one("#chat-target", Input).value.strip()
        try:
            run = RunStore().resolve(ref)
        except LoradeckError:
            message.show_error("a GGUF file goes beside a run's 16-bit model: put a run id in "
                               "the model field (or open FILE.gguf on its own there)")
            return
        files = [str(f) for f in run_files(run)]
        if not files:
            message.show_error(f"run {run.id} has no GGUF file yet: export one with ctrl+e on "
                               f"the Push screen, or loradeck export {run.id}")
            return
        now = self.gguf_file
        following = files[files.index(now) + 1:] if now in files else files
        self.gguf_file = following[0] if following else None
        await self._new_conversation()
        message.clear()

    def action_load(self) -> None:
        ref = self.query_one("#chat-target", Input).value.strip()
        self._converse(ref, None)

    def action_send(self) -> None:
        prompt_field = self.query_one("#chat-prompt", Input)
        prompt = prompt_field.value.strip()
        if not prompt:
            self.show_message("type a prompt first")
            return
        ref = self.query_one("#chat-target", Input).value.strip()
        try:
            params = self.params()
        except ValueError as exc:
            self.query_one("#chat-message", InlineMessage).show_error(str(exc))
            return
        self._converse(ref, (prompt, params))  # the prompt stays typed until the reply starts

    async def action_stop(self) -> None:
        client = self.current_client or self.client
        if client is not None and self.current_id is not None:
            try:
                await client.cancel(self.current_id)
            except Exception as exc:  # the worker died: say so
                self.query_one("#chat-message", InlineMessage).show_error(exc)
        self.show_message("stopping the reply…")

    def action_save(self) -> None:
        """Save what the panes show to RUN/chats/chat-TIME.md (loradeck's chats folder for a
        model that is not a run)."""
        from loradeck.engine.errors import LoradeckError
        from loradeck.engine.runs import paths
        from loradeck.engine.runs.store import RunStore
        from loradeck.engine.serve import transcript

        message = self.query_one("#chat-message", InlineMessage)
        ref = self.query_one("#chat-target", Input).value.strip()
        panes = [p for p in self.query(ChatPane) if p.display]
        sides = [p.side() for p in panes]  # left to right, as shown
        try:
            folder = RunStore().resolve(ref).dir / "chats"
        except LoradeckError:
            folder = paths.home() / "chats"
        model = self.loaded.target.label if self.loaded else ref or "a model"
        system = getattr(self.loaded.target, "system_prompt", None) if self.loaded else None
        try:
            path = transcript.save(transcript.unique_path(folder, "chat"), model, sides, system)
        except LoradeckError as exc:
            message.show_error(exc)
            return
        message.show_info(f"saved the chat to {path}")

    async def action_clear(self) -> None:
        await self._new_conversation()
        self.query_one("#chat-message", InlineMessage).clear()

    async def _new_conversation(self) -> None:
        for pane in self.query(ChatPane):
            await pane.clear()

    # the worker ------------------------------------------------------------------------------
    @work(exclusive=True, group="chat", exit_on_error=False,
          description="loading the model and streaming replies")
    async def _converse(self, ref: str, send: tuple[str, dict[str, Any]] | None) -> None:
        """Load the model if needed, then (when ``send``) stream the reply or replies."""
        message = self.query_one("#chat-message", InlineMessage)
        message.clear()
        arena_round = self.arena and send is not None
        compare = self.compare or self.arena
        if not ref:
            message.show_error("name what to chat with: a run id, a model directory, a Hub id "
                               "or demo:tiny")
            return
        if (self.loaded is None or self.loaded.ref != ref
                or (compare and not self.loaded.compare and not self._has_adapter())
                or self._base_outgrown(compare)):
            await self._load(ref, compare)
        if send is None or self.loaded is None:
            return
        prompt, params = send
        prompt_field = self.query_one("#chat-prompt", Input)
        if prompt_field.value.strip() == prompt:  # sent: the field is free for the next one
            prompt_field.value = ""
        if arena_round:
            await self._arena_round(prompt, params)
            return
        gguf = self.gguf_file
        untrained = compare and getattr(self.loaded.target, "untrained", False)
        sides = [("base", False), ("tuned", True)] if compare and self._has_adapter() else [
            ("base", False)] if untrained else [("tuned", True)]
        if untrained:
            message.show_info("the run has no adapter yet: its base answers; the tuned side "
                              "answers once training is done")
        elif compare and len(sides) == 1:
            message.show_info("this model has no adapter: there is no base to compare with")
        self.generating = True
        try:
            if gguf and not await self._reply("base", False, prompt, params,
                                              client=await self._gguf_client(gguf)):
                return
            for pane_name, adapter in sides:
                if not await self._reply(pane_name, adapter, prompt, params):
                    break
        finally:
            self.generating = False
            self.current_id = None

    async def _arena_round(self, prompt: str, params: dict[str, Any]) -> None:
        """One blind round: the base and the tuned model answer ``prompt`` under the labels
        A (left) and B (right), in an order drawn at random; then a vote is due."""
        from loradeck.engine.evals.arena import TUNED, Round

        message = self.query_one("#chat-message", InlineMessage)
        if not self._has_adapter() or not getattr(self.loaded.target, "run_id", None):
            message.show_error("blind A/B needs a trained run (its base and its adapter): put "
                               "a run id in the model field")
            return
        await self._new_conversation()  # each round stands alone
        self._titles()
        self.vote_pending = False
        drawn = Round.drawn()
        self.generating = True
        try:
            for pane_name, label in (("base", "A"), ("tuned", "B")):
                if not await self._reply(pane_name, drawn.side(label) == TUNED, prompt, params):
                    return
        finally:
            self.generating = False
            self.current_id = None
        self.round, self.round_prompt = drawn, prompt
        self.vote_pending = True
        self.query_one("#pane-base", ChatPane).focus()  # a, b and = reach the screen
        message.show_info("which answer is better? a: A · b: B · =: tie")

    async def _gguf_client(self, path: str) -> Any:
        """The llama.cpp worker, holding ``path`` (loaded on first use)."""
        from loradeck.engine.serve.client import AsyncChatClient

        if self.gguf_client is None:
            self.gguf_client = AsyncChatClient()
        if self.gguf_loaded != path:
            self.gguf_loaded = None
            panes = self.query_one("#chat-panes")
            panes.loading = True
            try:
                await self.gguf_client.start(model=path)
            finally:
                panes.loading = False
            self.gguf_loaded = path
        return self.gguf_client

    def _base_outgrown(self, compare: bool) -> bool:
        """A training run's base is held (no adapter then): load again once the single view
        asks for the tuned model or the run has written its adapter."""
        target = self.loaded.target if self.loaded else None
        if not getattr(target, "untrained", False):
            return False
        from loradeck.engine.runs.store import RunStore

        try:
            run = RunStore().resolve(target.run_id)
        except Exception:
            return True
        return not compare or (run.adapter_dir / "adapter_config.json").is_file()

    def _has_adapter(self) -> bool:
        return bool(self.loaded and self.loaded.info.get("adapter"))

    async def _load(self, ref: str, compare: bool) -> None:
        from loradeck.engine.serve.client import AsyncChatClient

        self.model_loading = True
        self.refresh_bindings()
        panes = self.query_one("#chat-panes")
        panes.loading = True
        status = self.query_one("#chat-loaded", Label)
        status.update(f"loading {ref}…")
        try:
            target = await asyncio.to_thread(_resolve_target, ref, compare)
            if self.client is None:
                self.client = AsyncChatClient()
            info = await self.client.start(**target.load_args())
        except BaseException:
            self.loaded = None
            status.update("not loaded")
            raise
        finally:
            self.model_loading = False
            panes.loading = False
            self.refresh_bindings()
        if self.endpoint.running and self.endpoint.info and self.endpoint.info.ref != ref:
            await asyncio.to_thread(self._stop_endpoint)  # it served the model before
        self.loaded = HeldModel(ref, compare, target, info or {})
        self._show_model_defaults((info or {}).get("generation_defaults") or {})
        device = (info or {}).get("device")
        status.update(f"{target.label}" + (f" · {device}" if device else ""))
        await self._new_conversation()

    async def _reply(self, pane_name: str, adapter: bool, prompt: str,
                     params: dict[str, Any], client: Any = None) -> bool:
        """Stream one reply into ``pane_name`` (from ``client``, by default the 16-bit
        model's worker); False when it was stopped or failed."""
        client = client or self.client
        pane = self.query_one(f"#pane-{pane_name}", ChatPane)
        system = getattr(self.loaded.target, "system_prompt", None) if self.loaded else None
        messages = pane.request(prompt, system)
        user = await pane.add_user(prompt)
        reply: ReplyView = await pane.add_reply()
        stream = reply.stream()
        rid = f"chat-{next(self._ids)}"
        self.current_id = rid
        self.current_client = client
        last: Reply | None = None
        failure: Exception | None = None
        try:
            async for last in client.generate(messages, params, adapter=adapter, id=rid):
                if isinstance(last, Token):
                    text = reply.record(last.text)
                    if text:
                        await stream.write(text)
        except Exception as exc:  # the worker died or timed out
            failure = exc
        finally:
            await stream.stop()
        if failure is not None or not isinstance(last, Finished) or last.stopped:
            await pane.withdraw(user, reply)  # the view and the conversation, at once
            self._give_back(prompt)
            if failure is not None:
                raise failure
            if isinstance(last, Failed):
                self.query_one("#chat-message", InlineMessage).show_error(
                    f"error ({last.kind}): {last.message}")
            else:
                self.show_message("reply stopped: the prompt is back in the field")
            return False
        reply.finish(last)
        pane.answered(prompt, reply)
        return True

    def _give_back(self, prompt: str) -> None:
        """Put a prompt whose reply failed or was stopped back in the field (as oterm does),
        unless something new was typed there since."""
        field = self.query_one("#chat-prompt", Input)
        if not field.value.strip():
            field.value = prompt

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "chat" and event.state in (WorkerState.CANCELLED,
                                                            WorkerState.ERROR):
            self.generating = False
            self.model_loading = False


def _resolve_target(ref: str, compare: bool) -> Any:
    """The chat target for ``ref``; with ``compare``, a run's base + adapter even when merged
    (the adapter switched off is the base, so one load serves both panes)."""
    from loradeck.engine.serve import target as chat_target

    if compare:  # a run still training has no adapter: its base answers in the base pane
        from loradeck.engine.runs.store import RunStore

        run = chat_target.find_run(ref, RunStore())
        if run is not None and not (run.adapter_dir / "adapter_config.json").is_file() \
                and not (run.merged_dir / "config.json").is_file():
            base = chat_target.from_run(run, base=True)
            base.untrained = True
            return base
    target = chat_target.resolve(ref)
    if compare and target.adapter is None and target.run_id:
        from loradeck.engine.runs.store import RunStore

        run = RunStore().resolve(target.run_id)
        if (run.adapter_dir / "adapter_config.json").is_file():
            base = chat_target.from_run(run, base=True)
            base.adapter = str(run.adapter_dir)
            base.label = f"run {run.id} ({base.model} + adapter)"
            return base
    return target
