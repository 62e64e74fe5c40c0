"""One raw row made into a normalized example: chat messages ending on an assistant turn,
prompt and completion, or plain text; a row a person must fix raises one line naming it.
Light module."""

from __future__ import annotations

from typing import Any

from loradeck.engine.data.shapes import maybe_json
from loradeck.engine.errors import LoradeckError

CHAT_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
              "bot": "assistant", "model": "assistant", "chatgpt": "assistant",
              "system": "system", "tool": "tool", "observation": "tool", "ipython": "tool",
              "function_response": "tool", "function_call": "tool_call",
              "tool_call": "tool_call", "tool_calls": "tool_call"}
"""Speaker names as the chat template's roles; ``tool_call`` turns become the assistant's
calls (``tool_calls``) and ``observation`` turns the tool's answers."""
TEXT_PART_KEYS = ("text", "value")


def _text(value: Any, where: str | None = None) -> str:
    """A cell or a message's content as text. Content parts (``[{"type": "text", "text":
    ...}]``, or ``value`` in place of ``text``) are joined; a part that is not text (an image,
    audio) is refused, since only text is trained."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return ""
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict):
                texts.append(str(part))
                continue
            kind = str(part.get("type") or "text")
            if kind != "text":
                raise LoradeckError(f"a {kind} part in a message: only text is trained",
                                    kind="data", where=where,
                                    hint="drop the non-text parts, or the row")
            texts.append(_text(next((part[k] for k in TEXT_PART_KEYS if k in part), "")))
        return "".join(texts)
    return value if isinstance(value, str) else str(value)


def _required(row: dict[str, Any], mapping: dict[str, str], role: str, where: str) -> str:
    col = mapping[role]
    value = _text(row.get(col))
    if not value.strip():
        raise LoradeckError(f"empty {role} (column {col!r})", kind="data", where=where,
                            hint="fill it in or remove the row")
    return value


def normalize_row(row: dict[str, Any], shape: str, mapping: dict[str, str],
                  where: str) -> dict[str, Any]:
    """One raw row -> a normalized example (see the module docstring)."""
    system = _text(row.get(mapping["system"])) if "system" in mapping else ""
    if shape == "instruction":
        instruction = _required(row, mapping, "instruction", where)
        response = _required(row, mapping, "response", where)
        context = _text(row.get(mapping["context"])) if "context" in mapping else ""
        user = instruction if not context.strip() else f"{instruction}\n\n{context}"
        messages = [{"role": "user", "content": user, "instruction": instruction,
                     "context": context}, {"role": "assistant", "content": response}]
        if system.strip():
            messages.insert(0, {"role": "system", "content": system})
        return {"messages": messages}
    if shape == "messages":
        example: dict[str, Any] = {"messages": _chat(row.get(mapping["messages"]),
                                                     mapping["messages"], system, where)}
        tools = _tools(row.get(mapping["tools"]), where) if "tools" in mapping else None
        if tools:
            example["tools"] = tools
        return example
    if shape == "prompt-completion":
        prompt, completion = row.get(mapping["prompt"]), row.get(mapping["completion"])
        if isinstance(maybe_json(prompt), list):  # conversational prompt/completion
            turns = maybe_json(prompt) + (maybe_json(completion) or [])
            return {"messages": _chat(turns, mapping["prompt"], system, where)}
        return {"prompt": _required(row, mapping, "prompt", where),
                "completion": _required(row, mapping, "completion", where)}
    if shape == "text":
        return {"text": _required(row, mapping, "text", where)}
    raise LoradeckError(f"unknown dataset format {shape!r}", kind="config")


def _chat(value: Any, column: str, system: str, where: str) -> list[dict[str, str]]:
    value = maybe_json(value)
    if not isinstance(value, list) or not value:
        raise LoradeckError(f"column {column!r} must hold a non-empty list of messages",
                            kind="data", where=where,
                            hint='e.g. [{"role": "user", "content": "..."}, '
                                 '{"role": "assistant", "content": "..."}]')
    messages: list[dict[str, Any]] = []
    for k, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise LoradeckError(f"message {k} is not an object", kind="data", where=where)
        speaker = item.get("role", item.get("from"))
        role = CHAT_ROLES.get(str(speaker).strip().lower()) if speaker is not None else None
        if role is None:
            raise LoradeckError(f"message {k} has unknown role {speaker!r}", kind="data",
                                where=where, hint="roles are user, assistant, system, tool "
                                                  "(or human, gpt, function_call, observation)")
        content = _text(item.get("content", item.get("value")), where)
        if role == "tool_call":  # ShareGPT: the assistant's call, as JSON text
            call = _tool_call(content, k, where)
            if messages and messages[-1]["role"] == "assistant":  # the reply's calls
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            continue
        calls = item.get("tool_calls") if role == "assistant" else None
        if calls:
            message: dict[str, Any] = {"role": role, "content": content,
                                       "tool_calls": [_tool_call(c, k, where) for c in calls]}
        elif not content.strip():
            raise LoradeckError(f"message {k} ({role}) is empty", kind="data", where=where,
                                hint="fill it in or remove the row")
        else:
            message = {"role": role, "content": content}
        if role == "tool" and item.get("name"):
            message["name"] = str(item["name"])
        messages.append(message)
    _check_order(messages, where)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last < 0:
        raise LoradeckError("no assistant message to learn from", kind="data", where=where,
                            hint="each conversation needs at least one assistant reply")
    messages = messages[: last + 1]
    if system.strip() and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _tool_call(value: Any, k: int, where: str) -> dict[str, Any]:
    """One tool call in the chat templates' form: {"type": "function", "function": {"name",
    "arguments"}} (from that form, from {"name", "arguments"}, or from JSON text of either)."""
    call = maybe_json(value)
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        call = call["function"]
    if not isinstance(call, dict) or not call.get("name"):
        raise LoradeckError(f"message {k} is a tool call without a name", kind="data",
                            where=where, hint='write it as {"name": "...", "arguments": {...}}')
    arguments = maybe_json(call.get("arguments", call.get("parameters", {})))
    return {"type": "function", "function": {"name": str(call["name"]),
                                             "arguments": arguments if arguments else {}}}


def _tools(value: Any, where: str) -> list[dict[str, Any]] | None:
    """The row's tool schemas (a JSON list, or its text), as the chat template takes them."""
    tools = maybe_json(value)
    if tools in (None, "", []):
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise LoradeckError("the tools column must hold a list of JSON schemas", kind="data",
                            where=where, hint='e.g. [{"type": "function", "function": {...}}]')
    return [t if "function" in t or "type" in t else {"type": "function", "function": t}
            for t in tools]


def _check_order(messages: list[dict[str, Any]], where: str) -> None:
    """Refuse turns no chat template renders as trained: a system message after the first
    turn, an assistant turn before any user turn, two assistant turns in a row."""
    previous = None
    for k, m in enumerate(messages, start=1):
        role = m["role"]
        if role == "system" and k > 1:
            raise LoradeckError(f"message {k} (system) comes after the first turn", kind="data",
                                where=where, hint="put the system message first, or drop it")
        if role == "assistant" and previous in (None, "system"):
            raise LoradeckError(f"message {k} (assistant) comes before any user turn",
                                kind="data", where=where,
                                hint="start the conversation with a user message")
        if role == "assistant" and previous == "assistant":
            raise LoradeckError(f"message {k} (assistant) follows another assistant turn",
                                kind="data", where=where,
                                hint="merge the two replies, or put a user turn between them")
        previous = role
