"""Errors of swe-env calls: one exception class per gRPC status the service documents, carrying the server's text.

    SweEnvError
    ├── InvalidArgument      a request field is malformed (the message names it)
    ├── NotFound             unknown task or episode id
    ├── FailedPrecondition   the episode has ended or was closed; the task image is missing on the server
    ├── ResourceExhausted    admission limits reached (`retry_after`: the server's hint, seconds)
    ├── Unavailable          the server is shutting down or its Docker engine is unreachable (`retry_after`)
    │   └── NodeUnavailable  (fleet) the node holding the episode is unreachable: the episode is lost unless the
    │                        node comes back (`request_id`: a Step's key, to retry it at most once)
    ├── Unauthenticated      missing or wrong token
    ├── Unimplemented        a feature this server build does not provide
    ├── DeadlineExceeded     the call's timeout passed (the action may still have run: retry a Step with its
    │                        `request_id` to get its outcome without running it twice)
    ├── Cancelled            the call was cancelled
    └── ServerError          anything else (INTERNAL, UNKNOWN, …)

    FleetConfigError (a ValueError)  two server processes of a fleet claim one node id
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Type

import grpc

#: Metadata key of the server's retry hint (milliseconds), sent with RESOURCE_EXHAUSTED and UNAVAILABLE.
RETRY_AFTER_MS = "retry-after-ms"


class SweEnvError(Exception):
    """A failed swe-env call.

    Attributes:
        code: the gRPC status code.
        message: the server's message (what is wrong and how to fix it).
        method: the RPC that failed (e.g. ``CreateEpisode``).
        retry_after: the server's retry hint in seconds, when it sent one.
        request_id: the Step's idempotency key, when the call was a Step (retry with it to get the outcome).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        method: str = "",
        retry_after: Optional[float] = None,
        request_id: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.method = method
        self.retry_after = retry_after
        self.request_id = request_id

    def __str__(self) -> str:
        where = f"{self.method}: " if self.method else ""
        return f"{where}{self.code.name}: {self.message}"


class InvalidArgument(SweEnvError):
    """A request field is malformed; the message names the field."""


class NotFound(SweEnvError):
    """Unknown task or episode id."""


class FailedPrecondition(SweEnvError):
    """The episode has ended or was closed, or the task image is missing on the server."""


class ResourceExhausted(SweEnvError):
    """The server's admission limits are reached; retry after ``retry_after`` seconds."""


class Unavailable(SweEnvError):
    """The server is shutting down or cannot reach its container engine, or the connection failed."""


class NodeUnavailable(Unavailable):
    """(Fleet clients) The node holding the episode is unreachable (it answered neither the call nor a quick
    GetCapacity probe): the episode is lost unless the node comes back (a frozen or partitioned node may; its
    trajectory stays on that node). Raised at once, not retried. ``node_id``, ``address`` and ``episode_id`` name
    what was lost; ``request_id`` is the Step's key (a Step with it runs at most once, should the node return)."""

    def __init__(
        self,
        message: str,
        *,
        node_id: str,
        address: str,
        episode_id: str,
        method: str = "",
        request_id: Optional[str] = None,
    ) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, message, method=method, request_id=request_id)
        self.node_id = node_id
        self.address = address
        self.episode_id = episode_id


class FleetConfigError(ValueError):
    """The fleet's addresses are inconsistent: two different server processes claim one node id (give each server
    its own ``--node-id``). The message names both addresses."""


class Unauthenticated(SweEnvError):
    """Missing or wrong ``authorization: Bearer`` token: pass the server's token to the client."""


class Unimplemented(SweEnvError):
    """A feature this server build does not provide."""


class DeadlineExceeded(SweEnvError):
    """The call's timeout passed before the reply came; a Step may still have run on the server."""


class Cancelled(SweEnvError):
    """The call was cancelled."""


class ServerError(SweEnvError):
    """Any other failure (INTERNAL, UNKNOWN, …); details are in the server's log."""


_BY_CODE: Dict[grpc.StatusCode, Type[SweEnvError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Unauthenticated,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}

def error_for(code: grpc.StatusCode, message: str, *, method: str = "") -> SweEnvError:
    """The exception class of ``code`` with ``message`` (for errors the client makes up itself)."""
    return _BY_CODE.get(code, ServerError)(code, message, method=method)


#: Codes a call is retried on (bounded, honouring the server's hint).
RETRYABLE = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})


def retry_after_seconds(metadata: Optional[Sequence[Tuple[str, object]]]) -> Optional[float]:
    """The `retry-after-ms` hint in seconds, if the metadata carries a valid one."""
    for key, value in metadata or ():
        if key == RETRY_AFTER_MS:
            text = value.decode() if isinstance(value, bytes) else str(value)
            try:
                return max(0.0, int(text) / 1000.0)
            except ValueError:
                return None
    return None


#: The details of the server's answer to a call whose ``grpc-timeout`` expired there (tonic's CANCELLED).
SERVER_TIMEOUT_DETAILS = "Timeout expired"


def from_rpc_error(
    error: grpc.RpcError, *, method: str = "", request_id: Optional[str] = None
) -> SweEnvError:
    """The exception for a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``)."""
    code_fn = getattr(error, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(error, "details", None)
    message = (details_fn() if callable(details_fn) else None) or str(error)
    hint = None
    for attribute in ("trailing_metadata", "initial_metadata"):
        getter = getattr(error, attribute, None)
        if callable(getter) and hint is None:
            try:
                hint = retry_after_seconds(getter())
            except Exception:  # metadata unavailable on this error object
                hint = None
    if code == grpc.StatusCode.CANCELLED and message == SERVER_TIMEOUT_DETAILS:
        # The call's own deadline, run out on the server's side first: tonic answers it CANCELLED, not
        # DEADLINE_EXCEEDED. Under load this reply can beat the client's timer; it means the same thing.
        code = grpc.StatusCode.DEADLINE_EXCEEDED
    cls = _BY_CODE.get(code, ServerError)
    return cls(code, message, method=method, retry_after=hint, request_id=request_id)
