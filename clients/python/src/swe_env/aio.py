"""The asyncio client: :class:`AsyncClient` and :class:`AsyncEpisode`, the same surface as the sync client on
``grpc.aio``. Every episode is a coroutine on one channel, so a trainer runs thousands of episodes concurrently from
one thread (``asyncio.gather`` over rollouts) with no thread per episode."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import grpc
import grpc.aio

from . import _core, _fleet, errors, render
from ._core import MessageOrMapping, RetryPolicy, ToolFormatLike
from .v1 import env_pb2, env_pb2_grpc

log = logging.getLogger("swe_env")
T = TypeVar("T")


class AsyncClient:
    """A ``grpc.aio`` connection to one swe-env server or a fleet (arguments as :class:`swe_env.Client`). Create
    it inside the event loop that uses it; ``async with AsyncClient(...) as client:`` closes it."""

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
        self.is_fleet = not isinstance(address, str) or len(addresses) > 1
        self._options = list(options)
        self._metadata = _core.auth_metadata(token)
        self._timeout = timeout
        self._retry = retry
        self._probe_timeout = probe_timeout
        self._resolve = resolve
        self._refresh_lock: Optional[asyncio.Lock] = None  # made in the loop, on first use
        self._channels: Dict[str, Tuple[grpc.aio.Channel, env_pb2_grpc.EnvServiceStub]] = {}
        self._targets = [_core.grpc_target(a)[0] for a in addresses]
        self._fleet = _fleet.Fleet(refresh_secs)
        self._resolve_failures: Dict[str, str] = {}
        self._stub_default: Optional[env_pb2_grpc.EnvServiceStub] = None
        if not self.is_fleet:
            self._channel, self._stub_default = self._channel_for(addresses[0])

    @classmethod
    def from_env(cls, **kwargs: Any) -> "AsyncClient":
        """A client for ``$SWE_ENV_ADDRESS`` (several comma-separated addresses: a fleet) with the token
        ``$SWE_ENV_TOKEN`` (if set)."""
        address = os.environ.get("SWE_ENV_ADDRESS")
        if not address:
            raise ValueError("SWE_ENV_ADDRESS is not set: export it as host:port or unix:/path/to/swe-env.sock")
        return cls(address, os.environ.get("SWE_ENV_TOKEN"), **kwargs)

    async def close(self) -> None:
        channels = [channel for channel, _ in self._channels.values()]
        self._channels.clear()
        for channel in channels:
            await channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _channel_for(self, address: str) -> Tuple[grpc.aio.Channel, env_pb2_grpc.EnvServiceStub]:
        found = self._channels.get(address)
        if found is None:
            target, options = _core.channel_options(address, self._options)
            channel = grpc.aio.insecure_channel(target, options=options)
            found = self._channels[address] = (channel, env_pb2_grpc.EnvServiceStub(channel))
        return found

    async def _stub(
        self,
        *,
        task_id: Optional[str] = None,
        episode_id: Optional[str] = None,
        method: str = "",
        request_id: Optional[str] = None,
    ) -> env_pb2_grpc.EnvServiceStub:
        """The one place a call picks its channel (see ``Client._stub``)."""
        del task_id
        if self._stub_default is not None:
            return self._stub_default
        if episode_id is not None:
            return self._channel_for((await self._owner(episode_id, method, request_id)).address)[1]
        return self._channel_for((await self._any_node()).address)[1]

    async def nodes(self) -> List[_fleet.NodeView]:
        """The current view of the fleet (see ``Client.nodes``)."""
        if not self.is_fleet:
            return [_fleet.NodeView("", self.address, 0, 0, False, False, "", 0)]
        await self._refresh()
        return self._fleet.view()

    async def _capacity(self, address: str, timeout: Optional[float] = None) -> Any:
        """The node's GetCapacityResponse, or a :class:`_fleet.Failure` saying why asking failed."""
        try:
            return await self._channel_for(address)[1].GetCapacity(
                env_pb2.GetCapacityRequest(),
                timeout=self._probe_timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            return _core.capacity_failure(error)

    async def _refresh(self, force: bool = False) -> None:
        """As ``Client._refresh``: names resolved in a thread, every due node asked concurrently."""
        asked = time.monotonic()
        if self._refresh_lock is None:
            self._refresh_lock = asyncio.Lock()
        async with self._refresh_lock:
            if self._fleet.fresher_than(asked) or (not force and not self._fleet.stale(time.monotonic())):
                return
            loop = asyncio.get_running_loop()
            addresses, self._resolve_failures = await loop.run_in_executor(
                None, _fleet.expand, self._targets, self._resolve
            )
            for target, why in self._resolve_failures.items():
                log.warning("fleet address %s: %s", target, why)
            now = time.monotonic()
            deadlines = {a: self._fleet.probe_timeout(a, now, self._probe_timeout) for a in addresses}
            asked_now = [a for a, deadline in deadlines.items() if deadline is not None]
            before = {n.address: n.down for n in self._fleet.nodes}
            answers = await asyncio.gather(*(self._capacity(a, deadlines[a]) for a in asked_now))
            self._fleet.apply(addresses, dict(zip(asked_now, answers)), time.monotonic())
            _fleet.log_changes(before, self._fleet.nodes)

    async def _any_node(self) -> _fleet.Node:
        await self._refresh()
        node = self._fleet.choose() or next((n for n in self._fleet.nodes if not n.down), None)
        if node is None:
            raise self._fleet.no_node_error(self._resolve_failures, "no node of the fleet answers")
        return node

    async def _owner(self, episode_id: str, method: str = "", request_id: Optional[str] = None) -> _fleet.Node:
        """As ``Client._owner``."""
        bad = _fleet.unroutable(episode_id)
        if bad is not None:
            bad.method, bad.request_id = method, request_id
            raise bad
        node_id = _fleet.node_of(episode_id) or ""
        for attempt in range(2):
            node = self._fleet.find(node_id)
            stale = self._fleet.stale(time.monotonic())
            if node is not None and (not self._fleet.fails_fast(node) or not stale or attempt == 1):
                break
            await self._refresh(force=True)
        if node is None:
            message = _fleet.unknown_node_message(episode_id, node_id, self._fleet)
            raise errors.Unavailable(grpc.StatusCode.UNAVAILABLE, message, method=method, request_id=request_id)
        if self._fleet.fails_fast(node):
            raise _fleet.lost_error(episode_id, node, method, request_id)
        return node

    async def _probe(self, node: _fleet.Node) -> Optional[_fleet.Failure]:
        """As ``Client._probe``."""
        answer = await self._capacity(node.address)
        if isinstance(answer, _fleet.Failure):
            if not node.down:
                log.warning("fleet node %s at %s is down: %s", node.node_id or "?", node.address, answer)
            self._fleet.mark_down(node, answer, time.monotonic())
            return answer
        self._fleet.update(node, answer)
        return None

    async def _call(
        self,
        method: str,
        invoke: Callable[..., Awaitable[T]],
        request: Any,
        *,
        timeout: Optional[float] = None,
        retry: bool = True,
        request_id: Optional[str] = None,
        episode_id: Optional[str] = None,
    ) -> T:
        """As ``Client._call``, waiting with ``asyncio.sleep``."""
        deadline = self._timeout if timeout is None else timeout
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            try:
                return await invoke(request, timeout=deadline, metadata=self._metadata)
            except grpc.RpcError as rpc_error:
                error = errors.from_rpc_error(rpc_error, method=method, request_id=request_id)
            if self.is_fleet and episode_id is not None and error.code == grpc.StatusCode.UNAVAILABLE:
                node = await self._owner(episode_id, method, request_id)
                failure = await self._probe(node)
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
            await asyncio.sleep(delay)
            waited += delay

    async def _place(self, request: env_pb2.CreateEpisodeRequest, timeout: Optional[float]) -> env_pb2.CreateEpisodeResponse:
        """As ``Client._place``."""
        call_deadline = self._timeout if timeout is None else timeout
        budget = self._retry.max_total_wait if timeout is None else timeout
        started = time.monotonic()
        refused_rounds = 0
        force = False
        while True:
            await self._refresh(force=force)
            tried: set = set()
            hint: Optional[float] = None
            last: Optional[errors.SweEnvError] = None
            while True:
                node = self._fleet.choose(tried)
                if node is None:
                    break
                self._fleet.placed(node)
                tried.add(node.address)
                stub = self._channel_for(node.address)[1]
                try:
                    return await stub.CreateEpisode(request, timeout=call_deadline, metadata=self._metadata)
                except grpc.RpcError as rpc_error:
                    error = errors.from_rpc_error(rpc_error, method="CreateEpisode")
                self._fleet.unplaced(node)
                if error.code == grpc.StatusCode.UNAVAILABLE:
                    if await self._probe(node) is None:
                        self._fleet.exhausted(node)
                elif error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self._fleet.exhausted(node)
                else:
                    raise error
                last = error
                if error.retry_after is not None:
                    hint = max(hint or 0.0, error.retry_after)
            failure = _fleet.placement_failure(self._fleet, self._resolve_failures, last)
            if failure.code not in errors.RETRYABLE:
                raise failure
            refused_rounds += last is not None
            remaining = budget - (time.monotonic() - started)
            if refused_rounds >= self._retry.max_attempts or remaining <= 0:
                raise failure
            delay = _fleet.round_wait(self._retry, hint, self._fleet.refresh_secs, remaining)
            log.info("retrying CreateEpisode in %.3f s: %s", delay, failure.message)
            await asyncio.sleep(delay)
            force = True

    async def list_tasks(self, *, repo: str = "", include_rows: bool = False, page_size: int = 0) -> List[env_pb2.Task]:
        tasks: List[env_pb2.Task] = []
        token = ""
        while True:
            request = env_pb2.ListTasksRequest(page_size=page_size, page_token=token, repo=repo, include_rows=include_rows)
            page = await self._call("ListTasks", (await self._stub()).ListTasks, request)
            tasks.extend(page.tasks)
            token = page.next_page_token
            if not token:
                return tasks

    async def prewarm(
        self,
        task_id: Optional[str] = None,
        count: int = 1,
        *,
        task: Optional[Mapping[str, Any]] = None,
        wait: bool = False,
        wait_timeout: Optional[float] = None,
        image: str = "",
    ) -> env_pb2.PrewarmResponse:
        request = _core.prewarm_request(task_id, task, count, wait, wait_timeout, image)
        return await self._call("Prewarm", (await self._stub(task_id=task_id)).Prewarm, request)

    async def create_episode(
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
            return await self._place(request, timeout)
        return await self._call("CreateEpisode", (await self._stub(task_id=task_id)).CreateEpisode, request, timeout=timeout)

    def episode(self, task_id: Optional[str] = None, **kwargs: Any) -> "_EpisodeStarter":
        """``async with client.episode(task_id, ...) as ep:`` creates the episode and closes it at the end."""
        return _EpisodeStarter(self, task_id, kwargs)

    async def step(
        self,
        episode_id: str,
        text: Optional[str] = None,
        *,
        tool_call: Optional[MessageOrMapping] = None,
        request_id: Optional[str] = None,
        model_turn: Optional[MessageOrMapping] = None,
        timeout: Optional[float] = None,
    ) -> env_pb2.StepResponse:
        return (await self._step(episode_id, text, tool_call, request_id, model_turn, timeout))[1]

    async def _step(self, episode_id, text, tool_call, request_id, model_turn, timeout):
        rid = request_id or _core.new_request_id()
        request = _core.step_request(episode_id, text, tool_call, rid, model_turn)
        stub = await self._stub(episode_id=episode_id, method="Step", request_id=rid)
        return request, await self._call("Step", stub.Step, request, timeout=timeout, request_id=rid, episode_id=episode_id)

    async def close_episode(self, episode_id: str, final_answer: str = "") -> env_pb2.EpisodeInfo:
        request = env_pb2.CloseEpisodeRequest(episode_id=episode_id, final_answer=final_answer)
        stub = await self._stub(episode_id=episode_id, method="CloseEpisode")
        closed = (await self._call("CloseEpisode", stub.CloseEpisode, request, episode_id=episode_id)).episode
        if self.is_fleet:
            self._fleet.closed(_fleet.node_of(episode_id))
        return closed

    async def list_episodes(self, *, include_ended: bool = False, page_size: int = 0) -> List[env_pb2.EpisodeInfo]:
        """As ``Client.list_episodes`` (a fleet: every answering node's)."""
        if self._stub_default is not None:
            stubs = [self._stub_default]
        else:
            await self._refresh()
            stubs = [self._channel_for(n.address)[1] for n in self._fleet.nodes if not n.down]
        episodes: List[env_pb2.EpisodeInfo] = []
        for stub in stubs:
            token = ""
            while True:
                request = env_pb2.ListEpisodesRequest(page_size=page_size, page_token=token, include_ended=include_ended)
                page = await self._call("ListEpisodes", stub.ListEpisodes, request)
                episodes.extend(page.episodes)
                token = page.next_page_token
                if not token:
                    break
        return episodes

    async def trajectory(self, episode_id: str) -> List[Dict[str, Any]]:
        stub = await self._stub(episode_id=episode_id, method="GetTrajectory")

        async def invoke(request: env_pb2.GetTrajectoryRequest, **kw: Any) -> List[Dict[str, Any]]:
            return _core.parse_records([record async for record in stub.GetTrajectory(request, **kw)])

        return await self._call("GetTrajectory", invoke, _core.trajectory_request(episode_id), episode_id=episode_id)

    async def submission(self, episode_id: str) -> env_pb2.GetSubmissionResponse:
        request = env_pb2.GetSubmissionRequest(episode_id=episode_id)
        stub = await self._stub(episode_id=episode_id, method="GetSubmission")
        return await self._call("GetSubmission", stub.GetSubmission, request, episode_id=episode_id)

    async def grade(
        self,
        task_id: Optional[str] = None,
        patch: str = "",
        *,
        task: Optional[Mapping[str, Any]] = None,
        image: str = "",
        rules: str = "",
        timeout: Optional[float] = None,
    ) -> env_pb2.GradeResponse:
        request = _core.grade_request(task_id, task, patch, image, rules)
        return await self._call("Grade", (await self._stub(task_id=task_id)).Grade, request, timeout=timeout)

    async def check_test(
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
        request = _core.check_test_request(task_id, task, script, patch, image, timeout_secs)
        return await self._call("CheckTest", (await self._stub(task_id=task_id)).CheckTest, request, timeout=timeout)

    async def run_episode(
        self, request: env_pb2.RunEpisodeRequest, *, timeout: Optional[float] = None
    ) -> AsyncIterator[env_pb2.RunEpisodeEvent]:
        stub = await self._stub(task_id=request.episode.task_id or None)
        try:
            async for event in stub.RunEpisode(request, timeout=timeout or self._timeout, metadata=self._metadata):
                yield event
        except grpc.RpcError as rpc_error:
            raise errors.from_rpc_error(rpc_error, method="RunEpisode") from None


class _EpisodeStarter:
    """``client.episode(...)``: awaitable (``ep = await client.episode(...)``) and an async context manager."""

    def __init__(self, client: AsyncClient, task_id: Optional[str], kwargs: Dict[str, Any]) -> None:
        self._client, self._task_id, self._kwargs = client, task_id, kwargs
        self._episode: Optional[AsyncEpisode] = None

    async def _start(self) -> "AsyncEpisode":
        created = await self._client.create_episode(self._task_id, **self._kwargs)
        return AsyncEpisode(self._client, created, self._kwargs.get("prompt") or ())

    def __await__(self):
        return self._start().__await__()

    async def __aenter__(self) -> "AsyncEpisode":
        self._episode = await self._start()
        return self._episode

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._episode is not None:
            await self._episode.__aexit__(exc_type, exc, tb)


class AsyncEpisode:
    """A live episode of an :class:`AsyncClient` (the same surface as :class:`swe_env.Episode`, awaited)."""

    def __init__(self, client: AsyncClient, created: env_pb2.CreateEpisodeResponse, prompt: Sequence[Mapping[str, str]]) -> None:
        self.client = client
        self.info = created
        self.id = created.episode_id
        self._conversation = _core.Conversation(created, prompt)
        self.done = False
        self.submitted = False
        self.reward: Optional[float] = None
        self.closed: Optional[env_pb2.EpisodeInfo] = None

    async def __aenter__(self) -> "AsyncEpisode":
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.closed is not None:
            return
        try:
            await self.close()
        except errors.SweEnvError:
            if exc_type is None:
                raise
            log.warning("closing episode %s after an error failed", self.id, exc_info=True)

    @property
    def records(self) -> List[Dict[str, Any]]:
        return self._conversation.records

    async def step(
        self,
        text: Optional[str] = None,
        *,
        tool_call: Optional[MessageOrMapping] = None,
        request_id: Optional[str] = None,
        model_turn: Optional[MessageOrMapping] = None,
        timeout: Optional[float] = None,
    ) -> env_pb2.StepResponse:
        request, response = await self.client._step(self.id, text, tool_call, request_id, model_turn, timeout)
        self._conversation.add_step(request, response)
        self.done = self.done or response.done
        self.submitted = self.submitted or response.submitted
        if response.HasField("reward"):
            self.reward = response.reward
        return response

    async def close(self, final_answer: str = "") -> env_pb2.EpisodeInfo:
        if self.closed is None:
            self.closed = await self.client.close_episode(self.id, final_answer)
            self._conversation.end(final_answer)
        return self.closed

    async def trajectory(self) -> List[Dict[str, Any]]:
        return await self.client.trajectory(self.id)

    async def submission(self) -> str:
        return (await self.client.submission(self.id)).submission

    async def grade(self, *, rules: str = "", timeout: Optional[float] = None) -> env_pb2.GradeResponse:
        return await self.client.grade(self.info.instance_id, await self.submission(), rules=rules, timeout=timeout)

    def messages(self, format: str = "cwm") -> List[Dict[str, Any]]:
        if format == "cwm":
            return render.cwm_messages(self.records)
        if format == "openai":
            return render.openai_messages(self.records)
        raise ValueError(f"format {format!r}: use 'cwm' or 'openai'")

    def cwm_prompt(self, layout: render.CwmLayout = render.CwmLayout()) -> str:
        return render.cwm_prompt(self.messages("cwm"), layout)
