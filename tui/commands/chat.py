"""``loradeck chat RUN|MODEL [--base] [--prompt TEXT]``: one reply, or an interactive line chat."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from loradeck.engine.enums import GGUFType, Quantization, values
from loradeck.engine.errors import LoradeckError
from loradeck.engine.serve import params as chat_params
from loradeck.engine.serve import transcript
from loradeck.engine.serve.client import ChatClient
from loradeck.engine.serve.replies import Failed, Finished, Token
from loradeck.engine.serve.target import ChatTarget, resolve
from loradeck.engine.serve.transcript import Side, Turn
from loradeck.tui.commands.base import Command, add_checkpoint

HELP = ("type a message; /help lists the commands, /save FILE saves the chat, /reset clears "
        "it, /quit or Ctrl-D leaves, Ctrl-C stops a reply")
COMMANDS = (("/help", "this list"),
            ("/save FILE", "save the chat: .md to read, .json for scripts, .jsonl as a training "
                           "row"),
            ("/reset", "clear the chat and start again"),
            ("/quit, /exit, Ctrl-D", "leave"),
            ("Ctrl-C", "stop the reply being written"))


def params_from(args) -> dict[str, Any]:
    """The sampling flags given (None: the model's own default, else ChatParams')."""
    return {name: getattr(args, name, None) for name in chat_params.FIELDS}


def stream_reply(client: ChatClient, messages: list[dict[str, str]],
                 params: dict[str, Any]) -> Finished:
    """Print the reply as it streams; Ctrl-C cancels it. Returns the Finished reply."""
    stream = client.generate(messages, params)
    done = Finished(stream.id)
    while True:
        try:
            for reply in stream:
                if isinstance(reply, Token):
                    sys.stdout.write(reply.text)
                    sys.stdout.flush()
                elif isinstance(reply, Finished):
                    done = reply
                elif isinstance(reply, Failed):
                    sys.stdout.write("\n")
                    raise reply.error()
            break
        except KeyboardInterrupt:
            stream.cancel()  # keep reading: the worker answers with a cancelled Finished
    sys.stdout.write("\n")
    sys.stdout.flush()
    return done


def save_chat(text: str, target: ChatTarget, system: str | None, turns: list[Turn],
              saved: set[Path]) -> None:
    """``/save FILE``: write the chat so far; a file this session saved is written again."""
    name = text[len("/save"):].strip()
    if not name:
        print("loradeck: /save needs a file name: /save chat.md", file=sys.stderr)
        return
    path = Path(name).expanduser().resolve()
    try:
        written = transcript.save(path, target.label, [Side("chat", list(turns))], system,
                                  overwrite=path in saved)
    except LoradeckError as exc:
        print(f"loradeck: {exc.line()}", file=sys.stderr)
        return
    saved.add(written)
    print(f"(saved {len(turns)} messages to {written})", file=sys.stderr)


def interactive(client: ChatClient, target: ChatTarget, system: str | None,
                params: dict[str, Any]) -> int:
    turns: list[Turn] = []  # the conversation: what is sent, shown and saved
    saved: set[Path] = set()
    print(HELP, file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return 0
        if text in ("/help", "/?"):
            width = max(len(name) for name, _ in COMMANDS)
            for name, what in COMMANDS:
                print(f"  {name:<{width}}  {what}", file=sys.stderr)
            continue
        if text == "/save" or text.startswith("/save "):
            save_chat(text, target, system, turns, saved)
            continue
        if text == "/reset":
            turns.clear()
            print("(chat cleared)", file=sys.stderr)
            continue
        if text.startswith("/") and " " not in text:
            print(f"loradeck: unknown command {text}; /help lists them (a message starting "
                  "with / needs a space in it)", file=sys.stderr)
            continue
        messages = Side("chat", turns).messages(system) + [{"role": "user", "content": line}]
        sys.stdout.write("bot> ")
        sys.stdout.flush()
        done = stream_reply(client, messages, params)
        print(f"[{done.stats()}]", file=sys.stderr)
        turns += [Turn("user", line), Turn("assistant", done.text, done.stats())]


def chat(args) -> int:
    target = resolve(args.target, base=args.base, gguf=getattr(args, "gguf", None),
                     checkpoint=getattr(args, "checkpoint", None))
    if args.quantization:
        target.quantization = args.quantization
    system = args.system if args.system is not None else target.system_prompt
    params = params_from(args)
    quant = f" ({target.quantization})" if target.quantization != "none" else ""
    print(f"loading {target.label}{quant}...", file=sys.stderr, flush=True)
    with ChatClient() as client:
        info = client.start(**target.load_args())
        from loradeck.engine.units import count as human_count

        print(f"ready: {info.get('name')} {human_count(info.get('parameters'))} parameters on "
              f"{info.get('device')} ({info.get('dtype')}"
              f"{', adapter' if info.get('adapter') else ''})", file=sys.stderr, flush=True)
        if args.prompt is not None:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": args.prompt}]
            done = stream_reply(client, messages, params)
            print(f"[{done.stats()}]", file=sys.stderr)
            return 0
        return interactive(client, target, system, params)


class ChatCommand(Command):
    name = "chat"
    help = "chat with a run's model or any model"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("target", metavar="RUN|MODEL")
        parser.add_argument("--base", action="store_true",
                            help="the base model alone, no adapter")
        parser.add_argument("--gguf", nargs="?", const=GGUFType.Q4_K_M.value, default=None,
                            metavar="Q", help="chat with the run's exported GGUF file of type Q "
                            f"(default {GGUFType.Q4_K_M}) through llama.cpp; a FILE.gguf target "
                            "always is")
        add_checkpoint(parser, "chat with the base + checkpoint N's adapter")
        parser.add_argument("--prompt", help="send one prompt, print the reply, exit")
        parser.add_argument("--system", help="system prompt")
        # Unset flags take the model's own generation config, else ChatParams' defaults
        # (loradeck.engine.serve.params), as the app does.
        for name in chat_params.FIELDS:
            parser.add_argument(f"--{name.replace('_', '-')}", type=chat_params.value_type(name),
                                default=None,
                                help=f"{chat_params.help_line(name)} (default: the model's "
                                     f"generation config, else {chat_params.default(name)})")
        parser.add_argument("--quantization", choices=values(Quantization), default=None)

    def run(self, args: argparse.Namespace) -> int:
        return chat(args)


COMMAND = ChatCommand()
