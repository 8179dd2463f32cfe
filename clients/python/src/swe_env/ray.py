"""Ray integration: one supervised ``swe-env serve`` per Ray node, and a pool that hands out episodes across them.

    import ray
    from swe_env.ray import EnvPool

    ray.init()
    with EnvPool(serve_args=["--tasks", "tasks.jsonl"], token=token) as pool:
        with pool.episode(task_id, max_turns=50) as ep:
            obs = ep.step("<tool: bash>\\nls\\n</tool>")

:class:`NodeServer` is the Ray actor (``num_cpus=0``) pinned to one Ray node: it runs that node's
``swe-env serve`` (which owns the node's Docker), restarts it when it exits (backoff 0.5 s doubling to 10 s, on the
same port so clients' addresses stay valid) and drains it on :meth:`ServeSupervisor.stop`. :class:`EnvPool` starts
one per node and builds a fleet :class:`swe_env.Client` over their addresses: CreateEpisode goes to the node with
the most free slots, every later call of an episode to the node its id names; a node whose server died fails its
own episodes with :class:`swe_env.errors.NodeUnavailable`, new episodes go to the others.

Install with ``pip install './clients/python[ray]'``. Ray is imported from here, never by ``import swe_env``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Sequence

try:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError as error:  # pragma: no cover - exercised only without ray installed
    raise ImportError(
        "swe_env.ray needs Ray: pip install './clients/python[ray]' (or pip install 'ray[default]')"
    ) from error

from .client import Client, Episode

log = logging.getLogger("swe_env.ray")

__all__ = ["EnvPool", "NodeServer", "ServeSupervisor", "ServeFailed", "node_id_for"]

#: A node id is a DNS label (the server's rule): 1..=63 of [a-z0-9-], not starting or ending with '-'.
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: Restart backoff: the first restart waits this long, each further one twice as long, up to the cap.
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 10.0
#: A server that ran this long before exiting was healthy: the next restart starts from the initial backoff.
_STABLE_SECS = 30.0


class ServeFailed(RuntimeError):
    """``swe-env serve`` did not start (or exited before printing its address); the message ends with its log."""


def node_id_for(ray_node_id: str) -> str:
    """The swe-env node id derived from a Ray node id: ``ray-`` and its first 12 hex digits (a DNS label)."""
    return "ray-" + ray_node_id.lower()[:12]


def _check_node_id(node_id: str) -> str:
    if not _DNS_LABEL.match(node_id):
        raise ValueError(
            f"node id {node_id!r} is not a DNS label (1-63 characters of a-z, 0-9 and '-', "
            "not starting or ending with '-')"
        )
    return node_id


def _resolve_binary(binary: Optional[str]) -> str:
    """The swe-env binary: the argument, else ``$SWE_ENV_BIN``, else ``swe-env`` on PATH."""
    chosen = binary or os.environ.get("SWE_ENV_BIN")
    if chosen:
        if not os.access(chosen, os.X_OK):
            raise ServeFailed(f"the swe-env binary {chosen!r} does not exist or is not executable")
        return chosen
    found = shutil.which("swe-env")
    if not found:
        raise ServeFailed("no swe-env binary: pass binary=, set $SWE_ENV_BIN, or put swe-env on PATH")
    return found


def _parent_death_signal() -> Any:
    """A ``preexec_fn`` that makes the child get SIGTERM (its drain) when the thread that started it dies: a
    killed actor does not leave its server running. Linux only; None elsewhere. libc is loaded before the fork,
    so the child only calls into it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl = libc.prctl
    pr_set_pdeathsig = 1
    term = int(signal.SIGTERM)

    def set_pdeathsig() -> None:
        prctl(pr_set_pdeathsig, term, 0, 0, 0)

    return set_pdeathsig


class _Start:
    """One start of the server: its process and what it printed."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.address: Optional[str] = None
        self.node_id: Optional[str] = None
        self.owner: Optional[str] = None
        self.ready = threading.Event()
        self.started_at = time.monotonic()


class ServeSupervisor:
    """Runs and supervises one ``swe-env serve`` (the plain class of the :data:`NodeServer` actor).

    ``token``: the bearer token the server requires (written to ``<node dir>/token``, mode 0600).
    ``serve_args``: extra ``swe-env serve`` arguments (``--tasks FILE``, ``--max-episodes N`` …).
    ``node_id``: the server's ``--node-id`` (default: derived from the Ray node id, see :func:`node_id_for`).
    ``binary``: the swe-env binary (default ``$SWE_ENV_BIN``, else ``swe-env`` on PATH).
    ``workdir``: where the node's directory ``<workdir>/<node id>/`` goes (token, ``trajectories/``,
    ``serve.log`` with the server's stdout and stderr); default ``$TMPDIR/swe-env-ray``.
    ``host`` / ``port``: what it listens on (default: the Ray node's IP, port 0 = any free port at the first start;
    every restart reuses the port the first start got).
    """

    def __init__(
        self,
        token: str,
        serve_args: Sequence[str] = (),
        *,
        node_id: Optional[str] = None,
        binary: Optional[str] = None,
        workdir: Optional[str] = None,
        host: Optional[str] = None,
        port: int = 0,
    ) -> None:
        self.ray_node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        if node_id is None:
            if not self.ray_node_id:
                raise ValueError("node_id is required outside a Ray worker")
            node_id = node_id_for(self.ray_node_id)
        self._node_id = _check_node_id(node_id)
        self._binary = _resolve_binary(binary)
        self._host = host or (ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1")
        self._port = port
        self._serve_args = [str(arg) for arg in serve_args]
        root = Path(workdir) if workdir else Path(tempfile.gettempdir()) / "swe-env-ray"
        self.dir = root / self._node_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self._token_file = self.dir / "token"
        descriptor = os.open(self._token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as f:
            f.write(token + "\n")
        self.log_path = self.dir / "serve.log"
        self._log: IO[str] = open(self.log_path, "a", buffering=1)
        self._preexec = _parent_death_signal()

        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._first_ready = threading.Event()
        self._current: Optional[_Start] = None
        self._address: Optional[str] = None
        self._owners: List[str] = []
        self._restarts = 0
        self._last_exit: Optional[int] = None
        self._failure: Optional[str] = None
        self._thread = threading.Thread(target=self._supervise, name=f"swe-env-serve-{self._node_id}", daemon=True)
        self._thread.start()

    # -- What callers ask -------------------------------------------------------------------------------------------

    def wait_ready(self, timeout: float = 120.0) -> Dict[str, Any]:
        """Blocks until the first start printed its address (or failed); returns :meth:`info`."""
        if not self._first_ready.wait(timeout):
            raise ServeFailed(
                f"swe-env serve on node {self._node_id} did not print its address within {timeout:.0f} s; "
                f"log {self.log_path}:\n{self._log_tail()}"
            )
        with self._lock:
            failure = self._failure
        if failure is not None:
            raise ServeFailed(failure)
        return self.info()

    def address(self) -> str:
        """``host:port`` clients use (the same across restarts)."""
        self.wait_ready()
        with self._lock:
            address = self._address
        if address is None:  # wait_ready raised otherwise
            raise ServeFailed(f"swe-env serve on node {self._node_id} has no address")
        return address

    def node_id(self) -> str:
        return self._node_id

    def pid(self) -> Optional[int]:
        """The running server's pid (None between a crash and its restart, and after stop)."""
        with self._lock:
            return self._pid_unlocked()

    def info(self) -> Dict[str, Any]:
        """Address, node id, Ray node id, pid, restarts, last exit status (a negative number: killed by that
        signal), every owner label the server's starts printed, and the log path."""
        with self._lock:
            return {
                "address": self._address,
                "node_id": self._node_id,
                "ray_node_id": self.ray_node_id,
                "pid": self._pid_unlocked(),
                "restarts": self._restarts,
                "last_exit": self._last_exit,
                "owners": list(self._owners),
                "log": str(self.log_path),
                "stopped": self._stopping.is_set(),
            }

    def _pid_unlocked(self) -> Optional[int]:
        current = self._current
        if current is None or current.process.poll() is not None:
            return None
        return current.process.pid

    def stop(self, grace_secs: float = 60.0) -> Optional[int]:
        """Stops supervising and the server: SIGTERM (the server's drain: new episodes refused, live ones get its
        ``shutdown_grace_secs``, then their containers are removed), SIGKILL if it still runs after
        ``grace_secs``. Returns its exit status. Idempotent."""
        self._stopping.set()
        with self._lock:
            current = self._current
        status: Optional[int] = None
        if current is not None:
            process = current.process
            if process.poll() is None:
                try:
                    process.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    status = process.wait(timeout=grace_secs)
                except subprocess.TimeoutExpired:
                    log.warning(
                        "swe-env serve on node %s still running %.0f s after SIGTERM: killing it",
                        self._node_id,
                        grace_secs,
                    )
                    process.kill()
                    status = process.wait()
            else:
                status = process.returncode
        self._thread.join(timeout=15)
        with self._lock:
            self._last_exit = status if status is not None else self._last_exit
        return status

    # -- Supervision ------------------------------------------------------------------------------------------------

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as error:
            return f"(cannot read the log: {error})"

    def _argv(self) -> List[str]:
        return [
            self._binary,
            "serve",
            "--node-id",
            self._node_id,
            "--listen",
            f"[{self._host}]:{self._port}" if ":" in self._host else f"{self._host}:{self._port}",
            "--token-file",
            str(self._token_file),
            "--trajectory-dir",
            str(self.dir / "trajectories"),
            *self._serve_args,
        ]

    def _spawn(self) -> _Start:
        argv = self._argv()
        self._log.write(f"=== swe-env.ray: starting (restart {self._restarts}): {' '.join(argv)}\n")
        env = dict(os.environ)
        env.pop("SWE_ENV_TOKEN", None)
        env.setdefault("RUST_LOG", "info")
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            text=True,
            bufsize=1,
            start_new_session=True,
            preexec_fn=self._preexec,
        )
        start = _Start(process)
        reader = threading.Thread(
            target=self._read_stdout, args=(start,), name=f"swe-env-stdout-{self._node_id}", daemon=True
        )
        reader.start()
        return start

    def _read_stdout(self, start: _Start) -> None:
        """Copies the server's stdout to the log, noting its address, node id and owner lines."""
        stream = start.process.stdout
        assert stream is not None
        for line in stream:
            self._log.write(line)
            text = line.strip()
            if text.startswith("listening tcp "):
                start.address = text[len("listening tcp ") :]
            elif text.startswith("node "):
                start.node_id = text[len("node ") :]
            elif text.startswith("owner "):
                start.owner = text[len("owner ") :]
                start.ready.set()
        start.ready.set()  # EOF: the process is exiting; the supervisor reads its status

    def _supervise(self) -> None:
        backoff = BACKOFF_INITIAL
        while not self._stopping.is_set():
            with self._lock:  # stop() sets _stopping, then takes the lock: it sees this start or none is made
                if self._stopping.is_set():
                    return
                try:
                    start = self._spawn()
                except OSError as error:
                    self._failure = f"cannot run {self._binary}: {error}"
                    self._first_ready.set()
                    return
                self._current = start
            start.ready.wait()
            if start.owner is not None and start.address is not None:
                with self._lock:
                    self._owners.append(start.owner)
                    if self._address is None:
                        self._address = start.address
                        self._port = int(start.address.rsplit(":", 1)[1])
                self._first_ready.set()
                log.info(
                    "swe-env serve on node %s ready at %s (pid %d)", self._node_id, start.address, start.process.pid
                )
            status = start.process.wait()
            with self._lock:
                self._last_exit = status
            if self._stopping.is_set():
                return
            if not self._first_ready.is_set():
                # The first start failed: nothing to keep alive; wait_ready reports it.
                self._record_failure(
                    f"swe-env serve on node {self._node_id} exited with status {status} before printing its "
                    f"address; log {self.log_path}:\n{self._log_tail()}"
                )
                return
            if time.monotonic() - start.started_at >= _STABLE_SECS:
                backoff = BACKOFF_INITIAL
            log.warning(
                "swe-env serve on node %s exited with status %s; restarting in %.1f s", self._node_id, status, backoff
            )
            self._log.write(f"=== swe-env.ray: exited with status {status}; restarting in {backoff:.1f} s\n")
            if self._stopping.wait(backoff):
                return
            backoff = min(BACKOFF_MAX, backoff * 2)
            with self._lock:
                self._restarts += 1

    def _record_failure(self, message: str) -> None:
        with self._lock:
            self._failure = message
        self._first_ready.set()


#: The Ray actor: one per Ray node, taking no CPU (the server's work runs in its containers). Threaded, so
#: ``info``/``pid`` answer while a ``stop`` drains.
NodeServer: Any = ray.remote(num_cpus=0, max_concurrency=8)(ServeSupervisor)  # type: ignore[call-overload]


def _alive_ray_nodes() -> List[str]:
    return [node["NodeID"] for node in ray.nodes() if node.get("Alive")]


class EnvPool:
    """One supervised ``swe-env serve`` per Ray node and a fleet client over them.

    ``serve_args``: extra ``swe-env serve`` arguments for every node (``["--tasks", FILE, "--max-episodes", "64"]``).
    ``token``: the servers' bearer token (default: a fresh random one, in :attr:`token`). ``nodes``: Ray node ids
    (default: every alive node). ``binary`` / ``workdir``: see :class:`ServeSupervisor` (resolved on each node).
    ``client_options``: keyword arguments of :class:`swe_env.Client`. ``start_timeout``: seconds to wait for every
    server's address. Starts Ray (``ray.init()``) when it is not running yet.
    """

    def __init__(
        self,
        serve_args: Sequence[str] = (),
        token: Optional[str] = None,
        nodes: Optional[Sequence[str]] = None,
        binary: Optional[str] = None,
        workdir: Optional[str] = None,
        *,
        client_options: Optional[Dict[str, Any]] = None,
        start_timeout: float = 120.0,
    ) -> None:
        if not ray.is_initialized():
            ray.init()
        self.token = token or secrets.token_hex(24)
        ray_nodes = list(nodes) if nodes is not None else _alive_ray_nodes()
        if not ray_nodes:
            raise ValueError("no Ray node to run swe-env serve on")
        self._actors: Dict[str, Any] = {}
        self._infos: Dict[str, Dict[str, Any]] = {}
        self._closed = False
        self.client: Optional[Client] = None
        actors = [
            NodeServer.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=ray_node, soft=False),
            ).remote(self.token, list(serve_args), binary=binary, workdir=workdir)
            for ray_node in ray_nodes
        ]
        try:
            infos = ray.get([actor.wait_ready.remote(start_timeout) for actor in actors])
        except Exception:
            self._actors = {str(i): actor for i, actor in enumerate(actors)}
            self.shutdown(grace_secs=10)
            raise
        for actor, info in zip(actors, infos):
            self._actors[info["node_id"]] = actor
            self._infos[info["node_id"]] = info
        self.client = Client(self.addresses(), self.token, **(client_options or {}))

    def __enter__(self) -> "EnvPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def addresses(self) -> List[str]:
        """Every server's ``host:port`` (stable across restarts), in node order."""
        return [info["address"] for info in self._infos.values()]

    def nodes(self) -> List[str]:
        """The swe-env node ids (episode ids start with one of them and a ``.``)."""
        return list(self._infos)

    def actor(self, node_id: str) -> Any:
        """The :data:`NodeServer` actor of a node."""
        return self._actors[node_id]

    def infos(self) -> Dict[str, Dict[str, Any]]:
        """Each node's :meth:`ServeSupervisor.info`, asked now."""
        nodes = list(self._actors)
        return dict(zip(nodes, ray.get([self._actors[n].info.remote() for n in nodes])))

    def restart_counts(self) -> Dict[str, int]:
        """How often each node's server was restarted after exiting."""
        return {node: info["restarts"] for node, info in self.infos().items()}

    def episode(self, task_id: Optional[str] = None, **kwargs: Any) -> Episode:
        """An episode on the node with the most free slots (``with pool.episode(task) as ep: ...``)."""
        if self.client is None:
            raise RuntimeError("the pool is shut down")
        return self.client.episode(task_id, **kwargs)

    def shutdown(self, grace_secs: float = 60.0) -> None:
        """Closes the client and stops every server (their drain removes their containers), then the actors.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.client is not None:
            self.client.close()
            self.client = None
        actors = list(self._actors.values())
        try:
            ray.get([actor.stop.remote(grace_secs) for actor in actors])
        finally:
            for actor in actors:
                ray.kill(actor)
