"""Retries with the server's hints, and idempotent Steps: a retried step never runs twice."""

import logging
import threading
import time

import pytest

import swe_env
from swe_env import errors

from conftest import bash


def test_a_step_whose_reply_was_lost_is_retried_with_its_request_id_and_runs_once(client, task_id):
    with client.episode(task_id, max_turns=10) as ep:
        ep.step(bash("true"))
        command = bash("echo ran >> /tmp/lost; sleep 2; wc -l < /tmp/lost")
        started = time.monotonic()
        with pytest.raises(errors.DeadlineExceeded) as lost:
            ep.step(command, timeout=0.5)
        assert time.monotonic() - started < 1.5
        request_id = lost.value.request_id
        assert request_id and len(request_id) == 32
        # The retry joins the run in progress (or gets its stored reply): the same step, not a second run.
        again = ep.step(command, request_id=request_id)
        assert again.replayed and again.step_idx == 1, again
        assert "<output>\n1\n" in again.observation.text, again.observation.text
        count = ep.step(bash("wc -l < /tmp/lost"))
        assert count.step_idx == 2 and "<output>\n1\n" in count.observation.text
        # A second retry later: the stored reply again.
        assert ep.step(command, request_id=request_id).replayed
        assert [r["step_idx"] for r in ep.records[1:]] == [0, 1, 2], "the local records hold each step once"
    steps = [r for r in ep.trajectory() if r["type"] == "step"]
    assert [s["request_id"] for s in steps].count(request_id) == 1
    assert len(steps) == 3


def test_create_is_retried_on_resource_exhausted_honouring_the_hint(token, task_id, limited_address, caplog):
    caplog.set_level(logging.INFO, logger="swe_env")
    with swe_env.Client(limited_address, token) as client:
        first = client.create_episode(task_id)
        # Without retries the hint is visible on the error.
        with swe_env.Client(limited_address, token, retry=swe_env.RetryPolicy(max_attempts=1)) as once:
            with pytest.raises(errors.ResourceExhausted) as full:
                once.create_episode(task_id)
        assert full.value.retry_after is not None and full.value.retry_after > 0
        assert "retry after" in full.value.message
        # With retries: the second create waits until the first episode is closed 1.5 s later.
        closer = threading.Timer(1.5, client.close_episode, args=(first.episode_id,))
        started = time.monotonic()
        closer.start()
        try:
            second = client.create_episode(task_id)
        finally:
            closer.join()
        waited = time.monotonic() - started
        assert second.episode_id != first.episode_id
        assert waited >= 1.4, waited
        retries = [r for r in caplog.records if "retrying CreateEpisode" in r.getMessage()]
        assert retries, "the client logged its retries"
        client.close_episode(second.episode_id)


def test_retries_are_bounded(token, task_id, limited_address):
    with swe_env.Client(limited_address, token) as client:
        first = client.create_episode(task_id)
        try:
            policy = swe_env.RetryPolicy(max_attempts=3)
            with swe_env.Client(limited_address, token, retry=policy) as bounded:
                started = time.monotonic()
                with pytest.raises(errors.ResourceExhausted):
                    bounded.create_episode(task_id)
                # Two waits of the server's hint, then the error.
                assert time.monotonic() - started >= 2 * full_hint(limited_address, token, task_id) * 0.9
        finally:
            client.close_episode(first.episode_id)


def full_hint(address, token, task_id):
    with swe_env.Client(address, token, retry=swe_env.RetryPolicy(max_attempts=1)) as once:
        with pytest.raises(errors.ResourceExhausted) as full:
            once.create_episode(task_id)
    return full.value.retry_after


def test_policy_delay_uses_the_hint_else_backoff():
    policy = swe_env.RetryPolicy(initial_backoff=0.5, max_backoff=2.0, jitter=0.0)
    assert policy.delay(1, 0.25) == 0.25
    assert [policy.delay(n, None) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 2.0]
