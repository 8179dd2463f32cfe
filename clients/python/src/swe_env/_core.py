"""What the sync and asyncio clients share: addresses, retry policy, request building, the local conversation."""

from __future__ import annotations

import dataclasses
import json
import random
import socket
import uuid
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import grpc

from . import _fleet, errors
from .v1 import env_pb2

#: A channel option every channel gets: a unix socket's path is not a valid HTTP/2 `:authority` for the server.
_UNIX_OPTIONS = (("grpc.default_authority", "localhost"),)
#: Large observations and trajectories: no 4 MiB receive cap.
_BASE_OPTIONS = (("grpc.max_receive_message_length", -1),)
#: HTTP/2 keepalive on every channel: a ping every 10 s, a connection whose pings go unanswered for 5 s is dropped
#: (its calls fail UNAVAILABLE), so a frozen server is noticed instead of hanging the calls on it.
KEEPALIVE_OPTIONS = (
    ("grpc.keepalive_time_ms", 10000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC core (>= 1.5x) times pings out after this, not after keepalive_timeout_ms, while calls are open: its
    # default is 60 s. Without it a step on a frozen node hangs for a minute.
    ("grpc.http2.ping_timeout_ms", 5000),
    # A server that went away and came back is reached again within seconds (gRPC's default backoff grows to 120 s).
    ("grpc.max_reconnect_backoff_ms", 5000),
)

Metadata = Tuple[Tuple[str, str], ...]


def grpc_target(address: str) -> Tuple[str, Tuple[Tuple[str, Any], ...]]:
    """The gRPC target and channel options for an address.

    Accepted: ``host:port``, ``http://host:port`` (TCP, plaintext), ``unix:/path/to.sock`` or an absolute socket
    path ``/path/to.sock``.
    """
    address = address.strip()
    if not address:
        raise ValueError("empty server address: give host:port or unix:/path/to/swe-env.sock")
    if address.startswith("/"):
        address = "unix:" + address
    if address.startswith("unix:"):
        return address, _BASE_OPTIONS + _UNIX_OPTIONS
    for scheme in ("http://", "grpc://"):
        if address.startswith(scheme):
            address = address[len(scheme) :].rstrip("/")
    if address.startswith("https://"):
        raise ValueError("the swe-env server speaks plaintext HTTP/2: use host:port, not https://")
    return address, _BASE_OPTIONS


def channel_options(address: str, extra: Sequence[Tuple[str, Any]] = ()) -> Tuple[str, List[Tuple[str, Any]]]:
    """The gRPC target of ``address`` and every option its channel gets (base, keepalive, the caller's)."""
    target, base = grpc_target(address)
    return target, list(base) + list(KEEPALIVE_OPTIONS) + list(extra)


def resolve(host: str, port: int) -> List[str]:
    """Every address ``host`` resolves to now (``socket.getaddrinfo``, TCP), in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def capacity_failure(error: grpc.RpcError) -> "_fleet.Failure":
    """Why a GetCapacity failed, as a node-down reason. Never raises: a node refusing the token (or too old to
    answer GetCapacity) is marked down with that reason; only calls that need that node (or find no usable node)
    report it."""
    code_fn = getattr(error, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(error, "details", None)
    details = (details_fn() if callable(details_fn) else None) or str(error)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        details += " (a server older than fleet support: give a single address instead of a list)"
    return _fleet.Failure(code.name, details)


def auth_metadata(token: Optional[str]) -> Metadata:
    return (("authorization", "Bearer " + token),) if token else ()


def new_request_id() -> str:
    """A fresh idempotency key for a Step (32 hex digits; the server takes at most 128 bytes)."""
    return uuid.uuid4().hex


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """When a failed call is tried again: only RESOURCE_EXHAUSTED and UNAVAILABLE, at most ``max_attempts``
    times in all and within ``max_total_wait`` seconds of waiting. The wait is the server's ``retry-after-ms``
    hint when it sent one (plus up to ``jitter`` of it, so many clients do not come back at once), else
    exponential backoff from ``initial_backoff`` to ``max_backoff``. A Step is retried with the same
    ``request_id``, so a retried step never runs twice. ``RetryPolicy(max_attempts=1)`` disables retries."""

    max_attempts: int = 64
    initial_backoff: float = 0.2
    max_backoff: float = 10.0
    max_total_wait: float = 120.0
    jitter: float = 0.2

    def delay(self, attempt: int, hint: Optional[float]) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        if hint is not None:
            return hint * (1.0 + random.uniform(0.0, self.jitter))
        backoff = min(self.max_backoff, self.initial_backoff * (2 ** (attempt - 1)))
        return backoff * random.uniform(1.0 - self.jitter, 1.0)


ToolFormatLike = Union[str, int]
MessageOrMapping = Union[Mapping[str, Any], Any]


def tool_format(value: ToolFormatLike) -> Any:
    """``"text"`` / ``"json"`` / an ``env_pb2.ToolFormat`` value → the enum value (an int)."""
    if isinstance(value, int):
        return value
    names = {"": 0, "text": env_pb2.TOOL_FORMAT_TEXT, "json": env_pb2.TOOL_FORMAT_JSON}
    try:
        return names[value.lower()]
    except KeyError:
        raise ValueError(f"tool_format {value!r}: use 'text' (CWM tool calls) or 'json' (function calling)") from None


def _message(cls: Any, value: Optional[MessageOrMapping]) -> Any:
    if value is None:
        return None
    if isinstance(value, cls):
        return value
    return cls(**dict(value))


def task_fields(task_id: Optional[str], task: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The `task` oneof: a loaded task's id or an inline row."""
    if (task_id is None) == (task is None):
        raise ValueError("give exactly one of task_id (a task the server loaded) or task (an inline row)")
    if task_id is not None:
        return {"task_id": task_id}
    return {"task_json": json.dumps(dict(task or {}))}


def create_request(
    task_id: Optional[str] = None,
    *,
    task: Optional[Mapping[str, Any]] = None,
    image: str = "",
    tool_format_: ToolFormatLike = "text",
    budgets: Optional[MessageOrMapping] = None,
    limits: Optional[MessageOrMapping] = None,
    max_turns: Optional[int] = None,
    labels: Optional[Mapping[str, str]] = None,
    prompt: Optional[Sequence[Mapping[str, str]]] = None,
    model: Optional[Mapping[str, Any]] = None,
    grade_on_submit: bool = False,
) -> env_pb2.CreateEpisodeRequest:
    request = env_pb2.CreateEpisodeRequest(
        image=image,
        tool_format=tool_format(tool_format_),
        labels=dict(labels or {}),
        prompt=[env_pb2.PromptMessage(role=m["role"], content=m["content"]) for m in (prompt or ())],
        model_json=json.dumps(dict(model)) if model is not None else "",
        grade_on_submit=grade_on_submit,
        **task_fields(task_id, task),
    )
    budget_message = _message(env_pb2.Budgets, budgets)
    if budget_message is not None:
        request.budgets.CopyFrom(budget_message)
    if max_turns is not None:
        request.budgets.max_turns = max_turns
    limit_message = _message(env_pb2.Limits, limits)
    if limit_message is not None:
        request.limits.CopyFrom(limit_message)
    return request


def step_request(
    episode_id: str,
    text: Optional[str],
    tool_call: Optional[MessageOrMapping],
    request_id: str,
    model_turn: Optional[MessageOrMapping],
) -> env_pb2.StepRequest:
    if (text is None) == (tool_call is None):
        raise ValueError("give exactly one action: text (CWM tool-call text) or tool_call (name, arguments)")
    request = env_pb2.StepRequest(episode_id=episode_id, request_id=request_id)
    if text is not None:
        request.text = text
    else:
        call = tool_call_message(tool_call)
        request.tool_call.CopyFrom(call)
    turn = _message(env_pb2.ModelTurn, model_turn)
    if turn is not None:
        request.model_turn.CopyFrom(turn)
    return request


def tool_call_message(value: MessageOrMapping) -> env_pb2.ToolCall:
    """A ToolCall from a message or a mapping ``{name, arguments (dict or JSON text), call_id}``."""
    if isinstance(value, env_pb2.ToolCall):
        return value
    value = dict(value)
    arguments = value.get("arguments", value.get("arguments_json", "{}"))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return env_pb2.ToolCall(name=value["name"], arguments_json=arguments, call_id=value.get("call_id", value.get("id", "")))


def grade_request(
    task_id: Optional[str], task: Optional[Mapping[str, Any]], patch: str, image: str, rules: str
) -> env_pb2.GradeRequest:
    return env_pb2.GradeRequest(patch=patch, image=image, rules=rules, **task_fields(task_id, task))


def prewarm_request(
    task_id: Optional[str],
    task: Optional[Mapping[str, Any]],
    count: int,
    wait: bool,
    wait_timeout: Optional[float],
    image: str,
) -> env_pb2.PrewarmRequest:
    return env_pb2.PrewarmRequest(
        count=count,
        wait=wait,
        wait_timeout_ms=int(wait_timeout * 1000) if wait_timeout else 0,
        image=image,
        **task_fields(task_id, task),
    )


def check_test_request(
    task_id: Optional[str], task: Optional[Mapping[str, Any]], script: str, patch: str, image: str, timeout_secs: int
) -> env_pb2.CheckTestRequest:
    return env_pb2.CheckTestRequest(
        script=script, patch=patch, image=image, timeout_secs=timeout_secs, **task_fields(task_id, task)
    )


def trajectory_request(episode_id: str) -> env_pb2.GetTrajectoryRequest:
    return env_pb2.GetTrajectoryRequest(episode_id=episode_id, encoding=env_pb2.RECORD_ENCODING_JSON)


def parse_records(records: Iterable[env_pb2.TrajectoryRecord]) -> List[Dict[str, Any]]:
    return [json.loads(record.json) for record in records]


class Conversation:
    """An episode's records as the client saw them (prompt, each step's action and observation, the final
    answer), kept locally so the prompt for the next model call needs no round trip. The records follow the
    trajectory file's schema (the fields the exporters read), so ``swe_env.render`` works on them as on
    ``GetTrajectory`` output."""

    def __init__(self, created: env_pb2.CreateEpisodeResponse, prompt: Sequence[Mapping[str, str]]) -> None:
        fmt = "json" if created.tool_format == env_pb2.TOOL_FORMAT_JSON else "text"
        if prompt:
            messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
        else:
            # What the server records when the client sends no prompt.
            messages = []
            if fmt == "text":
                messages.append({"role": "system", "content": created.tool_specs_text})
            messages.append({"role": "user", "content": created.problem_statement})
        self.records: List[Dict[str, Any]] = [
            {
                "type": "episode_start",
                "episode_id": created.episode_id,
                "instance_id": created.instance_id,
                "tool_format": fmt,
                "prompt": messages,
            }
        ]

    def add_step(self, request: env_pb2.StepRequest, response: env_pb2.StepResponse) -> None:
        if any(r.get("step_idx") == response.step_idx for r in self.records[1:]):
            return  # a replayed Step the conversation already holds
        if request.WhichOneof("action") == "text":
            raw = request.text
            call_id = None
        else:
            call = request.tool_call
            # The server's raw action for a structured call: compact JSON, keys sorted.
            raw = json.dumps({"arguments": call.arguments_json, "name": call.name}, separators=(",", ":"), ensure_ascii=False)
            call_id = call.call_id or None
        observation = response.observation
        reasoning = request.model_turn.reasoning if request.HasField("model_turn") else ""
        self.records.append(
            {
                "type": "step",
                "step_idx": response.step_idx,
                "raw_action": raw,
                "reasoning": reasoning or None,
                "content": None,
                "tool": observation.tool or None,
                "tool_call_id": call_id,
                "format_error": observation.format_error or None,
                "observation": observation.text,
            }
        )
        # Concurrent steps of one episode may answer out of order; the records stay in step order.
        self.records[1:] = sorted(self.records[1:], key=lambda r: (r["type"] == "episode_end", r.get("step_idx", 0)))

    def end(self, final_answer: str) -> None:
        if self.records[-1]["type"] != "episode_end":
            self.records.append({"type": "episode_end", "final_answer": final_answer or None})
