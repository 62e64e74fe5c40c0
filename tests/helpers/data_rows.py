"""Rows the data tests share."""

from __future__ import annotations

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]

TOOL_CALL_MESSAGES = [
    {"role": "user", "content": "Weather in Seoul?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather",
                                          "arguments": {"city": "Seoul"}}}]},
    {"role": "tool", "name": "get_weather", "content": "{\"sky\": \"clear\"}"},
    {"role": "assistant", "content": "It is clear in Seoul."}]
"""A chat in OpenAI's shape: a tool call, the tool's answer, the assistant's reply."""
