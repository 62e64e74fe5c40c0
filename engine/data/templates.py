"""Prompt templates: turn a normalized example into (prompt text, completion text).

``template: auto`` uses the tokenizer's own chat template; when the tokenizer has none it falls
back to mistral (``[INST]`` in the vocabulary), chatml (``<|im_start|>`` in it) or alpaca.
``chatml``, ``mistral`` and ``alpaca`` are Jinja chat templates too, so training, chat and a
pushed model all render conversations the same way (``install`` puts one into a tokenizer).

A row becomes ``segments``: its rendered text cut into pieces that are trained (every assistant
turn, as the template ends it) or context (the rest). Training tokenizes the joined text with
the tokenizer's special tokens added (so a leading BOS the template writes is dropped when the
tokenizer adds its own), and the tokens that start inside a trained piece carry the loss (the
``assistant_masks`` TRL's SFTTrainer turns into labels). The text ends with exactly one EOS, so
the model learns to stop. A template that renders a turn differently once later turns follow
(so a turn's rendering is not a prefix of the whole) trains the last assistant turn only.
``render`` gives the (prompt, completion) pair of the last turn, for previews and chat.

Light module: the tokenizer is passed in; nothing heavy is imported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loradeck.engine.data.time_limit import TimeLimitExceeded, time_limit
from loradeck.engine.enums import Template, values
from loradeck.engine.errors import LoradeckError

TEMPLATES = values(Template)
RENDER_SECONDS = 10.0  # one conversation renders in milliseconds; a template past this loops


class TemplateTooSlow(LoradeckError):
    """A chat template that ran past RENDER_SECONDS on one conversation."""

# Tool calling in the named templates (Hermes style, as Qwen's templates write it): the tool
# schemas in the system turn, the assistant's calls as <tool_call> JSON after its text, and a
# tool's answer as a turn of role tool.
TOOLS_TEXT = (
    "{%- set ns = namespace(tools='') -%}"
    "{%- if tools -%}{%- set ns.tools = 'You can call these tools:\\n<tools>\\n' -%}"
    "{%- for tool in tools -%}{%- set ns.tools = ns.tools + (tool | tojson) + '\\n' -%}"
    "{%- endfor -%}"
    "{%- set ns.tools = ns.tools + '</tools>\\nTo call one, write <tool_call>{\"name\": ..., "
    "\"arguments\": ...}</tool_call>.' -%}{%- endif -%}"
)
CALLS_TEXT = (
    "{%- set calls = namespace(text='') -%}"
    "{%- for call in message['tool_calls'] or [] -%}"
    "{%- set f = call['function'] if call['function'] is defined else call -%}"
    "{%- set calls.text = calls.text + ('\\n' if calls.text or message['content'] else '')"
    " + '<tool_call>' + ({'name': f['name'], 'arguments': f['arguments']} | tojson)"
    " + '</tool_call>' -%}"
    "{%- endfor -%}"
)

CHATML = (
    TOOLS_TEXT
    + "{%- if ns.tools and messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n' + ns.tools + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' and ns.tools -%}"
    "{{- '<|im_start|>system\\n' + message['content'] + '\\n\\n' + ns.tools + '<|im_end|>\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}" + CALLS_TEXT
    + "{{- '<|im_start|>assistant\\n' + message['content'] + calls.text + '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

MISTRAL = (
    "{{- bos_token -}}" + TOOLS_TEXT
    + "{%- set sys = namespace(text=ns.tools) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- set sys.text = message['content'] + ('\\n\\n' + ns.tools if ns.tools else '') -%}"
    "{%- elif message['role'] in ('user', 'tool') -%}"
    "{%- set text = message['content'] if message['role'] == 'user' else "
    "'<tool_response>' + message['content'] + '</tool_response>' -%}"
    "{{- '[INST] ' + (sys.text + '\\n\\n' if sys.text else '') + text + ' [/INST]' -}}"
    "{%- set sys.text = '' -%}"
    "{%- else -%}" + CALLS_TEXT
    + "{{- ' ' + message['content'] + calls.text + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

ALPACA = (
    TOOLS_TEXT
    + "{%- if ns.tools and messages[0]['role'] != 'system' -%}{{- ns.tools + '\\n\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{- message['content'] + '\\n\\n' + (ns.tools + '\\n\\n' if ns.tools else '') -}}"
    "{%- elif message['role'] == 'tool' -%}"
    "{{- '### Tool result:\\n' + message['content'] + '\\n\\n' -}}"
    "{%- elif message['role'] == 'user' -%}"
    "{%- if message['instruction'] is defined -%}"
    "{{- '### Instruction:\\n' + message['instruction'] + '\\n\\n' -}}"
    "{%- if message['context'] is defined and message['context'] | trim -%}"
    "{{- '### Input:\\n' + message['context'] + '\\n\\n' -}}{%- endif -%}"
    "{%- else -%}{{- '### Instruction:\\n' + message['content'] + '\\n\\n' -}}{%- endif -%}"
    "{%- else -%}" + CALLS_TEXT
    + "{{- '### Response:\\n' + message['content'] + calls.text + eos_token + '\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '### Response:\\n' -}}{%- endif -%}"
)

MESSAGE_KEYS = ("role", "content", "tool_calls", "name")
"""The keys of a chat message a template is given (loradeck's own, such as an alpaca row's
instruction and context, only reach its named templates)."""

NAMED: dict[str, str] = {"chatml": CHATML, "mistral": MISTRAL, "alpaca": ALPACA}


def resolve(tokenizer: Any, template: str = "auto") -> str:
    """The template actually used: ``tokenizer`` (its own chat template) or a named one."""
    if template in NAMED:
        return template
    if template != "auto":
        raise LoradeckError(f"dataset.template: unknown template {template!r}", kind="config",
                            hint=f"use one of {', '.join(TEMPLATES)}")
    if getattr(tokenizer, "chat_template", None):
        return "tokenizer"
    vocab = tokenizer.get_vocab()
    if "[INST]" in vocab:
        return "mistral"
    if "<|im_start|>" in vocab:
        return "chatml"
    return "alpaca"


def install(tokenizer: Any, template: str = "auto") -> str:
    """Put the resolved named template into ``tokenizer.chat_template``; returns its name.

    The job calls it before it renders a row, so the tokenizer it saves with the adapter (and
    merge and push after it) carries the exact template training used; chat, the merge check
    and the model card's snippet then render conversations as training did. The tokenizer's
    own template is left as it is.
    """
    name = resolve(tokenizer, template)
    if name in NAMED:
        tokenizer.chat_template = NAMED[name]
    return name


def save_tokenizer(tokenizer: Any, directory: str | Path) -> None:
    """Save ``tokenizer`` to ``directory`` with its chat template both in
    ``chat_template.jinja`` and under ``chat_template`` in ``tokenizer_config.json`` (older
    readers look only there)."""
    tokenizer.save_pretrained(str(directory))
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return
    folder = Path(directory)
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    config_path = folder / "tokenizer_config.json"
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    data["chat_template"] = template
    config_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n",
                           encoding="utf-8")


class Renderer:
    """Renders examples for one tokenizer and template (see the module docstring)."""

    def __init__(self, tokenizer: Any, template: str = "auto",
                 system_prompt: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.name = resolve(tokenizer, template)
        self.source = NAMED.get(self.name)  # None: the tokenizer's own template
        self.system_prompt = system_prompt or None
        self.eos = tokenizer.eos_token
        if not self.eos:
            raise LoradeckError("the tokenizer has no eos token, so the model cannot learn to "
                                "stop", kind="model", hint="use a model whose tokenizer sets one")
        self.bos = tokenizer.bos_token
        self._adds_bos = _adds_bos(tokenizer)

    # -- public

    def render(self, example: dict[str, Any]) -> tuple[str, str]:
        """(prompt_text, completion_text) of a normalized example; the completion ends in EOS."""
        if "messages" in example:
            return self._render_chat(example["messages"], example.get("tools"))
        if "prompt" in example:
            return example["prompt"], self._end(example["completion"])
        if "text" in example:
            return "", self.text(example["text"])
        raise LoradeckError("example has neither messages, prompt/completion nor text",
                            kind="internal")

    def segments(self, example: dict[str, Any]) -> list[tuple[str, bool]]:
        """The example's text as (piece, trained) pieces in order; see the module docstring."""
        if "messages" in example:
            return self._chat_segments(example["messages"], example.get("tools"))
        if "prompt" in example:
            return [(example["prompt"], False), (self._end(example["completion"]), True)]
        if "text" in example:
            return [(self.text(example["text"]), True)]
        raise LoradeckError("example has neither messages, prompt/completion nor text",
                            kind="internal")

    def text(self, text: str) -> str:
        """A plain-text example, ending in EOS."""
        return self._end(text)

    def prompt(self, messages: list[dict[str, Any]]) -> str:
        """The generation prompt for a conversation (chat and evaluation use this)."""
        return self._strip_bos(self._apply(messages, generation=True))

    # -- internals

    def _render_chat(self, messages: list[dict[str, Any]], tools: list | None = None
                     ) -> tuple[str, str]:
        if not messages or messages[-1]["role"] != "assistant":
            raise LoradeckError("a conversation must end with an assistant message",
                                kind="data")
        prompt = self._apply(messages[:-1], generation=True, tools=tools)
        full = self._apply(messages, generation=False, tools=tools)
        if full.startswith(prompt):
            completion = full[len(prompt):]
        else:  # templates that render the last turn differently: keep the reply as it is
            completion = messages[-1]["content"]
        return self._strip_bos(prompt), self._end(completion.rstrip())

    def _chat_segments(self, messages: list[dict[str, Any]], tools: list | None = None
                       ) -> list[tuple[str, bool]]:
        if not messages or messages[-1]["role"] != "assistant":
            raise LoradeckError("a conversation must end with an assistant message",
                                kind="data")
        full = self._apply(messages, generation=False, tools=tools)
        pieces: list[tuple[str, bool]] = []
        at = 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._apply(messages[:i], generation=True, tools=tools)
            upto = self._apply(messages[: i + 1], generation=False, tools=tools)
            if not (upto.startswith(before) and full.startswith(upto) and len(before) >= at):
                prompt, completion = self._render_chat(messages, tools)  # the last turn only
                return [(prompt, False), (completion, True)]
            reply = upto[len(before):].rstrip()
            for call in message.get("tool_calls") or []:
                if call["function"]["name"] not in reply:
                    raise LoradeckError(f"the {self.name} chat template drops the assistant's "
                                        "tool calls", kind="data",
                                        hint="set dataset.template: chatml (it writes them as "
                                             "<tool_call> JSON)")
            if i == len(messages) - 1:
                reply = self._end(reply)
            pieces += [(full[at:len(before)], False), (reply, True)]
            at = len(before) + len(upto[len(before):].rstrip())
        text = self._strip_bos(pieces[0][0])
        return [(text, False), *pieces[1:]]

    def _end(self, text: str) -> str:
        return text if text.endswith(self.eos) else text + self.eos

    def _strip_bos(self, text: str) -> str:
        if self._adds_bos and self.bos and text.startswith(self.bos):
            return text[len(self.bos):]
        return text

    def _apply(self, messages: list[dict[str, Any]], generation: bool,
               tools: list | None = None) -> str:
        msgs = [dict(m) for m in messages]
        if self.system_prompt and not (msgs and msgs[0]["role"] == "system"):
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        if self.source is None:  # the tokenizer's template gets the keys chat messages have
            msgs = [{k: m[k] for k in MESSAGE_KEYS if k in m} for m in msgs]
        try:
            return self._call(msgs, generation, tools)
        except TemplateTooSlow:
            raise
        except Exception as exc:
            if msgs and msgs[0]["role"] == "system" and len(msgs) > 1:
                # templates without a system role: fold it into the first user message
                merged = [dict(msgs[1])]
                merged[0]["content"] = f"{msgs[0]['content']}\n\n{msgs[1]['content']}"
                try:
                    return self._call(merged + msgs[2:], generation, tools)
                except Exception:
                    pass
            raise LoradeckError(f"the {self.name} chat template cannot render this "
                                f"conversation: {exc}", kind="data",
                                hint="pick another dataset.template (chatml, mistral, alpaca)"
                                ) from None

    def _call(self, messages: list[dict[str, Any]], generation: bool,
              tools: list | None = None) -> str:
        try:
            with time_limit(RENDER_SECONDS):
                return self.tokenizer.apply_chat_template(
                    messages, chat_template=self.source, tools=tools or None, tokenize=False,
                    add_generation_prompt=generation)
        except TimeLimitExceeded:
            raise TemplateTooSlow(
                f"the {self.name} chat template ran past {RENDER_SECONDS:g} s on one "
                "conversation (a loop that does not end?)", kind="data",
                hint="fix the template, or pick another dataset.template (chatml, mistral, "
                     "alpaca)") from None


REPLY_PROBE = "loradeck-probe-reply"
PROBE_TURNS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": REPLY_PROBE}]
"""A one-turn chat whose reply is a marker: what a template writes after it ends a turn."""


def after_reply(rendered: str) -> str:
    """What ``rendered`` (PROBE_TURNS through a template) holds after the reply."""
    at = rendered.rfind(REPLY_PROBE)
    return rendered[at + len(REPLY_PROBE):] if at >= 0 else ""


def end_of_turn_ids(tokenizer: Any, template: str = "auto") -> set[int]:
    """The special tokens the template writes right after an assistant's reply (chatml's
    <|im_end|>, Llama 3's <|eot_id|>, Gemma's <end_of_turn>): where a reply stops, whether or
    not the tokenizer's eos is one of them."""
    try:
        text = Renderer(tokenizer, template)._apply(PROBE_TURNS, generation=False)
    except LoradeckError:
        return set()
    after = after_reply(text)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()
                if getattr(t, "special", False)}
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    return {i for i in ids[:3] if i in special}


def _adds_bos(tokenizer: Any) -> bool:
    """Does plain tokenization put the BOS token in front (as TRL's tokenization does)?"""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos_id


def render(example: dict[str, Any], tokenizer: Any, template: str = "auto",
           system_prompt: str | None = None) -> tuple[str, str]:
    """(prompt_text, completion_text) for one normalized example."""
    return Renderer(tokenizer, template, system_prompt).render(example)


def render_prompt(messages: list[dict[str, Any]], tokenizer: Any, template: str = "auto",
                  system_prompt: str | None = None) -> str:
    """The generation prompt for ``messages``, rendered as in training."""
    return Renderer(tokenizer, template, system_prompt).prompt(messages)
