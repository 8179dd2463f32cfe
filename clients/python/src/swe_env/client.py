"""The synchronous client: :class:`Client` and its :class:`Episode` context manager."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import grpc

from . import _core, _fleet, errors, render
from ._core import MessageOrMapping, RetryPolicy, ToolFormatLike
from .v1 import env_pb2, env_pb2_grpc

log = logging.getLogger("swe_env")
T = TypeVar("T")


class Client:
    """A connection to one swe-env server, or to a fleet of them.

    ``address``: ``host:port`` (TCP) or ``unix:/path/to.sock`` (or an absolute socket path) — one server, every
    call goes to it. A list of addresses (even of one DNS name, e.g. a Kubernetes headless Service), or one string
    with several comma-separated addresses, makes a fleet client: names are resolved to all their addresses at each
    refresh, CreateEpisode goes to the node with the most free slots (GetCapacity, cached ``refresh_secs``), every
    later call for an episode to the node its id names; a call whose node is unreachable raises
    :class:`errors.NodeUnavailable` at once. ``token``: the server's bearer token (None when it runs without one).
    ``timeout``: the default per-call deadline in seconds (None: no deadline; a Step that grades on submit takes as
    long as the task's tests). ``retry``: see :class:`RetryPolicy`. ``probe_timeout``: the deadline of capacity
    reports and of the probe of a node that failed a call. Thread-safe: one client serves every thread of a
    process.
    """

    def __init__(
        self,
        address: Union[str, Sequence[str]],
        token: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
        retry: RetryPolicy = RetryPolicy(),
        options: Sequence[tuple] = (),
        refresh_secs: float = _fleet.REFRESH_SECS,
        probe_timeout: float = _fleet.PROBE_TIMEOUT_SECS,
        resolve: _fleet.Resolver = _core.resolve,
    ) -> None:
        addresses = _fleet.split_addresses(address)
        self.addresses = addresses
        self.address = address if isinstance(address, str) else ",".join(addresses)
        #: True when given several addresses (or a list): placement over nodes instead of one server.
        self.is_fleet = not isinstance(address, str) or len(addresses) > 1
        self._options = list(options)
        self._metadata = _core.auth_metadata(token)
        self._timeout = timeout
        self._retry = retry
        self._probe_timeout = probe_timeout
        self._resolve = resolve
        self._lock = threading.Lock()  # the fleet's state and the channels
        self._refresh_lock = threading.Lock()  # one refresh at a time
        self._channels: Dict[str, Tuple[grpc.Channel, env_pb2_grpc.EnvServiceStub]] = {}
        self._targets = [_core.grpc_target(a)[0] for a in addresses]
        self._fleet = _fleet.Fleet(refresh_secs)
        self._resolve_failures: Dict[str, str] = {}
        self._stub_default: Optional[env_pb2_grpc.EnvServiceStub] = None
        if not self.is_fleet:
            self._channel, self._stub_default = self._channel_for(addresses[0])

    @classmethod
    def from_env(cls, **kwargs: Any) -> "Client":
        """A client for ``$SWE_ENV_ADDRESS`` (several comma-separated addresses: a fleet) with the token
        ``$SWE_ENV_TOKEN`` (if set)."""
        address = os.environ.get("SWE_ENV_ADDRESS")
        if not address:
            raise ValueError("SWE_ENV_ADDRESS is not set: export it as host:port or unix:/path/to/swe-env.sock")
        return cls(address, os.environ.get("SWE_ENV_TOKEN"), **kwargs)

    def close(self) -> None:
        """Closes the channels."""
        with self._lock:
            channels = [channel for channel, _ in self._channels.values()]
            self._channels.clear()
        for channel in channels:
            channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- The one place a call picks its channel. -------------------------------------------------------------------

    def _channel_for(self, address: str) -> Tuple[grpc.Channel, env_pb2_grpc.EnvServiceStub]:
        with self._lock:
            found = self._channels.get(address)
            if found is None:
                target, options = _core.channel_options(address, self._options)
                channel = grpc.insecure_channel(target, options=options)
                found = self._channels[address] = (channel, env_pb2_grpc.EnvServiceStub(channel))
            return found

    def _stub(
        self,
        *,
        task_id: Optional[str] = None,
        episode_id: Optional[str] = None,
        method: str = "",
        request_id: Optional[str] = None,
    ) -> env_pb2_grpc.EnvServiceStub:
        """The stub a call about ``episode_id`` goes to: the node the id names (a fleet), else the server. Calls
        about no episode (tasks, grading, warm pools) go to the node with the most free slots."""
        del task_id
        if self._stub_default is not None:
            return self._stub_default
        if episode_id is not None:
            return self._channel_for(self._owner(episode_id, method, request_id).address)[1]
        return self._channel_for(self._any_node().address)[1]

    def nodes(self) -> List[_fleet.NodeView]:
        """The current view of the fleet: per node its id, address, free-slot estimate, draining, down (refreshed
        first when older than ``refresh_secs``). A single-server client shows its one address."""
        if not self.is_fleet:
            return [_fleet.NodeView("", self.address, 0, 0, False, False, "", 0)]
        self._refresh()
        with self._lock:
            return self._fleet.view()

    def _refresh(self, force: bool = False) -> None:
        """Resolves the names and asks every node for its capacity (concurrently, ``probe_timeout`` each; a node
        already down only every ``DOWN_REPROBE_SECS``, with a short deadline) when the reports are older than
        ``refresh_secs`` (or ``force``)."""
        asked = time.monotonic()
        with self._refresh_lock:
            with self._lock:
                if self._fleet.fresher_than(asked) or (not force and not self._fleet.stale(time.monotonic())):
                    return  # a refresh that began after this call asked has just finished: its answers are as new
            addresses, self._resolve_failures = _fleet.expand(self._targets, self._resolve)
            for target, why in self._resolve_failures.items():
                log.warning("fleet address %s: %s", target, why)
            now = time.monotonic()
            with self._lock:
                deadlines = {a: self._fleet.probe_timeout(a, now, self._probe_timeout) for a in addresses}
                before = {n.address: n.down for n in self._fleet.nodes}
            futures = {
                address: self._channel_for(address)[1].GetCapacity.future(
                    env_pb2.GetCapacityRequest(), timeout=deadline, metadata=self._metadata
                )
                for address, deadline in deadlines.items()
                if deadline is not None
            }
            reports: Dict[str, Any] = {}
            for address, future in futures.items():
                try:
                    reports[address] = future.result()
                except grpc.RpcError as error:
                    reports[address] = _core.capacity_failure(error)
            with self._lock:
                self._fleet.apply(addresses, reports, time.monotonic())
                _fleet.log_changes(before, self._fleet.nodes)

    def _any_node(self) -> _fleet.Node:
        """A node for a call about no episode: the most free slots, else any answering node."""
        self._refresh()
        with self._lock:
            node = self._fleet.choose() or next((n for n in self._fleet.nodes if not n.down), None)
            if node is None:
                raise self._fleet.no_node_error(self._resolve_failures, "no node of the fleet answers")
            return node

    def _owner(self, episode_id: str, method: str = "", request_id: Optional[str] = None) -> _fleet.Node:
        """The node holding ``episode_id``; raises Unavailable when it is not among the nodes and NodeUnavailable
        when a probe found it unreachable (after a refresh, when the view is older than ``refresh_secs``)."""
        bad = _fleet.unroutable(episode_id)
        if bad is not None:
            bad.method, bad.request_id = method, request_id
            raise bad
        node_id = _fleet.node_of(episode_id) or ""
        for attempt in range(2):
            with self._lock:
                node = self._fleet.find(node_id)
                stale = self._fleet.stale(time.monotonic())
            if node is not None and (not self._fleet.fails_fast(node) or not stale or attempt == 1):
                break
            self._refresh(force=True)
        if node is None:
            with self._lock:
                message = _fleet.unknown_node_message(episode_id, node_id, self._fleet)
            raise errors.Unavailable(grpc.StatusCode.UNAVAILABLE, message, method=method, request_id=request_id)
        if self._fleet.fails_fast(node):
            raise _fleet.lost_error(episode_id, node, method, request_id)
        return node

    def _probe(self, node: _fleet.Node) -> Optional[_fleet.Failure]:
        """One quick GetCapacity of a node whose call failed UNAVAILABLE: None when it answered (its report is
        taken: a draining node is marked draining, not down), else why not (the node is marked down)."""
        stub = self._channel_for(node.address)[1]
        try:
            report = stub.GetCapacity(env_pb2.GetCapacityRequest(), timeout=self._probe_timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            failure = _core.capacity_failure(error)
            with self._lock:
                was_down = node.down
                self._fleet.mark_down(node, failure, time.monotonic())
            if not was_down:
                log.warning("fleet node %s at %s is down: %s", node.node_id or "?", node.address, failure)
            return failure
        with self._lock:
            self._fleet.update(node, report)
        return None

    def _call(
        self,
        method: str,
        invoke: Callable[..., T],
        request: Any,
        *,
        timeout: Optional[float] = None,
        retry: bool = True,
        request_id: Optional[str] = None,
        episode_id: Optional[str] = None,
    ) -> T:
        """Runs ``invoke(request, timeout=, metadata=)``; RESOURCE_EXHAUSTED / UNAVAILABLE are retried per the
        policy, every failure is raised as a :class:`errors.SweEnvError`. A fleet call about ``episode_id`` that
        fails UNAVAILABLE probes its node once: an unreachable node raises :class:`errors.NodeUnavailable` at once."""
        deadline = self._timeout if timeout is None else timeout
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            try:
                return invoke(request, timeout=deadline, metadata=self._metadata)
            except grpc.RpcError as rpc_error:
                error = errors.from_rpc_error(rpc_error, method=method, request_id=request_id)
            if self.is_fleet and episode_id is not None and error.code == grpc.StatusCode.UNAVAILABLE:
                node = self._owner(episode_id, method, request_id)
                failure = self._probe(node)
                if failure is not None:
                    if failure.unreachable:
                        raise _fleet.lost_error(episode_id, node, method, request_id) from error
                    raise error  # it answers, but refuses this client (e.g. its token): not lost
            if not retry or error.code not in errors.RETRYABLE or attempt >= self._retry.max_attempts:
                raise error
            delay = self._retry.delay(attempt, error.retry_after)
            if waited + delay > self._retry.max_total_wait:
                raise error
            log.info("retrying %s (attempt %d) in %.3f s: %s", method, attempt + 1, delay, error.message)
            time.sleep(delay)
            waited += delay

    def _place(self, request: env_pb2.CreateEpisodeRequest, timeout: Optional[float]) -> env_pb2.CreateEpisodeResponse:
        """CreateEpisode on a fleet: the node with the most free slots; RESOURCE_EXHAUSTED from it → the next;
        UNAVAILABLE → a probe (answering: draining, or no slot this round; not answering: down), then the next;
        none free → wait the largest hint (else ``refresh_secs``: every estimate is 0, so re-ask every node),
        refresh, again, until the create deadline (``timeout``, else the policy's ``max_total_wait``; the last wait
        is cut to what is left, then one more round) or ``max_attempts`` rounds in which creates were refused."""
        call_deadline = self._timeout if timeout is None else timeout
        budget = self._retry.max_total_wait if timeout is None else timeout
        started = time.monotonic()
        refused_rounds = 0
        force = False
        while True:
            self._refresh(force=force)
            tried: set = set()
            hint: Optional[float] = None
            last: Optional[errors.SweEnvError] = None
            while True:
                with self._lock:
                    node = self._fleet.choose(tried)
                    if node is None:
                        break
                    self._fleet.placed(node)
                tried.add(node.address)
                stub = self._channel_for(node.address)[1]
                try:
                    return stub.CreateEpisode(request, timeout=call_deadline, metadata=self._metadata)
                except grpc.RpcError as rpc_error:
                    error = errors.from_rpc_error(rpc_error, method="CreateEpisode")
                with self._lock:
                    self._fleet.unplaced(node)
                if error.code == grpc.StatusCode.UNAVAILABLE:
                    # Draining (it answers GetCapacity) or gone (it does not): only a failed probe marks it down.
                    if self._probe(node) is None:
                        with self._lock:
                            self._fleet.exhausted(node)
                elif error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    with self._lock:
                        self._fleet.exhausted(node)
                else:
                    raise error
                last = error
                if error.retry_after is not None:
                    hint = max(hint or 0.0, error.retry_after)
            with self._lock:
                failure = _fleet.placement_failure(self._fleet, self._resolve_failures, last)
            if failure.code not in errors.RETRYABLE:
                raise failure  # every node refuses this client (e.g. a wrong token): waiting will not help
            refused_rounds += last is not None
            remaining = budget - (time.monotonic() - started)
            if refused_rounds >= self._retry.max_attempts or remaining <= 0:
                raise failure
            delay = _fleet.round_wait(self._retry, hint, self._fleet.refresh_secs, remaining)
            log.info("retrying CreateEpisode in %.3f s: %s", delay, failure.message)
            time.sleep(delay)
            force = True

    # -- Tasks -----------------------------------------------------------------------------------------------------

    def list_tasks(self, *, repo: str = "", include_rows: bool = False, page_size: int = 0) -> List[env_pb2.Task]:
        """Every task the server loaded (all pages), optionally only ``repo``'s."""
        tasks: List[env_pb2.Task] = []
        token = ""
        while True:
            request = env_pb2.ListTasksRequest(page_size=page_size, page_token=token, repo=repo, include_rows=include_rows)
            page = self._call("ListTasks", self._stub().ListTasks, request)
            tasks.extend(page.tasks)
            token = page.next_page_token
            if not token:
                return tasks

    def prewarm(
        self,
        task_id: Optional[str] = None,
        count: int = 1,
        *,
        task: Optional[Mapping[str, Any]] = None,
        wait: bool = False,
        wait_timeout: Optional[float] = None,
        image: str = "",
    ) -> env_pb2.PrewarmResponse:
        """Keeps ``count`` containers of the task ready so the next ``count`` episodes of it start warm (K rollouts
        of one task: ``prewarm(task, K, wait=True)``, then K episodes)."""
        request = _core.prewarm_request(task_id, task, count, wait, wait_timeout, image)
        return self._call("Prewarm", self._stub(task_id=task_id).Prewarm, request)

    # -- Episodes --------------------------------------------------------------------------------------------------

    def create_episode(
        self,
        task_id: Optional[str] = None,
        *,
        task: Optional[Mapping[str, Any]] = None,
        image: str = "",
        tool_format: ToolFormatLike = "text",
        max_turns: Optional[int] = None,
        budgets: Optional[MessageOrMapping] = None,
        limits: Optional[MessageOrMapping] = None,
        labels: Optional[Mapping[str, str]] = None,
        prompt: Optional[Sequence[Mapping[str, str]]] = None,
        model: Optional[Mapping[str, Any]] = None,
        grade_on_submit: bool = False,
        timeout: Optional[float] = None,
    ) -> env_pb2.CreateEpisodeResponse:
        """Starts an episode and returns what the agent is given (prefer :meth:`episode`, which closes it).

        ``budgets`` / ``limits``: ``env_pb2.Budgets`` / ``env_pb2.Limits`` or mappings of their fields
        (``max_turns`` is a shortcut). ``prompt``: the initial ``{role, content}`` messages your model sees,
        recorded in the trajectory (default: the server's tool specs and the issue). ``model``: model and
        sampling parameters recorded with it. Retried while the server answers RESOURCE_EXHAUSTED (at capacity)."""
        request = _core.create_request(
            task_id,
            task=task,
            image=image,
            tool_format_=tool_format,
            budgets=budgets,
            limits=limits,
            max_turns=max_turns,
            labels=labels,
            prompt=prompt,
            model=model,
            grade_on_submit=grade_on_submit,
        )
        if self.is_fleet:
            return self._place(request, timeout)
        return self._call("CreateEpisode", self._stub(task_id=task_id).CreateEpisode, request, timeout=timeout)

    def episode(self, task_id: Optional[str] = None, **kwargs: Any) -> "Episode":
        """Creates an episode (arguments as :meth:`create_episode`) as a context manager that closes it:
        ``with client.episode(task_id) as ep: obs = ep.step(text)``."""
        prompt = kwargs.get("prompt") or ()
        created = self.create_episode(task_id, **kwargs)
        return Episode(self, created, prompt)

    def step(
        self,
        episode_id: str,
        text: Optional[str] = None,
        *,
        tool_call: Optional[MessageOrMapping] = None,
        request_id: Optional[str] = None,
        model_turn: Optional[MessageOrMapping] = None,
        timeout: Optional[float] = None,
    ) -> env_pb2.StepResponse:
        """Runs one action: ``text`` (model text with a ``<tool: NAME>`` call) or ``tool_call``
        (``{"name", "arguments", "call_id"}`` or ``env_pb2.ToolCall``). A fresh ``request_id`` is generated when
        none is given; retries reuse it, so the action runs at most once. When the call fails after the action
        may have run (e.g. :class:`errors.DeadlineExceeded`), the error carries ``request_id``: step again with it
        to get the stored outcome (``replayed``) instead of running the action twice."""
        return self._step(episode_id, text, tool_call, request_id, model_turn, timeout)[1]

    def _step(self, episode_id, text, tool_call, request_id, model_turn, timeout):
        rid = request_id or _core.new_request_id()
        request = _core.step_request(episode_id, text, tool_call, rid, model_turn)
        stub = self._stub(episode_id=episode_id, method="Step", request_id=rid)
        return request, self._call("Step", stub.Step, request, timeout=timeout, request_id=rid, episode_id=episode_id)

    def close_episode(self, episode_id: str, final_answer: str = "") -> env_pb2.EpisodeInfo:
        """Ends an episode (removes its container); closing an ended episode returns it as it ended."""
        request = env_pb2.CloseEpisodeRequest(episode_id=episode_id, final_answer=final_answer)
        stub = self._stub(episode_id=episode_id, method="CloseEpisode")
        closed = self._call("CloseEpisode", stub.CloseEpisode, request, episode_id=episode_id).episode
        if self.is_fleet:
            with self._lock:
                self._fleet.closed(_fleet.node_of(episode_id))
        return closed

    def list_episodes(self, *, include_ended: bool = False, page_size: int = 0) -> List[env_pb2.EpisodeInfo]:
        """The episodes the server knows (all pages), newest first; a fleet client: every answering node's, node
        after node."""
        if self._stub_default is not None:
            stubs = [self._stub_default]
        else:
            self._refresh()
            with self._lock:
                addresses = [n.address for n in self._fleet.nodes if not n.down]
            stubs = [self._channel_for(address)[1] for address in addresses]
        episodes: List[env_pb2.EpisodeInfo] = []
        for stub in stubs:
            token = ""
            while True:
                request = env_pb2.ListEpisodesRequest(page_size=page_size, page_token=token, include_ended=include_ended)
                page = self._call("ListEpisodes", stub.ListEpisodes, request)
                episodes.extend(page.episodes)
                token = page.next_page_token
                if not token:
                    break
        return episodes

    def trajectory(self, episode_id: str) -> List[Dict[str, Any]]:
        """The episode's trajectory records (dicts in the trajectory file's schema)."""
        stub = self._stub(episode_id=episode_id, method="GetTrajectory")
        return self._call(
            "GetTrajectory",
            lambda request, **kw: _core.parse_records(stub.GetTrajectory(request, **kw)),
            _core.trajectory_request(episode_id),
            episode_id=episode_id,
        )

    def submission(self, episode_id: str) -> env_pb2.GetSubmissionResponse:
        """The episode's last accepted submission (the patch)."""
        request = env_pb2.GetSubmissionRequest(episode_id=episode_id)
        return self._call("GetSubmission", self._stub(episode_id=episode_id, method="GetSubmission").GetSubmission, request, episode_id=episode_id)

    # -- Grading ---------------------------------------------------------------------------------------------------

    def grade(
        self,
        task_id: Optional[str] = None,
        patch: str = "",
        *,
        task: Optional[Mapping[str, Any]] = None,
        image: str = "",
        rules: str = "",
        timeout: Optional[float] = None,
    ) -> env_pb2.GradeResponse:
        """Grades ``patch`` for a task in a fresh container: ``resolved``, the report and the ``rewards``."""
        request = _core.grade_request(task_id, task, patch, image, rules)
        return self._call("Grade", self._stub(task_id=task_id).Grade, request, timeout=timeout)

    def check_test(
        self,
        task_id: Optional[str] = None,
        script: str = "",
        *,
        task: Optional[Mapping[str, Any]] = None,
        patch: str = "",
        image: str = "",
        timeout_secs: int = 0,
        timeout: Optional[float] = None,
    ) -> env_pb2.CheckTestResponse:
        """Checks a generated reproduction test (validity without ``patch``; against a candidate with one)."""
        request = _core.check_test_request(task_id, task, script, patch, image, timeout_secs)
        return self._call("CheckTest", self._stub(task_id=task_id).CheckTest, request, timeout=timeout)

    def run_episode(self, request: env_pb2.RunEpisodeRequest, *, timeout: Optional[float] = None) -> Iterator[env_pb2.RunEpisodeEvent]:
        """A server-driven episode: its events as they come (started, each step, the result). Not retried."""
        stub = self._stub(task_id=request.episode.task_id or None)
        try:
            for event in stub.RunEpisode(request, timeout=timeout or self._timeout, metadata=self._metadata):
                yield event
        except grpc.RpcError as rpc_error:
            raise errors.from_rpc_error(rpc_error, method="RunEpisode") from None


class Episode:
    """A live episode (from :meth:`Client.episode`); closed when the ``with`` block ends.

    ``info`` is the CreateEpisodeResponse (issue text, tool specs, budget, ``warm``); ``records`` the episode as
    this client saw it, in the trajectory schema, so :meth:`messages` and :meth:`cwm_prompt` give the next model
    call's input without a round trip."""

    def __init__(self, client: Client, created: env_pb2.CreateEpisodeResponse, prompt: Sequence[Mapping[str, str]]) -> None:
        self.client = client
        self.info = created
        self.id = created.episode_id
        self._conversation = _core.Conversation(created, prompt)
        self.done = False
        self.submitted = False
        self.reward: Optional[float] = None
        self.closed: Optional[env_pb2.EpisodeInfo] = None

    def __enter__(self) -> "Episode":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.closed is not None:
            return
        try:
            self.close()
        except errors.SweEnvError:
            if exc_type is None:
                raise
            log.warning("closing episode %s after an error failed", self.id, exc_info=True)

    @property
    def records(self) -> List[Dict[str, Any]]:
        return self._conversation.records

    def step(
        self,
        text: Optional[str] = None,
        *,
        tool_call: Optional[MessageOrMapping] = None,
        request_id: Optional[str] = None,
        model_turn: Optional[MessageOrMapping] = None,
        timeout: Optional[float] = None,
    ) -> env_pb2.StepResponse:
        """Runs one action (see :meth:`Client.step`) and returns the StepResponse (``observation.text`` is what
        the model sees next; ``done`` when the server ended the episode)."""
        request, response = self.client._step(self.id, text, tool_call, request_id, model_turn, timeout)
        self._conversation.add_step(request, response)
        self.done = self.done or response.done
        self.submitted = self.submitted or response.submitted
        if response.HasField("reward"):
            self.reward = response.reward
        return response

    def close(self, final_answer: str = "") -> env_pb2.EpisodeInfo:
        """Ends the episode (idempotent)."""
        if self.closed is None:
            self.closed = self.client.close_episode(self.id, final_answer)
            self._conversation.end(final_answer)
        return self.closed

    def trajectory(self) -> List[Dict[str, Any]]:
        """The server's records of this episode."""
        return self.client.trajectory(self.id)

    def submission(self) -> str:
        """The last accepted submission (patch), empty when none."""
        return self.client.submission(self.id).submission

    def grade(self, *, rules: str = "", timeout: Optional[float] = None) -> env_pb2.GradeResponse:
        """Grades this episode's last submission on its task in a fresh container."""
        return self.client.grade(self.info.instance_id, self.submission(), rules=rules, timeout=timeout)

    def messages(self, format: str = "cwm") -> List[Dict[str, Any]]:
        """The conversation so far: ``"cwm"`` (:func:`render.cwm_messages`) or ``"openai"``
        (:func:`render.openai_messages`)."""
        if format == "cwm":
            return render.cwm_messages(self.records)
        if format == "openai":
            return render.openai_messages(self.records)
        raise ValueError(f"format {format!r}: use 'cwm' or 'openai'")

    def cwm_prompt(self, layout: render.CwmLayout = render.CwmLayout()) -> str:
        """The CWM transcript of the conversation so far, ending with an open assistant turn."""
        return render.cwm_prompt(self.messages("cwm"), layout)
