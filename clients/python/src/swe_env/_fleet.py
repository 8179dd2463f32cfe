"""Placement over a fleet of swe-env servers: the state the sync and asyncio clients share. Pure logic, no I/O:
the clients resolve names, call GetCapacity and hand the results to :class:`Fleet`.

The rule (the Rust client implements the same):

- Nodes are addresses. A ``host:port`` whose host is a name is resolved at every refresh to all its addresses (a
  Kubernetes headless Service: one per pod); IP literals and unix sockets are taken as they are. Two addresses
  answering the same ``instance_id`` are one node (the first is kept); two instance ids claiming one ``node_id``
  is a configuration error naming both addresses.
- GetCapacity reports are cached for ``refresh_secs``; between reports a placement lowers the node's free estimate
  by one and a CloseEpisode sent to it raises it by one.
- CreateEpisode goes to the reachable, non-draining node with the largest estimated free count; ties: the node
  this client placed the fewest episodes on, then address order.
- Every later call for an episode goes to the node its id names (``<node_id>.ep-<hex>``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import grpc

from .errors import (
    FleetConfigError,
    InvalidArgument,
    NodeUnavailable,
    ResourceExhausted,
    SweEnvError,
    Unavailable,
    error_for,
)

#: What a name resolves to: ``getaddrinfo``-like, returning IP address strings (no port), in the resolver's order.
Resolver = Callable[[str, int], Sequence[str]]

log = logging.getLogger("swe_env")

#: Defaults of the placement rule.
REFRESH_SECS = 1.0
PROBE_TIMEOUT_SECS = 2.0
#: A node that is down is asked again at most this often (not at every refresh) ...
DOWN_REPROBE_SECS = 5.0
#: ... and a refresh waits at most this long for its answer (an up node gets ``PROBE_TIMEOUT_SECS``).
DOWN_PROBE_TIMEOUT_SECS = 0.25
#: Floor of the wait between placement rounds while no node has a free slot.
MIN_WAIT_SECS = 0.05

#: GetCapacity failures that mean the node cannot be reached (rather than that it refused the client).
UNREACHABLE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "INTERNAL"})


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why asking a node for its capacity failed: the status code's name and the text."""

    code: str
    message: str

    @property
    def unreachable(self) -> bool:
        """The node did not answer (transport failure, timeout), as opposed to answering with a refusal (a wrong
        token, an older server)."""
        return self.code in UNREACHABLE_CODES

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code


def as_failure(report: Union[Failure, str]) -> Failure:
    """A failure from a :class:`Failure` or a text ``"CODE: message"`` (a bare text counts as UNAVAILABLE)."""
    if isinstance(report, Failure):
        return report
    code, _, rest = report.partition(":")
    if code.strip() in grpc.StatusCode.__members__:
        return Failure(code.strip(), rest.strip())
    return Failure("UNAVAILABLE", report)


def node_of(episode_id: str) -> Optional[str]:
    """The node an episode id names (the text before the first ``.``); None for ids of older servers."""
    node, dot, _ = episode_id.partition(".")
    return node if dot and node else None


def unroutable(episode_id: str) -> Optional[SweEnvError]:
    """The error for an episode id no node can be picked for (None when it names a node): empty or malformed →
    InvalidArgument; ``ep-<hex>`` (an id of a server older than fleet support) → Unavailable saying so."""
    if node_of(episode_id) is not None:
        return None
    if not episode_id:
        return InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, "empty episode id")
    if episode_id.startswith("ep-") and "." not in episode_id:
        return Unavailable(
            grpc.StatusCode.UNAVAILABLE,
            f"episode {episode_id} names no node (a server older than fleet support): "
            "use a single-address client for it",
        )
    return InvalidArgument(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"episode id {episode_id!r} is not one a swe-env server makes (<node>.ep-<32 hex>)",
    )


def split_addresses(addresses: Union[str, Iterable[str]]) -> List[str]:
    """A list of addresses from one string (commas separate several) or a sequence; empty entries dropped."""
    items = addresses.split(",") if isinstance(addresses, str) else list(addresses)
    out = [a.strip() for a in items if a and a.strip()]
    if not out:
        raise ValueError("no server address: give host:port, unix:/path/to.sock, or several of them")
    return out


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _host_port(target: str) -> Optional[Tuple[str, int]]:
    """``(host, port)`` of a TCP target whose host is a name; None for IP literals, unix sockets and odd forms."""
    if target.startswith("unix:") or target.startswith("/"):
        return None
    if target.startswith("["):  # [v6]:port
        return None
    host, colon, port = target.rpartition(":")
    if not colon or not host or not port.isdigit() or _is_ip(host):
        return None
    return host, int(port)


def expand(targets: Sequence[str], resolve: Resolver) -> Tuple[List[str], Dict[str, str]]:
    """Every address the configured ``targets`` (gRPC targets: ``host:port`` / ``unix:…``) stand for now, in order,
    without repeats; and per configured name the resolver's error when it failed (its addresses are then missing).
    """
    out: List[str] = []
    failures: Dict[str, str] = {}
    for target in targets:
        hp = _host_port(target)
        if hp is None:
            found = [target]
        else:
            host, port = hp
            try:
                ips = list(resolve(host, port))
            except OSError as error:
                failures[target] = f"cannot resolve {host}: {error}"
                ips = []
            found = [(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}") for ip in ips]
            if not ips and target not in failures:
                failures[target] = f"{host} resolves to no address"
        for address in found:
            if address not in out:
                out.append(address)
    return out, failures


@dataclasses.dataclass(eq=False)
class Node:
    """One server as this client sees it. ``free`` is the estimate (the last report, adjusted by this client's own
    placements and closes since)."""

    address: str
    node_id: str = ""
    instance_id: str = ""
    max_episodes: int = 0
    live_episodes: int = 0
    free: int = 0
    draining: bool = False
    pool_ready: int = 0
    down: bool = True
    #: Why the node is down (the last failure), empty when up.
    error: str = "not asked yet"
    #: Down because it did not answer a GetCapacity (transport failure, timeout): calls for its episodes fail at
    #: once. A node down for another reason (a refused token, gone from the resolved names) still gets them.
    unreachable: bool = False
    #: When a GetCapacity to it last failed (monotonic seconds); None when it answered the last one.
    probed_at: Optional[float] = None
    #: Episodes this client placed on it (the tie-break).
    placed: int = 0


@dataclasses.dataclass(frozen=True)
class NodeView:
    """``client.nodes()``: one node of the current view."""

    node_id: str
    address: str
    free: int
    max_episodes: int
    draining: bool
    down: bool
    error: str
    placed: int


def _field(report: Any, name: str) -> Any:
    return report[name] if isinstance(report, Mapping) else getattr(report, name)


class Fleet:
    """The nodes, their capacity estimates, and the choice of a node for a new episode. Not thread-safe: the clients
    guard it with their lock."""

    def __init__(self, refresh_secs: float = REFRESH_SECS) -> None:
        self.refresh_secs = refresh_secs
        self.nodes: List[Node] = []
        self.refreshed_at: Optional[float] = None
        self._by_address: Dict[str, Node] = {}

    def stale(self, now: float) -> bool:
        return self.refreshed_at is None or now - self.refreshed_at >= self.refresh_secs

    def fresher_than(self, asked: float) -> bool:
        """Whether the last refresh ended after ``asked`` (a caller waiting for a refresh can use that one)."""
        return self.refreshed_at is not None and self.refreshed_at > asked

    def probe_timeout(self, address: str, now: float, timeout: float) -> Optional[float]:
        """The deadline of this refresh's GetCapacity to ``address``: ``timeout`` for a node that is up (or not
        asked yet); a down node is asked at most every ``DOWN_REPROBE_SECS`` (None: not now), and then with
        ``DOWN_PROBE_TIMEOUT_SECS``, so a dead or frozen node never slows every refresh by the full deadline."""
        node = self._by_address.get(address)
        if node is None or not node.down or node.probed_at is None:
            return timeout
        if now - node.probed_at < DOWN_REPROBE_SECS:
            return None
        return min(timeout, DOWN_PROBE_TIMEOUT_SECS)

    def apply(self, addresses: Sequence[str], reports: Mapping[str, Union[Any, Failure, str]], now: float) -> None:
        """A refresh's outcome: ``addresses``, the current expansion in order; ``reports[address]``, its
        GetCapacityResponse (or a mapping of its fields), or a :class:`Failure` (or a text ``"CODE: why"``) saying
        why asking failed; a known down node without a report (not due for a probe) stays as it was. Nodes known
        before but missing now stay in the view, down. Raises :class:`FleetConfigError` when two processes
        answering claim one node id (the view is left as it was)."""
        instances: Dict[str, str] = {}  # instance_id -> first address answering it
        claims: Dict[str, Tuple[str, str]] = {}  # node_id -> (instance_id, address)
        kept: List[Node] = []
        updates: List[Tuple[Node, Any]] = []
        for address in addresses:
            node = self._by_address.get(address) or Node(address=address)
            report = reports.get(address)
            if report is None:
                report = None if address in self._by_address and node.down else Failure("UNAVAILABLE", "no report")
            if report is None or isinstance(report, (str, Failure)):
                updates.append((node, report))
                kept.append(node)
                continue
            instance = str(_field(report, "instance_id"))
            node_id = str(_field(report, "node_id"))
            if instance and instance in instances:
                continue  # the same process at a second address: one node, the first address kept
            if instance:
                instances[instance] = address
            if node_id in claims and claims[node_id][0] != instance:
                raise FleetConfigError(
                    f"two swe-env servers claim node id {node_id!r}: {claims[node_id][1]} and {address} "
                    f"(processes {claims[node_id][0]} and {instance}); give each server its own --node-id"
                )
            claims[node_id] = (instance, address)
            updates.append((node, report))
            kept.append(node)
        answering = {node_id for node_id in claims}
        for node, report in updates:
            if report is None or isinstance(report, (str, Failure)):
                if report is not None:
                    self.mark_down(node, as_failure(report), now)
                if node.node_id in answering:
                    node.node_id = ""  # that node answers elsewhere now (a rescheduled pod)
                continue
            self.update(node, report)
        for node in self.nodes:  # known before, gone from the expansion (or now an alias): keep it, down
            if node not in kept and node.node_id and node.node_id not in answering:
                # Not unreachable: its episodes' calls still go to its address (a draining pod leaves the
                # headless Service's names but answers for its live episodes during the grace period).
                node.down, node.error, node.unreachable = True, "no longer among the resolved addresses", False
                kept.append(node)
        self.nodes = kept
        self._by_address = {node.address: node for node in kept}
        self.refreshed_at = now

    def update(self, node: Node, report: Any) -> None:
        """A node answered GetCapacity with ``report``: it is up, with that capacity."""
        node.node_id = str(_field(report, "node_id"))
        node.instance_id = str(_field(report, "instance_id"))
        node.max_episodes = int(_field(report, "max_episodes"))
        node.live_episodes = int(_field(report, "live_episodes"))
        node.draining = bool(_field(report, "draining"))
        node.free = 0 if node.draining else int(_field(report, "free_episodes"))
        node.pool_ready = int(_field(report, "pool_ready"))
        node.down, node.error, node.unreachable, node.probed_at = False, "", False, None

    def choose(self, exclude: Set[str] = frozenset()) -> Optional[Node]:  # type: ignore[assignment]
        """The node for the next episode: up, admitting, with a free slot by the estimate; None when none has."""
        best: Optional[Node] = None
        best_key: Optional[Tuple[int, int, int]] = None
        for index, node in enumerate(self.nodes):
            if node.down or node.draining or node.free <= 0 or node.address in exclude:
                continue
            key = (-node.free, node.placed, index)
            if best_key is None or key < best_key:
                best, best_key = node, key
        return best

    def placed(self, node: Node) -> None:
        node.free = max(0, node.free - 1)
        node.placed += 1

    def unplaced(self, node: Node) -> None:
        """A placement that did not happen after all (the create failed)."""
        node.placed = max(0, node.placed - 1)

    def exhausted(self, node: Node) -> None:
        """The node answered RESOURCE_EXHAUSTED: no free slot until the next report."""
        node.free = 0

    def closed(self, node_id: Optional[str]) -> None:
        node = self.find(node_id)
        if node is not None and not node.down:
            node.free = min(node.max_episodes, node.free + 1) if node.max_episodes else node.free + 1

    def mark_down(self, node: Node, failure: Union[Failure, str], now: float) -> None:
        """A GetCapacity to ``node`` failed: down (skipped by placement) until a later one answers."""
        failure = as_failure(failure)
        node.down, node.error, node.unreachable, node.probed_at = True, str(failure), failure.unreachable, now

    def fails_fast(self, node: Node) -> bool:
        """Whether a call for an episode on ``node`` fails at once without being sent: only when a GetCapacity to
        it found it unreachable (a draining node, one refusing the token or gone from the names still gets it)."""
        return node.down and node.unreachable

    def no_node_error(self, resolve_failures: Mapping[str, str], what: str) -> SweEnvError:
        """The error when no node can take a call: ``what`` (e.g. "no node of the fleet answers"), then every
        node's reason. When every node refused the client the same way (e.g. a wrong token everywhere), that
        refusal's kind (Unauthenticated, …); else Unavailable."""
        message = f"{what} ({self.describe()}{''.join(f'; {t}: {why}' for t, why in resolve_failures.items())})"
        codes = {as_failure(n.error).code for n in self.nodes if n.down and not n.unreachable}
        code = grpc.StatusCode.UNAVAILABLE
        if self.nodes and all(n.down and not n.unreachable for n in self.nodes) and len(codes) == 1:
            code = grpc.StatusCode[codes.pop()]
        return error_for(code, message)

    def find(self, node_id: Optional[str]) -> Optional[Node]:
        """The node with this id (an answering one before a down one)."""
        if not node_id:
            return None
        found = [n for n in self.nodes if n.node_id == node_id]
        found.sort(key=lambda n: n.down)
        return found[0] if found else None

    def by_address(self, address: str) -> Optional[Node]:
        return self._by_address.get(address)

    def describe(self) -> str:
        """The nodes for an error message: ``id@address`` (down ones marked)."""
        return ", ".join(
            f"{n.node_id or '?'}@{n.address}{f' (down: {n.error})' if n.down else (' (draining)' if n.draining else '')}"
            for n in self.nodes
        ) or "no node answered"

    def view(self) -> List[NodeView]:
        return [
            NodeView(
                node_id=n.node_id,
                address=n.address,
                free=n.free,
                max_episodes=n.max_episodes,
                draining=n.draining,
                down=n.down,
                error=n.error,
                placed=n.placed,
            )
            for n in self.nodes
        ]


def lost_message(episode_id: str, node: Node) -> str:
    """The NodeUnavailable text for an episode whose node is unreachable."""
    return (
        f"node {node.node_id} at {node.address} is unreachable; episode {episode_id} is lost unless the node comes "
        "back (its trajectory stays on that node; a retried Step with the same request id runs at most once): "
        f"{node.error}"
    )


def unknown_node_message(episode_id: str, node_id: str, fleet: Fleet) -> str:
    return f"episode {episode_id} belongs to node {node_id}, which is not among this client's nodes ({fleet.describe()})"


def lost_error(episode_id: str, node: Node, method: str, request_id: Optional[str]) -> NodeUnavailable:
    return NodeUnavailable(
        lost_message(episode_id, node),
        node_id=node.node_id,
        address=node.address,
        episode_id=episode_id,
        method=method,
        request_id=request_id,
    )


def placement_failure(
    fleet: Fleet, resolve_failures: Mapping[str, str], last: Optional[SweEnvError]
) -> SweEnvError:
    """What a create raises when a round found no free slot: no node up → the no-node error (every node's
    reason); else RESOURCE_EXHAUSTED naming the nodes (and the last refusal), with its retry hint."""
    if not any(not n.down for n in fleet.nodes):
        return fleet.no_node_error(resolve_failures, "no node of the fleet answers")
    message = f"no node of the fleet has a free slot ({fleet.describe()})"
    if last is not None:
        message += f"; last refusal: {last.code.name}: {last.message}"
    return ResourceExhausted(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        message,
        method="CreateEpisode",
        retry_after=last.retry_after if last is not None else None,
    )


def round_wait(policy: Any, hint: Optional[float], refresh_secs: float, remaining: float) -> float:
    """The wait before the next placement round: the servers' hint (with jitter), else ``refresh_secs`` (every
    estimate is 0: ask again at the next refresh), cut to the ``remaining`` budget."""
    wait = policy.delay(1, hint) if hint is not None else refresh_secs
    return max(MIN_WAIT_SECS, min(wait, remaining))


def log_changes(before: Mapping[str, bool], nodes: Sequence[Node]) -> None:
    """One log line per node that went down or came back in a refresh."""
    for node in nodes:
        was_down = before.get(node.address)
        if node.down and not was_down:
            log.warning("fleet node %s at %s is down: %s", node.node_id or "?", node.address, node.error)
        elif was_down and not node.down:
            log.warning("fleet node %s at %s answers again", node.node_id, node.address)
