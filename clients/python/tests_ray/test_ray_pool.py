"""swe_env.ray against a Ray multi-node test cluster on this machine: one supervised `swe-env serve` per logical
Ray node, episodes placed over them by the fleet client, a killed server restarted on its port, and no container
left behind by any server process the pool ran (the killed one included)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Dict, Iterator, List

import grpc
import pytest
import ray

from conftest import bash, containers_of
from swe_env import Episode, errors
from swe_env.ray import EnvPool, ServeFailed, node_id_for
from swe_env.v1 import env_pb2, env_pb2_grpc

#: The fleet client's capacity cache in these tests (the default is 1 s): a restarted node is seen sooner.
REFRESH_SECS = 0.3


@pytest.fixture()
def pool(ray_node_ids, token, serve_args, tmp_path) -> Iterator[EnvPool]:
    """A pool over every Ray node (the binary from $SWE_ENV_BIN, resolved by each actor). Teardown: shutdown, then
    no container of any server process the pool ran."""
    started = time.monotonic()
    pool = EnvPool(
        serve_args=serve_args,
        token=token,
        workdir=str(tmp_path),
        client_options={"refresh_secs": REFRESH_SECS, "timeout": 120},
    )
    print(f"pool of {len(pool.nodes())} servers ready in {time.monotonic() - started:.1f} s")
    try:
        yield pool
    finally:
        owners = all_owners(pool)
        pool.shutdown(grace_secs=30)
        leaked = {owner: containers_of(owner) for owner in owners}
        assert not any(leaked.values()), f"containers left after shutdown: {leaked}"


def all_owners(pool: EnvPool) -> List[str]:
    return [owner for info in pool.infos().values() for owner in info["owners"]]


def capacity(address: str, token: str) -> env_pb2.GetCapacityResponse:
    with grpc.insecure_channel(address) as channel:
        stub = env_pb2_grpc.EnvServiceStub(channel)
        return stub.GetCapacity(
            env_pb2.GetCapacityRequest(), timeout=5, metadata=(("authorization", "Bearer " + token),)
        )


def node_of(episode: Episode) -> str:
    return episode.id.split(".", 1)[0]


def by_node(episodes: List[Episode]) -> Dict[str, List[Episode]]:
    out: Dict[str, List[Episode]] = {}
    for episode in episodes:
        out.setdefault(node_of(episode), []).append(episode)
    return out


def mark_and_check(episode: Episode) -> None:
    """Two steps of one episode that only agree when both ran in the same container (its node's)."""
    episode.step(bash(f"echo {episode.id} > /tmp/ray-mark"))
    out = episode.step(bash("cat /tmp/ray-mark"))
    assert episode.id in out.observation.text, out.observation.text


def test_one_server_per_ray_node(pool, ray_node_ids, token):
    infos = pool.infos()
    assert sorted(info["ray_node_id"] for info in infos.values()) == sorted(ray_node_ids)
    assert sorted(pool.nodes()) == sorted(node_id_for(n) for n in ray_node_ids)
    addresses = pool.addresses()
    assert len(set(addresses)) == 3, addresses
    for node, info in infos.items():
        report = capacity(info["address"], token)
        assert report.node_id == node
        assert report.instance_id == info["owners"][0]
        assert (report.max_episodes, report.live_episodes, report.draining) == (8, 0, False)
        assert info["pid"] and info["restarts"] == 0 and info["last_exit"] is None
        assert Path(info["log"]).is_file()
    assert pool.restart_counts() == {node: 0 for node in infos}


def test_episodes_spread_over_the_nodes_and_their_steps_stay_there(pool, task_id, token, tmp_path):
    episodes = [pool.episode(task_id, max_turns=10) for _ in range(12)]
    try:
        spread = by_node(episodes)
        counts = {node: len(spread.get(node, [])) for node in pool.nodes()}
        assert set(spread) == set(pool.nodes()), counts
        assert max(counts.values()) - min(counts.values()) <= 1, f"placed by free capacity: {counts}"
        for node, info in pool.infos().items():
            assert capacity(info["address"], token).live_episodes == counts[node]
        for episode in episodes:
            mark_and_check(episode)
    finally:
        for episode in episodes:
            episode.close()
    for episode in episodes:
        owner = node_of(episode)
        for node in pool.nodes():
            path = tmp_path / node / "trajectories" / f"{episode.id}.jsonl"
            assert path.is_file() == (node == owner), f"{episode.id}: trajectory on {node}"


def test_a_killed_server_fails_its_episodes_and_comes_back_on_its_port(pool, task_id, token):
    episodes = [pool.episode(task_id, max_turns=10) for _ in range(6)]
    victim = pool.nodes()[1]
    spread = by_node(episodes)
    assert set(spread) == set(pool.nodes()), {n: len(e) for n, e in spread.items()}
    before = ray.get(pool.actor(victim).info.remote())
    os.kill(before["pid"], signal.SIGKILL)

    for episode in spread[victim]:
        started = time.monotonic()
        with pytest.raises(errors.NodeUnavailable) as failed:
            episode.step(bash("true"))
        assert time.monotonic() - started < 5, "a dead node's episode fails at once"
        message = str(failed.value)
        assert victim in message and before["address"] in message and episode.id in message, message
    survivors = [e for node, eps in spread.items() if node != victim for e in eps]
    for episode in survivors:
        mark_and_check(episode)

    deadline = time.monotonic() + 60
    after = ray.get(pool.actor(victim).info.remote())
    while len(after["owners"]) < 2:
        assert time.monotonic() < deadline, f"the actor did not restart the server: {after}"
        time.sleep(0.1)
        after = ray.get(pool.actor(victim).info.remote())
    assert after["restarts"] == 1 and after["last_exit"] == -signal.SIGKILL, after
    assert after["address"] == before["address"] and after["pid"] not in (None, before["pid"]), after
    assert pool.restart_counts() == {node: int(node == victim) for node in pool.nodes()}
    # The restarted server's start-up reconcile removed the killed process's containers.
    assert containers_of(before["owners"][0]) == []
    assert capacity(after["address"], token).instance_id == after["owners"][1]

    # The client sees the node again at a refresh (its capacity view is REFRESH_SECS old at most; the channel
    # reconnects with gRPC's backoff).
    while not any(view.node_id == victim and not view.down for view in pool.client.nodes()):
        assert time.monotonic() < deadline, f"the client never saw {victim} again: {pool.client.nodes()}"
        time.sleep(0.1)
    fresh = [pool.episode(task_id, max_turns=10) for _ in range(6)]
    try:
        assert set(by_node(fresh)) == set(pool.nodes()), [e.id for e in fresh]
        for episode in fresh:
            mark_and_check(episode)
    finally:
        for episode in fresh + survivors:
            episode.close()


def test_shutdown_drains_every_server_and_leaves_no_container(ray_node_ids, token, serve_args, task_id, tmp_path):
    pool = EnvPool(serve_args=serve_args, token=token, workdir=str(tmp_path), client_options={"timeout": 120})
    try:
        episodes = [pool.episode(task_id, max_turns=10) for _ in range(3)]  # left open: the drain ends them
        assert set(by_node(episodes)) == set(pool.nodes())
        owners = all_owners(pool)
        assert all(containers_of(owner) for owner in owners), "each server runs its episode's container"
        pids = [info["pid"] for info in pool.infos().values()]
    finally:
        pool.shutdown(grace_secs=30)
    assert [containers_of(owner) for owner in owners] == [[], [], []]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    pool.shutdown()  # idempotent
    with pytest.raises(RuntimeError):
        pool.episode(task_id)


def test_a_server_that_cannot_start_fails_the_pool_with_its_log(ray_node_ids, token, tmp_path):
    started = time.monotonic()
    with pytest.raises(ServeFailed) as failed:
        EnvPool(serve_args=["--tasks", str(tmp_path / "missing.jsonl")], token=token, workdir=str(tmp_path))
    message = str(failed.value)
    assert "exited with status" in message and "missing.jsonl" in message, message
    assert time.monotonic() - started < 30
