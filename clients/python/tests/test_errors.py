"""gRPC failures come back as the swe_env.errors hierarchy, with the server's message."""

import grpc
import pytest

import swe_env
from swe_env import errors

from conftest import bash, env


def test_unknown_task_is_not_found_with_the_servers_text(client):
    with pytest.raises(errors.NotFound) as caught:
        client.create_episode("no-such-task")
    error = caught.value
    assert isinstance(error, errors.SweEnvError)
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.message == "task no-such-task not found (see ListTasks)"
    assert error.method == "CreateEpisode"
    assert "CreateEpisode: NOT_FOUND: task no-such-task not found" in str(error)


def test_unknown_episode_bad_argument_and_grade_of_unknown_task(client):
    with pytest.raises(errors.NotFound, match="ep-unknown"):
        client.step("ep-unknown", bash("true"))
    with pytest.raises(errors.NotFound, match="nope"):
        client.grade("nope", "")
    with pytest.raises(errors.InvalidArgument, match="max_turns"):
        client.create_episode(env("SWE_ENV_TASK"), max_turns=10**9)


def test_wrong_or_missing_token_is_unauthenticated(task_id):
    for token in (None, "wrong-token"):
        with swe_env.Client(env("SWE_ENV_TCP"), token) as client:
            with pytest.raises(errors.Unauthenticated):
                client.list_tasks()


def test_client_side_argument_errors_are_value_errors(client):
    with pytest.raises(ValueError, match="exactly one action"):
        client.step("ep-x")
    with pytest.raises(ValueError, match="tool_format"):
        client.create_episode("t", tool_format="yaml")
    with pytest.raises(ValueError, match="https"):
        swe_env.Client("https://example.invalid:1")


def test_the_servers_own_timeout_answer_reads_as_a_deadline():
    """tonic answers a call whose grpc-timeout ran out on the server's side CANCELLED "Timeout expired"; under load
    that answer can arrive before the client's own timer fires. It is the same deadline."""

    class Answer(grpc.RpcError):
        def __init__(self, code, details):
            self._code, self._details = code, details

        def code(self):
            return self._code

        def details(self):
            return self._details

    timed_out = errors.from_rpc_error(
        Answer(grpc.StatusCode.CANCELLED, "Timeout expired"), method="Step", request_id="r1"
    )
    assert isinstance(timed_out, errors.DeadlineExceeded) and timed_out.request_id == "r1"
    other = errors.from_rpc_error(Answer(grpc.StatusCode.CANCELLED, "client went away"), method="Step")
    assert isinstance(other, errors.Cancelled)
