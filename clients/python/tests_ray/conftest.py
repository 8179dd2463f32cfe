"""Fixtures of the Ray tests: a Ray multi-node test cluster on this machine (a head and two more logical nodes,
each with its own raylet) and the swe-env binary and fixtures named by environment variables, set by
tests/it/python_ray.rs:

    SWE_ENV_BIN        the swe-env binary each node's actor runs
    SWE_ENV_FIXTURES   the fixture tasks file (`serve --tasks`)
    SWE_ENV_TASK       a fixture task id
    SWE_ENV_TOKEN      the servers' token

A missing variable fails the test: these tests only make sense against real servers and real Docker.
"""

from __future__ import annotations

import os
import subprocess
from typing import Iterator, List

import pytest
import ray
from ray.cluster_utils import Cluster

#: Logical Ray nodes in the test cluster (the head included).
RAY_NODES = 3


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run these tests through tests/it/python_ray.rs (cargo nextest)")
    return value


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Cluster]:
    """Three logical Ray nodes on this machine (one CPU each, no dashboard), the driver connected."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(RAY_NODES - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="session")
def ray_node_ids(ray_cluster: Cluster) -> List[str]:
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    assert len(nodes) == RAY_NODES, ray.nodes()
    return nodes


@pytest.fixture(scope="session")
def token() -> str:
    return env("SWE_ENV_TOKEN")


@pytest.fixture(scope="session")
def task_id() -> str:
    return env("SWE_ENV_TASK")


@pytest.fixture(scope="session")
def serve_args() -> List[str]:
    # A short grace: shutdown() drains with live episodes closed, so the drain ends at once anyway.
    return ["--tasks", env("SWE_ENV_FIXTURES"), "--max-episodes", "8", "--shutdown-grace-secs", "10"]


@pytest.fixture(scope="session")
def binary() -> str:
    return env("SWE_ENV_BIN")


def containers_of(owner: str) -> List[str]:
    """Ids of every container (running or not) labelled with this server owner."""
    done = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=swe-env.owner={owner}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def bash(command: str) -> str:
    return "<tool: bash>\n" + command + "\n</tool>"
