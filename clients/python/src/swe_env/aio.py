"""The asyncio client: :class:`AsyncClient` and :class:`AsyncEpisode`, the same surface as the sync client on
``grpc.aio``. Every episode is a coroutine on one channel, so a trainer runs thousands of episodes concurrently from
one thread (``asyncio.gather`` over rollouts) with no thread per episode."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, TypeVar

import grpc
import grpc.aio

from . import _core, errors, render
from ._core import MessageOrMapping, RetryPolicy, ToolFormatLike
from .v1 import env_pb2, env_pb2_grpc

log = logging.getLogger("swe_env")
T = TypeVar("T")


class AsyncClient:
    """A ``grpc.aio`` connection to one swe-env server (arguments as :class:`swe_env.Client`). Create it inside
    the event loop that uses it; ``async with AsyncClient(...) as client:`` closes it."""

    def __init__(
        self,
        address: str,
        token: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
        retry: RetryPolicy = RetryPolicy(),
        options: Sequence[tuple] = (),
    ) -> None:
        target, base_options = _core.grpc_target(address)
        self.address = address
        self._channel = grpc.aio.insecure_channel(target, options=list(base_options) + list(options))
        self._stub_default = env_pb2_grpc.EnvServiceStub(self._channel)
        self._metadata = _core.auth_metadata(token)
        self._timeout = timeout
        self._retry = retry

    @classmethod
    def from_env(cls, **kwargs: Any) -> "AsyncClient":
        """A client for ``$SWE_ENV_ADDRESS`` with the token ``$SWE_ENV_TOKEN`` (if set)."""
        address = os.environ.get("SWE_ENV_ADDRESS")
        if not address:
            raise ValueError("SWE_ENV_ADDRESS is not set: export it as host:port or unix:/path/to/swe-env.sock")
        return cls(address, os.environ.get("SWE_ENV_TOKEN"), **kwargs)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _stub(self, *, task_id: Optional[str] = None, episode_id: Optional[str] = None) -> env_pb2_grpc.EnvServiceStub:
        """The one place a call picks its channel (see ``Client._stub``)."""
        del task_id, episode_id
        return self._stub_default

    async def _call(
        self,
        method: str,
        invoke: Callable[..., Awaitable[T]],
        request: Any,
        *,
        timeout: Optional[float] = None,
        retry: bool = True,
        request_id: Optional[str] = None,
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
            if not retry or error.code not in errors.RETRYABLE or attempt >= self._retry.max_attempts:
                raise error
            delay = self._retry.delay(attempt, error.retry_after)
            if waited + delay > self._retry.max_total_wait:
                raise error
            log.info("retrying %s (attempt %d) in %.3f s: %s", method, attempt + 1, delay, error.message)
            await asyncio.sleep(delay)
            waited += delay

    async def list_tasks(self, *, repo: str = "", include_rows: bool = False, page_size: int = 0) -> List[env_pb2.Task]:
        tasks: List[env_pb2.Task] = []
        token = ""
        while True:
            request = env_pb2.ListTasksRequest(page_size=page_size, page_token=token, repo=repo, include_rows=include_rows)
            page = await self._call("ListTasks", self._stub().ListTasks, request)
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
        return await self._call("Prewarm", self._stub(task_id=task_id).Prewarm, request)

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
        return await self._call("CreateEpisode", self._stub(task_id=task_id).CreateEpisode, request, timeout=timeout)

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
        return (await self._step(self._stub(episode_id=episode_id), episode_id, text, tool_call, request_id, model_turn, timeout))[1]

    async def _step(self, stub, episode_id, text, tool_call, request_id, model_turn, timeout):
        rid = request_id or _core.new_request_id()
        request = _core.step_request(episode_id, text, tool_call, rid, model_turn)
        return request, await self._call("Step", stub.Step, request, timeout=timeout, request_id=rid)

    async def close_episode(self, episode_id: str, final_answer: str = "") -> env_pb2.EpisodeInfo:
        request = env_pb2.CloseEpisodeRequest(episode_id=episode_id, final_answer=final_answer)
        return (await self._call("CloseEpisode", self._stub(episode_id=episode_id).CloseEpisode, request)).episode

    async def list_episodes(self, *, include_ended: bool = False, page_size: int = 0) -> List[env_pb2.EpisodeInfo]:
        episodes: List[env_pb2.EpisodeInfo] = []
        token = ""
        while True:
            request = env_pb2.ListEpisodesRequest(page_size=page_size, page_token=token, include_ended=include_ended)
            page = await self._call("ListEpisodes", self._stub().ListEpisodes, request)
            episodes.extend(page.episodes)
            token = page.next_page_token
            if not token:
                return episodes

    async def trajectory(self, episode_id: str) -> List[Dict[str, Any]]:
        stub = self._stub(episode_id=episode_id)

        async def invoke(request: env_pb2.GetTrajectoryRequest, **kw: Any) -> List[Dict[str, Any]]:
            return _core.parse_records([record async for record in stub.GetTrajectory(request, **kw)])

        return await self._call("GetTrajectory", invoke, _core.trajectory_request(episode_id))

    async def submission(self, episode_id: str) -> env_pb2.GetSubmissionResponse:
        request = env_pb2.GetSubmissionRequest(episode_id=episode_id)
        return await self._call("GetSubmission", self._stub(episode_id=episode_id).GetSubmission, request)

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
        return await self._call("Grade", self._stub(task_id=task_id).Grade, request, timeout=timeout)

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
        return await self._call("CheckTest", self._stub(task_id=task_id).CheckTest, request, timeout=timeout)

    async def run_episode(
        self, request: env_pb2.RunEpisodeRequest, *, timeout: Optional[float] = None
    ) -> AsyncIterator[env_pb2.RunEpisodeEvent]:
        stub = self._stub(task_id=request.episode.task_id or None)
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
        self._stub = client._stub(episode_id=created.episode_id)
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
        request, response = await self.client._step(self._stub, self.id, text, tool_call, request_id, model_turn, timeout)
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
