"""A fleet of servers: the placement rule on its own (pure), then three real servers (started by
tests/it/python_client.rs with distinct --node-id and unequal --max-episodes): episodes spread by free capacity,
every later call pinned to the node that owns the episode, and a node frozen then killed mid-run fails only its own
episodes, at once, naming itself. The kill test is the last one of this file: it leaves the third server dead."""

import asyncio
import os
import signal
import time

import pytest

import swe_env
from swe_env import _fleet, errors

from conftest import bash, env

# -- The placement rule, pure ------------------------------------------------------------------------------------


def report(node_id, free, *, max_episodes=4, instance=None, draining=False):
    return {
        "node_id": node_id,
        "max_episodes": max_episodes,
        "live_episodes": max_episodes - free,
        "free_episodes": 0 if draining else free,
        "draining": draining,
        "instance_id": instance or f"host:{node_id}:1",
        "pool_ready": 0,
    }


def fleet_of(*reports_by_address, refresh=1.0):
    fleet = _fleet.Fleet(refresh)
    addresses = [a for a, _ in reports_by_address]
    fleet.apply(addresses, dict(reports_by_address), now=0.0)
    return fleet


def test_the_node_of_an_episode_id_is_the_text_before_the_first_dot():
    assert _fleet.node_of("node-a.ep-0123abcd") == "node-a"
    assert _fleet.node_of("n1.ep-x.y") == "n1"
    assert _fleet.node_of("ep-0123abcd") is None, "ids of older servers name no node"
    assert _fleet.node_of(".ep-1") is None


def test_addresses_from_a_string_or_a_list_and_names_expanded_to_all_their_addresses():
    assert _fleet.split_addresses("a:1, b:2,,") == ["a:1", "b:2"]
    assert _fleet.split_addresses(["a:1"]) == ["a:1"]
    with pytest.raises(ValueError):
        _fleet.split_addresses(" , ")
    calls = []

    def resolve(host, port):
        calls.append((host, port))
        if host == "gone.svc":
            raise OSError("Name or service not known")
        return {"swe.svc": ["10.0.0.2", "10.0.0.1", "10.0.0.2"], "v6.svc": ["fd00::1"]}[host]

    targets = ["10.0.0.9:7", "swe.svc:50051", "unix:/run/s.sock", "v6.svc:5", "gone.svc:1", "10.0.0.1:50051"]
    addresses, failures = _fleet.expand(targets, resolve)
    assert addresses == ["10.0.0.9:7", "10.0.0.2:50051", "10.0.0.1:50051", "unix:/run/s.sock", "[fd00::1]:5"]
    assert list(failures) == ["gone.svc:1"] and "Name or service not known" in failures["gone.svc:1"]
    assert sorted(calls) == [("gone.svc", 1), ("swe.svc", 50051), ("v6.svc", 5)], "IP literals are not resolved"


def test_the_most_free_slots_win_ties_go_to_fewest_placed_then_address_order():
    fleet = fleet_of(("a:1", report("a", 2)), ("b:1", report("b", 3)), ("c:1", report("c", 3)))
    order = []
    while True:
        node = fleet.choose()
        if node is None:
            break
        fleet.placed(node)
        order.append(node.node_id)
    # b and c tie at 3: address order takes b; then c (3) beats b (2); then all at 2: a (placed none) first...
    assert order == ["b", "c", "a", "b", "c", "a", "b", "c"]
    assert [n.free for n in fleet.nodes] == [0, 0, 0]
    assert [n.placed for n in fleet.nodes] == [2, 3, 3], "filled exactly by capacity"


def test_estimates_follow_placements_closes_and_refusals_until_the_next_report():
    fleet = fleet_of(("a:1", report("a", 1, max_episodes=2)), ("b:1", report("b", 1, max_episodes=1)))
    a, b = fleet.nodes
    fleet.placed(a)
    assert (a.free, a.placed) == (0, 1)
    assert fleet.choose() is b
    fleet.exhausted(b)  # b answered RESOURCE_EXHAUSTED: nothing free anywhere by the estimates
    assert b.free == 0 and fleet.choose() is None
    fleet.closed("a")
    fleet.closed("a")
    fleet.closed("a")
    assert a.free == 2, "a close raises the estimate, never past max_episodes"
    fleet.unplaced(a)
    assert a.placed == 0
    assert fleet.choose({"a:1"}) is None, "an excluded (already tried) node is not chosen"
    assert not fleet.stale(0.5) and fleet.stale(1.0)
    assert fleet.fresher_than(-0.1) and not fleet.fresher_than(0.0), "a refresh ending after a caller asked serves it"
    fleet.apply(["a:1", "b:1"], {"a:1": report("a", 0, max_episodes=2), "b:1": report("b", 1, max_episodes=1)}, 1.0)
    assert (a.free, b.free) == (0, 1), "a report replaces the estimates"
    assert fleet.choose() is b


def test_draining_and_down_nodes_are_skipped_and_a_later_report_brings_a_node_back():
    fleet = fleet_of(("a:1", report("a", 5, draining=True)), ("b:1", "UNAVAILABLE: connection refused"), ("c:1", report("c", 1)))
    a, b, c = fleet.nodes
    assert a.free == 0 and a.draining and b.down and "refused" in b.error
    assert fleet.choose() is c
    fleet.mark_down(c, "UNAVAILABLE: gone")
    assert fleet.choose() is None
    fleet.apply(["a:1", "b:1", "c:1"], {"a:1": report("a", 5), "b:1": report("b", 2), "c:1": "DEADLINE_EXCEEDED"}, 2.0)
    assert not b.down and b.node_id == "b" and c.down
    assert fleet.choose() is a
    views = {v.node_id: v for v in fleet.view()}
    assert views["c"].down and views["a"].free == 5 and not views["b"].down


def test_two_addresses_of_one_process_are_one_node():
    same = report("a", 3, instance="host:10:99")
    fleet = fleet_of(("10.0.0.1:5", same), ("10.0.0.2:5", same), ("10.0.0.3:5", report("b", 1)))
    assert [(n.node_id, n.address) for n in fleet.nodes] == [("a", "10.0.0.1:5"), ("b", "10.0.0.3:5")]
    assert fleet.find("a").address == "10.0.0.1:5", "the first address is kept"


def test_two_processes_claiming_one_node_id_is_a_configuration_error_naming_both():
    fleet = fleet_of(("x:1", report("a", 1)))
    with pytest.raises(errors.FleetConfigError) as error:
        fleet.apply(
            ["x:1", "y:1", "z:1"],
            {"x:1": report("a", 1), "y:1": report("b", 1), "z:1": report("a", 2, instance="other:7:1")},
            1.0,
        )
    assert "'a'" in str(error.value) and "x:1" in str(error.value) and "z:1" in str(error.value)
    assert [n.address for n in fleet.nodes] == ["x:1"], "the view is left as it was"
    # A down node's id taken over by a new process elsewhere (a rescheduled pod) is no conflict.
    fleet.apply(["x:1", "z:1"], {"x:1": "UNAVAILABLE", "z:1": report("a", 2, instance="other:7:1")}, 2.0)
    assert fleet.find("a").address == "z:1"


def test_a_node_gone_from_the_resolved_addresses_stays_in_the_view_down():
    fleet = fleet_of(("10.0.0.1:5", report("a", 1)), ("10.0.0.2:5", report("b", 1)))
    fleet.apply(["10.0.0.2:5"], {"10.0.0.2:5": report("b", 1)}, 1.0)
    a = fleet.find("a")
    assert a is not None and a.down and "no longer among" in a.error
    message = _fleet.lost_message("a.ep-1", a)
    assert "node a at 10.0.0.1:5 is unreachable" in message and "episode a.ep-1" in message
    assert "not among this client's nodes" in _fleet.unknown_node_message("q.ep-1", "q", fleet)


# -- Three real servers ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet_nodes():
    """[(address, node_id, max_episodes, pid)] of the three fleet servers."""
    addresses = env("SWE_ENV_FLEET").split(",")
    node_ids = env("SWE_ENV_FLEET_NODES").split(",")
    maxima = [int(m) for m in env("SWE_ENV_FLEET_MAX").split(",")]
    pids = [int(p) for p in env("SWE_ENV_FLEET_PIDS").split(",")]
    assert len(addresses) == len(node_ids) == len(maxima) == len(pids) == 3
    return list(zip(addresses, node_ids, maxima, pids))


def owner_address(fleet_nodes, episode_id):
    node = _fleet.node_of(episode_id)
    return next(address for address, node_id, _, _ in fleet_nodes if node_id == node)


def check_pinned(fleet_nodes, token, episode_id):
    """The episode answers on the node its id names (called directly), and only there."""
    for address, node_id, _, _ in fleet_nodes:
        with swe_env.Client(address, token) as direct:
            if episode_id.startswith(node_id + ".ep-"):
                out = direct.step(episode_id, bash("echo direct"))
                assert "direct" in out.observation.text
            else:
                with pytest.raises(errors.NotFound, match=f"belongs to node {_fleet.node_of(episode_id)}"):
                    direct.step(episode_id, bash("true"))


def test_episodes_spread_by_free_capacity_and_steps_stay_on_their_node(token, task_id, fleet_nodes):
    addresses = [a for a, _, _, _ in fleet_nodes]
    with swe_env.Client(addresses, token, refresh_secs=0.5) as client:
        view = client.nodes()
        assert [(v.address, v.node_id, v.free, v.down) for v in view] == [
            (a, n, m, False) for a, n, m, _ in fleet_nodes
        ], view
        episodes = []
        try:
            for _ in range(sum(m for _, _, m, _ in fleet_nodes)):
                episodes.append(client.episode(task_id, max_turns=8))
            # Each create went to the node with the most free slots (ties: fewest placed, then address order).
            # Free 2, 3, 4: the third; then the second (3, ties with the third, placed fewer); the third (3); all at
            # 2: the first (placed none), the second, the third; all at 1: the same again.
            assert [m for _, _, m, _ in fleet_nodes] == [2, 3, 4]
            a, b, c = (n for _, n, _, _ in fleet_nodes)
            assert [_fleet.node_of(ep.id) for ep in episodes] == [c, b, c, a, b, c, a, b, c]
            per_node = {n: sum(ep.id.startswith(n + ".ep-") for ep in episodes) for _, n, _, _ in fleet_nodes}
            assert per_node == {n: m for _, n, m, _ in fleet_nodes}, "every node filled to its max_episodes"
            # All full: a create waits for a slot within its deadline, then fails.
            started = time.monotonic()
            with pytest.raises(errors.ResourceExhausted):
                client.create_episode(task_id, timeout=1.5)
            assert time.monotonic() - started < 5
            for i, ep in enumerate(episodes):
                out = ep.step(bash(f"echo fleet-{i}"))
                assert f"fleet-{i}" in out.observation.text
            for ep in episodes[:: 3]:
                check_pinned(fleet_nodes, token, ep.id)
            # A closed slot is free again, on the node that held it.
            first = episodes.pop(0)
            first.close()
            again = client.episode(task_id, max_turns=8)
            episodes.append(again)
            assert _fleet.node_of(again.id) == _fleet.node_of(first.id)
            assert again.trajectory()[0]["episode_id"] == again.id, "read from the owning node"
            listed = {e.episode_id for e in client.list_episodes()}
            assert {ep.id for ep in episodes} <= listed, "list_episodes covers every node"
        finally:
            for ep in episodes:
                ep.close()
        assert all(v.free == m for v, (_, _, m, _) in zip(client.nodes(), fleet_nodes))


def test_async_fleet_places_concurrent_creates_by_capacity(token, task_id, fleet_nodes):
    addresses = [a for a, _, _, _ in fleet_nodes]
    total = sum(m for _, _, m, _ in fleet_nodes)

    async def main():
        async with swe_env.AsyncClient(addresses, token) as client:

            async def rollout(i):
                async with client.episode(task_id, max_turns=4) as ep:
                    out = await ep.step(bash(f"sleep 1; echo async-{i}"))
                    assert f"async-{i}" in out.observation.text
                    node = _fleet.node_of(ep.id)
                    # The owner answers for it; another node refuses it, naming the owner.
                    owner = owner_address(fleet_nodes, ep.id)
                    other = next(a for a in addresses if a != owner)
                    async with swe_env.AsyncClient(other, token) as direct:
                        with pytest.raises(errors.NotFound, match=f"belongs to node {node}"):
                            await direct.step(ep.id, bash("true"))
                    records = await ep.trajectory()
                    assert records[0]["episode_id"] == ep.id
                    return node

            nodes = await asyncio.gather(*(rollout(i) for i in range(total)))
            return nodes, await client.nodes()

    nodes, view = asyncio.run(main())
    assert {n: nodes.count(n) for n in set(nodes)} == {n: m for _, n, m, _ in fleet_nodes}
    assert [v.free for v in view] == [m for _, _, m, _ in fleet_nodes]


def test_a_killed_node_fails_its_own_episodes_at_once_and_new_episodes_go_elsewhere(token, task_id, fleet_nodes):
    addresses = [a for a, _, _, _ in fleet_nodes]
    victim_address, victim, _, victim_pid = fleet_nodes[2]
    with swe_env.Client(addresses, token, refresh_secs=0.5) as client:
        episodes = [client.episode(task_id, max_turns=16) for _ in range(6)]
        lost = [ep for ep in episodes if _fleet.node_of(ep.id) == victim]
        kept = [ep for ep in episodes if _fleet.node_of(ep.id) != victim]
        assert lost and kept, [ep.id for ep in episodes]
        for ep in episodes:
            ep.step(bash("echo before"))

        # Frozen first: the open connection goes quiet; keepalive (a ping every 10 s, 5 s to answer) drops it, the
        # probe times out (2 s), and the step fails naming the node instead of hanging.
        os.kill(victim_pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(errors.NodeUnavailable) as frozen:
                lost[0].step(bash("echo frozen"))
            assert time.monotonic() - started < 10 + 5 + 2 + 3, "keepalive noticed the frozen node"
            assert f"node {victim} at {victim_address} is unreachable" in str(frozen.value)
        finally:
            os.kill(victim_pid, signal.SIGKILL)

        for ep in lost:
            started = time.monotonic()
            with pytest.raises(errors.NodeUnavailable) as error:
                ep.step(bash("echo after"))
            assert time.monotonic() - started < 3, "no retry loop on a dead node"
            text = str(error.value)
            assert f"node {victim} at {victim_address} is unreachable" in text, text
            assert f"episode {ep.id} was on it and is lost" in text, text
            assert (error.value.node_id, error.value.address, error.value.episode_id) == (victim, victim_address, ep.id)
            assert isinstance(error.value, errors.Unavailable) and error.value.code.name == "UNAVAILABLE"
        view = {v.node_id: v for v in client.nodes()}
        assert view[victim].down and not any(view[n].down for n in view if n != victim), view
        # The rest go on; new episodes go to the surviving nodes only.
        for ep in kept:
            assert "after" in ep.step(bash("echo after")).observation.text
        # The survivors' free slots: their max_episodes less the kept episodes; the dead node's are not counted.
        room = sum(m for _, n, m, _ in fleet_nodes if n != victim) - len(kept)
        assert room > 0, (room, [ep.id for ep in kept])
        fresh = [client.episode(task_id, max_turns=4) for _ in range(room)]
        try:
            assert all(_fleet.node_of(ep.id) != victim for ep in fresh), [ep.id for ep in fresh]
            with pytest.raises(errors.ResourceExhausted, match=rf"{victim}@{victim_address} \(down\)"):
                client.create_episode(task_id, timeout=1.0)
            for ep in fresh:
                ep.step(bash("true"))
        finally:
            for ep in fresh + kept:
                ep.close()
        for ep in lost:
            started = time.monotonic()
            with pytest.raises(errors.NodeUnavailable):
                ep.close()
            assert time.monotonic() - started < 3
        # Old-style and foreign ids: a clear UNAVAILABLE, no hang.
        with pytest.raises(errors.Unavailable, match="which is not among this client's nodes"):
            client.step("elsewhere.ep-00", bash("true"))
