"""The asyncio client: the same surface, many episodes at once from one thread."""

import asyncio
import threading
import time

import pytest

import swe_env
from swe_env import errors

from conftest import bash, env

N = 32


def test_32_concurrent_episodes_on_one_thread(token, task_id):
    threads_before = threading.active_count()

    async def main():
        async with swe_env.AsyncClient(env("SWE_ENV_TCP"), token) as client:
            peak = 0

            async def rollout(i):
                nonlocal peak
                async with client.episode(task_id, max_turns=4, labels={"rollout": str(i)}) as ep:
                    # Every episode sleeps 2 s in its container: run one after another, that alone is 64 s.
                    out = await ep.step(bash(f"sleep 2; echo rollout-{i}"))
                    assert f"rollout-{i}" in out.observation.text, out.observation.text
                    peak = max(peak, threading.active_count())
                    out = await ep.step(bash("echo $((6 * 7))"))
                    assert "42" in out.observation.text
                    return ep.id

            started = time.monotonic()
            ids = await asyncio.gather(*(rollout(i) for i in range(N)))
            elapsed = time.monotonic() - started
            return ids, elapsed, peak

    ids, elapsed, peak = asyncio.run(main())
    assert len(set(ids)) == N
    assert elapsed < N * 2 / 2, f"{N} episodes took {elapsed:.1f} s: they did not overlap"
    # gRPC's own few threads, no thread per episode.
    assert peak - threads_before < 8, (threads_before, peak)


def test_async_episode_trajectory_grade_and_errors(token, task_id):
    async def main():
        async with swe_env.AsyncClient(env("SWE_ENV_TCP"), token) as client:
            assert task_id in [t.instance_id for t in await client.list_tasks()]
            ep = await client.episode(task_id, max_turns=5)
            try:
                await ep.step(bash("echo -n > /tmp/empty.patch"))
                out = await ep.step("no tool call here")
                assert out.observation.format_error != "" and out.observation.tool == ""
            finally:
                closed = await ep.close("gave up")
            assert closed.status == "closed" and closed.n_steps == 2
            records = await ep.trajectory()
            assert records[-1]["final_answer"] == "gave up"
            graded = await client.grade(task_id, "")
            assert not graded.resolved and graded.instance_id == task_id
            with pytest.raises(errors.NotFound, match="task no-such-task not found"):
                await client.create_episode("no-such-task")
            with pytest.raises(errors.FailedPrecondition):
                await client.step(ep.id, bash("true"))

    asyncio.run(main())
