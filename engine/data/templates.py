"""Prompt templates: turn a normalized example into (prompt text, completion text).

``template: auto`` uses the tokenizer's own chat template; when the tokenizer has none it falls
back to mistral (``[INST]`` in the vocabulary), chatml (``<|im_start|>`` in it) or alpaca.
``chatml``, ``mistral`` and ``alpaca`` are Jinja chat templates too, so training, chat and a
pushed model all render conversations the same way (``install`` puts one into a tokenizer).

The rendered text is what TRL's SFTTrainer gets as a prompt/completion pair of strings: it
tokenizes ``prompt + completion`` with the tokenizer's special tokens added (so a leading BOS the
template writes is dropped when the tokenizer adds its own) and appends the EOS token to the
completion only when the completion does not already end with it. Every completion here ends
with exactly one EOS, so the model learns to stop and TRL adds none. Only the last assistant
turn of a conversation is the completion; earlier turns are context in the prompt.

Light module: the tokenizer is passed in; nothing heavy is imported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loradeck.engine.errors import LoradeckError

TEMPLATES = ("auto", "chatml", "mistral", "alpaca")

CHATML = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

MISTRAL = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '[INST] ' + (ns.system + '\\n\\n' if ns.system else '') + message['content']"
    " + ' [/INST]' -}}"
    "{%- set ns.system = '' -%}"
    "{%- else -%}{{- ' ' + message['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

ALPACA = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- message['content'] + '\\n\\n' -}}"
    "{%- elif message['role'] == 'user' -%}"
    "{%- if message['instruction'] is defined -%}"
    "{{- '### Instruction:\\n' + message['instruction'] + '\\n\\n' -}}"
    "{%- if message['context'] is defined and message['context'] | trim -%}"
    "{{- '### Input:\\n' + message['context'] + '\\n\\n' -}}{%- endif -%}"
    "{%- else -%}{{- '### Instruction:\\n' + message['content'] + '\\n\\n' -}}{%- endif -%}"
    "{%- else -%}{{- '### Response:\\n' + message['content'] + eos_token + '\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '### Response:\\n' -}}{%- endif -%}"
)

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
            return self._render_chat(example["messages"])
        if "prompt" in example:
            return example["prompt"], self._end(example["completion"])
        if "text" in example:
            return "", self.text(example["text"])
        raise LoradeckError("example has neither messages, prompt/completion nor text",
                            kind="internal")

    def text(self, text: str) -> str:
        """A plain-text example, ending in EOS."""
        return self._end(text)

    def prompt(self, messages: list[dict[str, Any]]) -> str:
        """The generation prompt for a conversation (chat and evaluation use this)."""
        return self._strip_bos(self._apply(messages, generation=True))

    # -- internals

    def _render_chat(self, messages: list[dict[str, Any]]) -> tuple[str, str]:
        if not messages or messages[-1]["role"] != "assistant":
            raise LoradeckError("a conversation must end with an assistant message",
                                kind="data")
        prompt = self._apply(messages[:-1], generation=True)
        full = self._apply(messages, generation=False)
        if full.startswith(prompt):
            completion = full[len(prompt):]
        else:  # templates that render the last turn differently: keep the reply as it is
            completion = messages[-1]["content"]
        return self._strip_bos(prompt), self._end(completion.rstrip())

    def _end(self, text: str) -> str:
        return text if text.endswith(self.eos) else text + self.eos

    def _strip_bos(self, text: str) -> str:
        if self._adds_bos and self.bos and text.startswith(self.bos):
            return text[len(self.bos):]
        return text

    def _apply(self, messages: list[dict[str, Any]], generation: bool) -> str:
        msgs = [dict(m) for m in messages]
        if self.system_prompt and not (msgs and msgs[0]["role"] == "system"):
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        if self.source is None:  # the tokenizer's template gets role and content only
            msgs = [{"role": m["role"], "content": m["content"]} for m in msgs]
        try:
            return self._call(msgs, generation)
        except Exception as exc:
            if msgs and msgs[0]["role"] == "system" and len(msgs) > 1:
                # templates without a system role: fold it into the first user message
                merged = [dict(msgs[1])]
                merged[0]["content"] = f"{msgs[0]['content']}\n\n{msgs[1]['content']}"
                try:
                    return self._call(merged + msgs[2:], generation)
                except Exception:
                    pass
            raise LoradeckError(f"the {self.name} chat template cannot render this "
                                f"conversation: {exc}", kind="data",
                                hint="pick another dataset.template (chatml, mistral, alpaca)"
                                ) from None

    def _call(self, messages: list[dict[str, Any]], generation: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.source, tokenize=False,
            add_generation_prompt=generation)


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
