"""The synchronous client: :class:`Client` and its :class:`Episode` context manager."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, TypeVar

import grpc

from . import _core, errors, render
from ._core import MessageOrMapping, RetryPolicy, ToolFormatLike
from .v1 import env_pb2, env_pb2_grpc

log = logging.getLogger("swe_env")
T = TypeVar("T")


class Client:
    """A connection to one swe-env server.

    ``address``: ``host:port`` (TCP) or ``unix:/path/to.sock`` (or an absolute socket path). ``token``: the
    server's bearer token (None when it runs without one). ``timeout``: the default per-call deadline in seconds
    (None: no deadline; a Step that grades on submit takes as long as the task's tests). ``retry``: see
    :class:`RetryPolicy`. Thread-safe: one client serves every thread of a process.
    """

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
        self._channel = grpc.insecure_channel(target, options=list(base_options) + list(options))
        self._stub_default = env_pb2_grpc.EnvServiceStub(self._channel)
        self._metadata = _core.auth_metadata(token)
        self._timeout = timeout
        self._retry = retry

    @classmethod
    def from_env(cls, **kwargs: Any) -> "Client":
        """A client for ``$SWE_ENV_ADDRESS`` with the token ``$SWE_ENV_TOKEN`` (if set)."""
        address = os.environ.get("SWE_ENV_ADDRESS")
        if not address:
            raise ValueError("SWE_ENV_ADDRESS is not set: export it as host:port or unix:/path/to/swe-env.sock")
        return cls(address, os.environ.get("SWE_ENV_TOKEN"), **kwargs)

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- The one place a call picks its channel. -------------------------------------------------------------------

    def _stub(self, *, task_id: Optional[str] = None, episode_id: Optional[str] = None) -> env_pb2_grpc.EnvServiceStub:
        """The stub a call about ``task_id`` / ``episode_id`` goes to. One server today; fleet-aware placement
        (episodes on the server that holds their task's warm pool, later calls on the server that holds the
        episode) replaces this method only."""
        del task_id, episode_id
        return self._stub_default

    def _call(
        self,
        method: str,
        invoke: Callable[..., T],
        request: Any,
        *,
        timeout: Optional[float] = None,
        retry: bool = True,
        request_id: Optional[str] = None,
    ) -> T:
        """Runs ``invoke(request, timeout=, metadata=)``; RESOURCE_EXHAUSTED / UNAVAILABLE are retried per the
        policy, every failure is raised as a :class:`errors.SweEnvError`."""
        deadline = self._timeout if timeout is None else timeout
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            try:
                return invoke(request, timeout=deadline, metadata=self._metadata)
            except grpc.RpcError as rpc_error:
                error = errors.from_rpc_error(rpc_error, method=method, request_id=request_id)
            if not retry or error.code not in errors.RETRYABLE or attempt >= self._retry.max_attempts:
                raise error
            delay = self._retry.delay(attempt, error.retry_after)
            if waited + delay > self._retry.max_total_wait:
                raise error
            log.info("retrying %s (attempt %d) in %.3f s: %s", method, attempt + 1, delay, error.message)
            time.sleep(delay)
            waited += delay

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
        return self._step(self._stub(episode_id=episode_id), episode_id, text, tool_call, request_id, model_turn, timeout)[1]

    def _step(self, stub, episode_id, text, tool_call, request_id, model_turn, timeout):
        rid = request_id or _core.new_request_id()
        request = _core.step_request(episode_id, text, tool_call, rid, model_turn)
        return request, self._call("Step", stub.Step, request, timeout=timeout, request_id=rid)

    def close_episode(self, episode_id: str, final_answer: str = "") -> env_pb2.EpisodeInfo:
        """Ends an episode (removes its container); closing an ended episode returns it as it ended."""
        request = env_pb2.CloseEpisodeRequest(episode_id=episode_id, final_answer=final_answer)
        return self._call("CloseEpisode", self._stub(episode_id=episode_id).CloseEpisode, request).episode

    def list_episodes(self, *, include_ended: bool = False, page_size: int = 0) -> List[env_pb2.EpisodeInfo]:
        """The episodes the server knows (all pages), newest first."""
        episodes: List[env_pb2.EpisodeInfo] = []
        token = ""
        while True:
            request = env_pb2.ListEpisodesRequest(page_size=page_size, page_token=token, include_ended=include_ended)
            page = self._call("ListEpisodes", self._stub().ListEpisodes, request)
            episodes.extend(page.episodes)
            token = page.next_page_token
            if not token:
                return episodes

    def trajectory(self, episode_id: str) -> List[Dict[str, Any]]:
        """The episode's trajectory records (dicts in the trajectory file's schema)."""
        stub = self._stub(episode_id=episode_id)
        return self._call(
            "GetTrajectory",
            lambda request, **kw: _core.parse_records(stub.GetTrajectory(request, **kw)),
            _core.trajectory_request(episode_id),
        )

    def submission(self, episode_id: str) -> env_pb2.GetSubmissionResponse:
        """The episode's last accepted submission (the patch)."""
        request = env_pb2.GetSubmissionRequest(episode_id=episode_id)
        return self._call("GetSubmission", self._stub(episode_id=episode_id).GetSubmission, request)

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
        self._stub = client._stub(episode_id=created.episode_id)
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
        request, response = self.client._step(self._stub, self.id, text, tool_call, request_id, model_turn, timeout)
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
