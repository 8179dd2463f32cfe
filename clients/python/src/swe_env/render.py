"""Conversations of an episode for a model: CWM messages and transcript text, OpenAI chat messages.

The inputs are trajectory records in the trajectory file's schema: ``Client.trajectory()`` / GetTrajectory output,
the lines of a trajectory file, or an episode's local records (``Episode.records``). The outputs are the
``messages`` that ``swe-env export --format cwm`` / ``--format openai-chat`` write for the same records, and
:func:`cwm_prompt` lays messages out as the CWM chat transcript for a raw completion call, as the server's
``completions`` mode does.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

Record = Mapping[str, Any]
Message = Dict[str, Any]


def _split(records: Iterable[Record]):
    start: Optional[Record] = None
    steps: List[Record] = []
    end: Optional[Record] = None
    for record in records:
        kind = record.get("type")
        if kind == "episode_start":
            start = record
        elif kind == "step":
            steps.append(record)
        elif kind == "episode_end":
            end = record
    return start, steps, end


def _prompt(start: Optional[Record]) -> List[Message]:
    if start is None:
        return []
    return [{"role": m["role"], "content": m["content"]} for m in start.get("prompt") or ()]


def cwm_messages(records: Iterable[Record]) -> List[Message]:
    """The episode as CWM messages: roles ``system``, ``user``, ``assistant`` (with ``reasoning``, the model's
    separate reasoning or None) and ``tool: NAME`` for tool outputs; format errors go back as ``user`` turns."""
    start, steps, end = _split(records)
    messages = _prompt(start)
    for step in steps:
        content = step.get("content")
        raw = step["raw_action"]
        messages.append(
            {"role": "assistant", "content": f"{content}\n\n{raw}" if content else raw, "reasoning": step.get("reasoning")}
        )
        tool, format_error = step.get("tool"), step.get("format_error")
        role = f"tool: {tool}" if tool is not None and format_error is None else "user"
        messages.append({"role": role, "content": step["observation"]})
    if end is not None and end.get("final_answer") is not None:
        messages.append(
            {"role": "assistant", "content": end["final_answer"], "reasoning": end.get("final_answer_reasoning")}
        )
    return messages


def _native_calls(step: Record) -> Optional[List[Message]]:
    try:
        raw = json.loads(step["raw_action"])
    except (ValueError, TypeError):
        return None

    def call(value: Any, call_id: Any) -> Optional[Message]:
        if not isinstance(value, dict) or not isinstance(value.get("name"), str) or "arguments" not in value:
            return None
        arguments = value["arguments"]
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
        return {"id": call_id, "type": "function", "function": {"name": value["name"], "arguments": arguments}}

    if isinstance(raw, dict) and step.get("tool_call_id") is not None:
        one = call(raw, step["tool_call_id"])
        return [one] if one is not None else None
    if isinstance(raw, list) and raw:
        calls = []
        for value in raw:
            if not isinstance(value, dict) or not isinstance(value.get("id"), str):
                return None
            one = call(value, value["id"])
            if one is None:
                return None
            calls.append(one)
        return calls
    return None


def openai_messages(records: Iterable[Record]) -> List[Message]:
    """The episode as OpenAI chat messages: the prompt, then per step the ``assistant`` turn (with
    ``reasoning_content``) and the observation — a ``tool`` message answering a native call in a JSON-format
    episode, else a ``user`` message."""
    start, steps, end = _split(records)
    messages = _prompt(start)
    native = start is not None and start.get("tool_format") == "json"
    for step in steps:
        calls = _native_calls(step) if native else None
        if calls is not None:
            messages.append(
                {
                    "role": "assistant",
                    "content": step.get("content") or "",
                    "reasoning_content": step.get("reasoning"),
                    "tool_calls": calls,
                }
            )
            for one in calls:
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": one["id"],
                        "name": one["function"]["name"],
                        "content": step["observation"],
                    }
                )
        else:
            messages.append(
                {"role": "assistant", "content": step["raw_action"], "reasoning_content": step.get("reasoning")}
            )
            messages.append({"role": "user", "content": step["observation"]})
    if end is not None and end.get("final_answer") is not None:
        messages.append(
            {
                "role": "assistant",
                "content": end["final_answer"],
                "reasoning_content": end.get("final_answer_reasoning"),
            }
        )
    return messages


@dataclasses.dataclass(frozen=True)
class CwmLayout:
    """The special tokens and spacing of the CWM transcript; the defaults are CWM's released layout (the same
    defaults as the server's ``model.cwm`` layout). Set ``begin_of_text=""`` for inference servers that add the
    BOS token themselves, ``assistant_prefix="<think>\\n"`` for reasoning mode."""

    begin_of_text: str = "<|begin_of_text|>"
    start_header: str = "<|start_header_id|>"
    end_header: str = "<|end_header_id|>"
    after_header: str = "\n\n"
    end_of_turn: str = "<|eot_id|>"
    tool_role_prefix: str = "tool: "
    assistant_prefix: str = ""
    strip_bodies: bool = True
    stop: Sequence[str] = ("<|eot_id|>",)


def _role_text(index: int, message: Mapping[str, Any], layout: CwmLayout) -> Tuple[str, bool]:
    role = str(message["role"])
    if role == "tool":
        name = (message.get("name") or "").strip()
        if not name:
            raise ValueError(f"message {index} is a tool output with no tool name; the CWM layout needs `tool: NAME`")
        return layout.tool_role_prefix + name, True
    if role.startswith("tool:"):
        return role, True
    return role, False


def cwm_prompt(messages: Sequence[Mapping[str, Any]], layout: CwmLayout = CwmLayout()) -> str:
    """``messages`` laid out as a CWM transcript ending with an open assistant turn for the model to continue.

    Each message is ``START_HEADER role END_HEADER`` + two newlines + body + ``<|eot_id|>``; bodies are stripped of
    surrounding whitespace except tool outputs. Tool outputs are either ``{"role": "tool", "name": NAME}`` (OpenAI
    style) or ``{"role": "tool: NAME"}`` (as :func:`cwm_messages` writes them). Separate reasoning is not rendered.
    """
    parts = [layout.begin_of_text]
    for index, message in enumerate(messages):
        role, is_tool = _role_text(index, message, layout)
        body = str(message.get("content") or "")
        if layout.strip_bodies and not is_tool:
            body = body.strip()
        parts += [layout.start_header, role.strip(), layout.end_header, layout.after_header, body, layout.end_of_turn]
    parts += [layout.start_header, "assistant", layout.end_header, layout.after_header, layout.assistant_prefix]
    return "".join(parts)
