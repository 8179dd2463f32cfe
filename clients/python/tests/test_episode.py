"""The sync client end to end: an episode to a graded submission over TCP, the unix socket, listings."""

import json
import threading

import pytest

import swe_env
from swe_env import env_pb2, errors

from conftest import bash

EDIT_SORT = (
    "<tool: edit>\nsrc/spans/ops.py\n<<<<<<< SEARCH\n    for start, end in map(_check, ranges):\n=======\n"
    "    for start, end in sorted(map(_check, ranges)):\n>>>>>>> REPLACE\n</tool>"
)
EDIT_TOUCHING = {
    "name": "edit",
    "arguments": {
        "path": "src/spans/ops.py",
        "search": "        if merged and start < merged[-1][1]:",
        "replace": "        if merged and start <= merged[-1][1]:",
    },
    "call_id": "call_touching",
}


def solve(ep):
    """Drives an episode of the spans fixture to a submitted fix; returns the submit step's response."""
    out = ep.step(bash("grep -n 'for start, end' src/spans/ops.py"))
    assert "for start, end in map(_check, ranges):" in out.observation.text
    assert out.observation.exit_code == 0 and out.observation.tool == "bash"
    out = ep.step(EDIT_SORT)
    assert out.observation.tool == "edit" and out.observation.tool_error == "", out.observation.text
    out = ep.step(tool_call=EDIT_TOUCHING)
    assert out.observation.tool == "edit" and out.observation.tool_error == "", out.observation.text
    out = ep.step(bash("git diff > /tmp/fix.patch"))
    return ep.step("<tool: submit>\n/tmp/fix.patch\n</tool>")


def test_episode_context_manager_solves_grades_closes_and_reads_the_trajectory(client, task_id):
    tasks = client.list_tasks()
    assert task_id in [t.instance_id for t in tasks]
    assert len(client.list_tasks(page_size=2)) == len(tasks), "every page is read"
    with client.episode(task_id, max_turns=20, labels={"trainer": "pytest"}) as ep:
        assert ".ep-" in ep.id  # <node id>.ep-<hex>
        assert ep.info.budget.remaining_turns == 20
        assert "<tool: bash>" in ep.info.tool_specs_text
        assert len(json.loads(ep.info.openai_tools_json)) == 4
        listed = {e.episode_id: e for e in client.list_episodes()}
        assert listed[ep.id].live and listed[ep.id].labels["trainer"] == "pytest"
        submitted = solve(ep)
        assert submitted.submitted and not submitted.done, submitted
        assert submitted.step_idx == 4 and submitted.budget.remaining_turns == 15
        assert ep.submitted
        assert "sorted(map(_check, ranges))" in ep.submission()
        graded = ep.grade()
        assert graded.instance_id == task_id
        assert graded.resolved and graded.resolution == "FULL", graded.report_json
        assert graded.rewards["execution"] == 1.0
    # Leaving the block closed the episode.
    assert ep.closed is not None and ep.closed.status == "submitted" and not ep.closed.live
    assert ep.closed.n_steps == 5
    with pytest.raises(errors.FailedPrecondition) as ended:
        client.step(ep.id, bash("true"))
    assert ep.id in ended.value.message and "ended" in ended.value.message
    records = ep.trajectory()
    assert [r["type"] for r in records] == ["episode_start"] + ["step"] * 5 + ["episode_end"]
    assert records[-1]["status"] == "submitted"
    assert "sorted(map(_check, ranges))" in records[-1]["submission"]
    steps = records[1:-1]
    assert steps[2]["tool_call_id"] == "call_touching"
    # Every Step carried a generated request id, distinct per step.
    ids = [s["request_id"] for s in steps]
    assert all(len(i) == 32 for i in ids) and len(set(ids)) == 5, ids
    ended_listing = {e.episode_id: e for e in client.list_episodes(include_ended=True)}
    assert ended_listing[ep.id].status == "submitted"


def test_episode_is_closed_when_the_block_raises(client, task_id):
    with pytest.raises(RuntimeError, match="trainer bug"):
        with client.episode(task_id) as ep:
            ep.step(bash("true"))
            raise RuntimeError("trainer bug")
    assert ep.closed is not None and ep.closed.status == "closed"
    # Closing again is idempotent, on the server too.
    assert client.close_episode(ep.id).status == "closed"


def test_unix_socket_in_both_spellings(token, task_id, unix_socket):
    for address in ("unix:" + unix_socket, unix_socket):
        with swe_env.Client(address, token) as client:
            assert task_id in [t.instance_id for t in client.list_tasks()]
            with client.episode(task_id, max_turns=3) as ep:
                out = ep.step(bash("echo over-the-socket"))
                assert "over-the-socket" in out.observation.text
                assert out.budget.remaining_turns == 2


def test_sync_client_is_shared_by_threads(client, task_id):
    outputs = {}

    def rollout(i):
        with client.episode(task_id, max_turns=2) as ep:
            outputs[i] = ep.step(bash(f"echo thread-{i}")).observation.text

    threads = [threading.Thread(target=rollout, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outputs) == [0, 1, 2, 3]
    for i, text in outputs.items():
        assert f"thread-{i}" in text


def test_version_names_the_proto():
    assert swe_env.__version__.endswith("+proto." + swe_env.PROTO_SHA256[:12])
    assert len(swe_env.PROTO_SHA256) == 64
    assert env_pb2.DESCRIPTOR.package == "swe_env.v1"
