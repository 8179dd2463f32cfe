"""Fixtures of the client tests: servers started by tests/it/python_client.rs, named by environment variables.

    SWE_ENV_TCP            host:port of the main server
    SWE_ENV_UNIX           its unix socket path
    SWE_ENV_TOKEN          its token (both servers)
    SWE_ENV_LIMITED_TCP    host:port of a server admitting one episode at a time (retry tests)
    SWE_ENV_TASK           a fixture task id (the spans fixture)
    SWE_ENV_BIN            the swe-env binary (for `swe-env export`)
    SWE_ENV_TRAJECTORIES   the main server's trajectory directory
    SWE_ENV_FLEET          host:port of three fleet servers, comma-separated (test_fleet.py)
    SWE_ENV_FLEET_NODES    their --node-id values, in the same order
    SWE_ENV_FLEET_MAX      their --max-episodes values
    SWE_ENV_FLEET_PIDS     their process ids (the last test kills the third)

A missing variable fails the test: these tests only make sense against real servers.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

import swe_env


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run these tests through tests/it/python_client.rs (cargo nextest)")
    return value


@pytest.fixture(scope="session")
def token() -> str:
    return env("SWE_ENV_TOKEN")


@pytest.fixture(scope="session")
def task_id() -> str:
    return env("SWE_ENV_TASK")


@pytest.fixture()
def client(token):
    with swe_env.Client(env("SWE_ENV_TCP"), token) as client:
        yield client


@pytest.fixture(scope="session")
def unix_socket() -> str:
    return env("SWE_ENV_UNIX")


@pytest.fixture(scope="session")
def limited_address() -> str:
    return env("SWE_ENV_LIMITED_TCP")


@pytest.fixture(scope="session")
def export():
    """`swe-env export FILE --format FORMAT` of one episode's trajectory file: the one exported row."""
    binary = env("SWE_ENV_BIN")
    trajectories = Path(env("SWE_ENV_TRAJECTORIES"))

    def run(episode_id: str, fmt: str) -> dict:
        path = trajectories / f"{episode_id}.jsonl"
        done = subprocess.run(
            [binary, "export", str(path), "--format", fmt], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        assert len(rows) == 1, done.stdout
        return rows[0]

    return run


def bash(command: str) -> str:
    return "<tool: bash>\n" + command + "\n</tool>"
