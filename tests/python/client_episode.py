"""A Python trainer-side client of swe_env.v1, driven by tests/it/server_python.rs.

The stubs (swe_env/v1/env_pb2.py, env_pb2_grpc.py) are generated from proto/ by grpcio-tools at test time and
put on PYTHONPATH. The script drives one episode on the spans fixture to a resolved-looking submission, reads the
trajectory back, checks auth and idempotency, and prints one JSON summary line on stdout. Any failed check raises,
so the exit status is non-zero.

Usage: python client_episode.py TARGET TOKEN TASK_ID   (TARGET: host:port or unix:/path/to.sock)
"""

import hashlib
import json
import sys

import grpc

from swe_env.v1 import env_pb2, env_pb2_grpc

EDIT_SORT = (
    "<tool: edit>\nsrc/spans/ops.py\n<<<<<<< SEARCH\n    for start, end in map(_check, ranges):\n=======\n"
    "    for start, end in sorted(map(_check, ranges)):\n>>>>>>> REPLACE\n</tool>"
)


def bash(command):
    return "<tool: bash>\n" + command + "\n</tool>"


def main():
    target, token, task_id = sys.argv[1:4]
    # Over a unix socket, gRPC C-core sends the %-encoded socket path as :authority, which HTTP/2 servers built on
    # h2 (tonic) reject with PROTOCOL_ERROR; clients name the authority `localhost` instead.
    options = [("grpc.default_authority", "localhost")] if target.startswith("unix:") else []
    channel = grpc.insecure_channel(target, options=options)
    stub = env_pb2_grpc.EnvServiceStub(channel)
    auth = [("authorization", "Bearer " + token)]

    # Without the token: UNAUTHENTICATED.
    try:
        stub.ListTasks(env_pb2.ListTasksRequest())
        raise AssertionError("unauthenticated ListTasks succeeded")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error

    tasks = stub.ListTasks(env_pb2.ListTasksRequest(page_size=100), metadata=auth)
    assert task_id in [t.instance_id for t in tasks.tasks], tasks

    created = stub.CreateEpisode(
        env_pb2.CreateEpisodeRequest(
            task_id=task_id,
            tool_format=env_pb2.TOOL_FORMAT_TEXT,
            budgets=env_pb2.Budgets(max_turns=20),
            labels={"trainer": "python-test"},
            prompt=[env_pb2.PromptMessage(role="user", content="fix it")],
            model_json=json.dumps({"model": "python-test"}),
        ),
        metadata=auth,
    )
    episode_id = created.episode_id
    assert created.budget.remaining_turns == 20, created.budget
    assert "<tool: bash>" in created.tool_specs_text
    assert len(json.loads(created.openai_tools_json)) == 4

    def step(text, request_id=""):
        return stub.Step(
            env_pb2.StepRequest(episode_id=episode_id, text=text, request_id=request_id), metadata=auth
        )

    out = step(bash("grep -n 'for start, end' src/spans/ops.py"))
    assert "for start, end in map(_check, ranges):" in out.observation.text, out
    assert out.observation.exit_code == 0
    out = step(EDIT_SORT)
    assert out.observation.tool_error == "", out.observation.text
    out = stub.Step(
        env_pb2.StepRequest(
            episode_id=episode_id,
            tool_call=env_pb2.ToolCall(
                name="edit",
                arguments_json=json.dumps(
                    {
                        "path": "src/spans/ops.py",
                        "search": "        if merged and start < merged[-1][1]:",
                        "replace": "        if merged and start <= merged[-1][1]:",
                    }
                ),
                call_id="py_call_1",
            ),
            model_turn=env_pb2.ModelTurn(model_ms=7, token_ids=[1, 2, 3], logprobs=[-0.1, -0.2, -0.3]),
        ),
        metadata=auth,
    )
    assert out.observation.tool == "edit" and out.observation.tool_error == "", out.observation.text
    out = step(bash("python -m pytest -q tests 2>&1 | tail -n 3"))
    assert out.observation.exit_code == 0, out.observation.text

    # Idempotency: the same request id twice runs once.
    first = step(bash("echo once >> /tmp/py-count; wc -l < /tmp/py-count"), request_id="py-req-1")
    again = step(bash("echo once >> /tmp/py-count; wc -l < /tmp/py-count"), request_id="py-req-1")
    assert not first.replayed and again.replayed
    assert first.observation.text == again.observation.text
    count = step(bash("wc -l < /tmp/py-count"))
    assert "<output>\n1\n" in count.observation.text, count.observation.text

    step(bash("git diff > /tmp/fix.patch"))
    out = step("<tool: submit>\n/tmp/fix.patch\n</tool>")
    # A plain submit keeps the episode live (done = the server ended it); CloseEpisode ends it.
    assert out.submitted and not out.done, out

    closed = stub.CloseEpisode(
        env_pb2.CloseEpisodeRequest(episode_id=episode_id, final_answer="sorted and merged touching ranges"),
        metadata=auth,
    )
    assert closed.episode.status == "submitted", closed
    # Listings carry the submission's size and SHA-256, not the patch (the old `submission` field stays empty);
    # GetSubmission returns the patch.
    assert closed.episode.submission == "", closed.episode.submission
    got = stub.GetSubmission(env_pb2.GetSubmissionRequest(episode_id=episode_id), metadata=auth)
    assert "sorted(map(_check, ranges))" in got.submission
    assert closed.episode.submission_bytes == len(got.submission.encode()) == got.submission_bytes
    assert closed.episode.submission_sha256 == hashlib.sha256(got.submission.encode()).hexdigest()

    # A closed episode refuses steps with FAILED_PRECONDITION.
    try:
        step(bash("true"))
        raise AssertionError("step on a closed episode succeeded")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error

    records = [
        json.loads(r.json)
        for r in stub.GetTrajectory(
            env_pb2.GetTrajectoryRequest(episode_id=episode_id, encoding=env_pb2.RECORD_ENCODING_JSON),
            metadata=auth,
        )
    ]
    types = [r["type"] for r in records]
    assert types[0] == "episode_start" and types[-1] == "episode_end", types
    assert records[0]["prompt"] == [{"role": "user", "content": "fix it"}], records[0]["prompt"]
    assert records[0]["model"] == {"model": "python-test"}
    steps = [r for r in records if r["type"] == "step"]
    assert steps[2]["tool_call_id"] == "py_call_1" and steps[2]["tokens"]["logprobs"] == [-0.1, -0.2, -0.3]
    assert records[-1]["status"] == "submitted"
    assert records[-1]["final_answer"] == "sorted and merged touching ranges"

    print(
        json.dumps(
            {
                "episode_id": episode_id,
                "n_records": len(records),
                "n_steps": len(steps),
                "status": records[-1]["status"],
                "submission_has_fix": "sorted(map(_check, ranges))" in records[-1]["submission"],
            }
        )
    )


if __name__ == "__main__":
    main()
