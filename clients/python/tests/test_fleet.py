"""A fleet of servers: the placement rule on its own (pure), then three real servers (started by
tests/it/python_client.rs with distinct --node-id and unequal --max-episodes): episodes spread by free capacity,
every later call pinned to the node that owns the episode, a node refusing the client's token skipped, a draining
node (a fourth server, SIGTERMed here) still stepping its episodes, and a node frozen then killed mid-run fails only
its own episodes, at once, naming itself. The kill test is the last one of this file: it leaves the third server
dead."""

import asyncio
import os
import signal
import subprocess
import time

import grpc
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
    fleet.mark_down(c, "UNAVAILABLE: gone", 1.0)
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
    assert not fleet.fails_fast(a), "gone from the names (a draining pod): its episodes' calls are still sent"


def test_only_a_node_a_probe_found_unreachable_fails_its_episodes_at_once_and_the_error_keeps_the_request_id():
    fleet = fleet_of(("a:1", report("a", 1)), ("b:1", report("b", 1)), ("c:1", report("c", 1)))
    a, b, c = fleet.nodes
    # A create bounced off a draining node: the probe answered, draining — skipped for creates, not down.
    fleet.update(b, report("b", 0, draining=True))
    assert b.draining and not b.down and not fleet.fails_fast(b) and fleet.choose({"a:1"}) is c
    fleet.mark_down(c, _fleet.Failure("UNAUTHENTICATED", "wrong token"), 1.0)
    assert c.down and not fleet.fails_fast(c), "a node refusing the token is not lost: its calls say so themselves"
    fleet.mark_down(a, _fleet.Failure("DEADLINE_EXCEEDED", "probe timed out"), 1.0)
    assert fleet.fails_fast(a)
    error = _fleet.lost_error("a.ep-1", a, "Step", "rid-1")
    assert isinstance(error, errors.NodeUnavailable) and error.request_id == "rid-1" and error.method == "Step"
    assert (error.node_id, error.address, error.episode_id) == ("a", "a:1", "a.ep-1")
    assert (
        "node a at a:1 is unreachable; episode a.ep-1 is lost unless the node comes back (its trajectory stays on "
        "that node; a retried Step with the same request id runs at most once)" in str(error)
    )
    fleet.update(a, report("a", 1))
    assert not a.down and not fleet.fails_fast(a), "a later answer brings it back"


def test_a_node_refusing_the_client_is_down_with_its_reason_and_raises_only_when_no_node_is_usable():
    fleet = fleet_of(("a:1", _fleet.Failure("UNAUTHENTICATED", "invalid token")), ("b:1", report("b", 1)))
    a, b = fleet.nodes
    assert a.down and a.error == "UNAUTHENTICATED: invalid token" and fleet.choose() is b
    assert "?@a:1 (down: UNAUTHENTICATED: invalid token)" in fleet.describe()
    fleet.mark_down(b, _fleet.Failure("UNAUTHENTICATED", "invalid token"), 1.0)
    error = fleet.no_node_error({}, "no node of the fleet answers")
    assert isinstance(error, errors.Unauthenticated), "every node refuses the token: say so, not 'unavailable'"
    assert "a:1 (down: UNAUTHENTICATED" in str(error) and "b@b:1 (down: UNAUTHENTICATED" in str(error)
    fleet.mark_down(b, _fleet.Failure("UNAVAILABLE", "connection refused"), 1.0)
    mixed = fleet.no_node_error({"x.svc:1": "cannot resolve x.svc"}, "no node of the fleet answers")
    assert isinstance(mixed, errors.Unavailable) and "connection refused" in str(mixed) and "x.svc" in str(mixed)
    assert isinstance(_fleet.placement_failure(fleet, {}, None), errors.Unavailable)
    fleet.update(b, report("b", 0))
    full = _fleet.placement_failure(fleet, {}, errors.ResourceExhausted(grpc.StatusCode.RESOURCE_EXHAUSTED, "at capacity", retry_after=0.5))
    assert isinstance(full, errors.ResourceExhausted) and full.retry_after == 0.5 and "at capacity" in str(full)
    # A GetCapacity failure is a reason, never an exception (UNIMPLEMENTED: an older server, said so).
    class Refused(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNIMPLEMENTED

        def details(self):
            return "unknown method GetCapacity"

    failure = swe_env._core.capacity_failure(Refused())
    assert failure.code == "UNIMPLEMENTED" and not failure.unreachable and "older than fleet support" in str(failure)


def test_a_down_node_is_reasked_at_most_every_5_s_and_briefly():
    fleet = fleet_of(("a:1", report("a", 1)), ("b:1", "UNAVAILABLE: connection refused"))
    a, b = fleet.nodes
    assert fleet.probe_timeout("a:1", 0.0, 2.0) == 2.0, "an up node: the full deadline"
    assert fleet.probe_timeout("new:1", 0.0, 2.0) == 2.0, "a node not asked yet: the full deadline"
    assert fleet.probe_timeout("b:1", 4.9, 2.0) is None, "down 4.9 s ago: not asked again yet"
    assert fleet.probe_timeout("b:1", 5.0, 2.0) == _fleet.DOWN_PROBE_TIMEOUT_SECS == 0.25
    # A refresh that did not ask b keeps it as it was (down, same reason, same time).
    fleet.apply(["a:1", "b:1"], {"a:1": report("a", 1)}, 3.0)
    assert b.down and b.unreachable and "refused" in b.error and b.probed_at == 0.0 and not a.down
    fleet.apply(["a:1", "b:1"], {"a:1": report("a", 1), "b:1": report("b", 2)}, 6.0)
    assert not b.down and fleet.probe_timeout("b:1", 6.0, 2.0) == 2.0


def test_a_create_waiting_for_a_slot_reasks_every_refresh_and_uses_its_whole_timeout(monkeypatch):
    policy = swe_env.RetryPolicy()
    assert _fleet.round_wait(policy, None, 1.0, 30.0) == 1.0, "no hint: ask again after refresh_secs"
    assert _fleet.round_wait(policy, None, 1.0, 0.3) == 0.3, "the last wait is cut to what is left"
    assert 0.5 <= _fleet.round_wait(policy, 0.5, 1.0, 30.0) <= 0.5 * 1.2, "the server's hint, with jitter"
    assert _fleet.round_wait(policy, None, 0.0, 30.0) == _fleet.MIN_WAIT_SECS
    # A fleet where every node stays full: the create re-asks about every refresh_secs until its timeout.
    client = swe_env.Client(["10.0.0.1:1", "10.0.0.2:1"], None, refresh_secs=0.1)
    asked = []

    def refresh(force=False):
        asked.append(time.monotonic())
        client._fleet.apply(
            ["10.0.0.1:1", "10.0.0.2:1"],
            {"10.0.0.1:1": report("a", 0), "10.0.0.2:1": report("b", 0)},
            time.monotonic(),
        )

    monkeypatch.setattr(client, "_refresh", refresh)
    started = time.monotonic()
    with pytest.raises(errors.ResourceExhausted, match="no node of the fleet has a free slot"):
        client.create_episode("t", timeout=1.0)
    took = time.monotonic() - started
    assert 1.0 <= took < 1.3, took
    assert 9 <= len(asked) <= 12, f"re-asked every refresh_secs (0.1 s), then once more at the end: {len(asked)}"
    client.close()


def test_malformed_episode_ids_are_invalid_arguments_and_old_ids_say_why():
    assert _fleet.unroutable("n1.ep-00") is None
    assert isinstance(_fleet.unroutable(""), errors.InvalidArgument)
    assert isinstance(_fleet.unroutable("hello"), errors.InvalidArgument)
    assert isinstance(_fleet.unroutable(".ep-1"), errors.InvalidArgument)
    old = _fleet.unroutable("ep-0123abcd")
    assert type(old) is errors.Unavailable and "older than fleet support" in str(old)
    # Raised before any call (no server needed), for sync and async clients alike.
    with swe_env.Client(["10.0.0.1:1", "10.0.0.2:1"], None) as client:
        with pytest.raises(errors.InvalidArgument, match="empty episode id") as empty:
            client.step("", bash("true"), request_id="r-1")
        assert empty.value.request_id == "r-1" and empty.value.method == "Step"
        with pytest.raises(errors.InvalidArgument, match="'hello'"):
            client.close_episode("hello")

    async def main():
        async with swe_env.AsyncClient(["10.0.0.1:1", "10.0.0.2:1"], None) as client:
            with pytest.raises(errors.InvalidArgument):
                await client.trajectory("")
            with pytest.raises(errors.Unavailable, match="older than fleet support"):
                await client.step("ep-00", bash("true"))

    asyncio.run(main())


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


@pytest.fixture()
def other_token_node(tmp_path):
    """A fourth server, started here, that holds ANOTHER token: (address, node id). Stopped at the end."""
    directory = tmp_path / "other-token"
    directory.mkdir()
    (directory / "token").write_text("another-token-not-the-fleets\n")
    environment = {k: v for k, v in os.environ.items() if k != "SWE_ENV_TOKEN"}
    command = [env("SWE_ENV_BIN"), "serve", "--listen", "127.0.0.1:0", "--node-id", "other-token", "--tasks", "fixtures"]
    command += ["--token-file", str(directory / "token"), "--trajectory-dir", str(directory / "trajectories")]
    command += ["--max-episodes", "8"]
    with open(directory / "server.log", "w") as log:
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=environment)
    try:
        address = None
        for line in server.stdout:
            if line.startswith("listening tcp "):
                address = line.split()[2]
            if line.startswith("owner "):
                break
        assert address, (directory / "server.log").read_text()
        yield address, "other-token"
    finally:
        server.terminate()
        assert server.wait(timeout=30) == 0, (directory / "server.log").read_text()


def test_a_node_refusing_the_token_is_down_with_that_reason_and_creates_go_to_the_others(
    token, task_id, fleet_nodes, other_token_node
):
    other, _ = other_token_node
    addresses = [other] + [a for a, _, _, _ in fleet_nodes[:2]]
    with swe_env.Client(addresses, token, refresh_secs=0.5) as client:
        view = client.nodes()  # no exception: the refusing node is one node's state
        assert view[0].address == other and view[0].down and "UNAUTHENTICATED" in view[0].error, view
        assert not any(v.down for v in view[1:]), view
        # It would have the most free slots (8): the creates go to the others anyway; tasks are listed.
        assert client.list_tasks()
        episodes = [client.episode(task_id, max_turns=4) for _ in range(2)]
        try:
            assert {_fleet.node_of(ep.id) for ep in episodes} <= {n for _, n, _, _ in fleet_nodes[:2]}
            for ep in episodes:
                assert "tok" in ep.step(bash("echo tok")).observation.text, "steps on healthy nodes are untouched"
        finally:
            for ep in episodes:
                ep.close()
        # An episode id of that node: no "lost" verdict, the error names the node's reason.
        with pytest.raises(errors.Unavailable, match="UNAUTHENTICATED") as foreign:
            client.step("other-token.ep-00000000000000000000000000000000", bash("true"))
        assert not isinstance(foreign.value, errors.NodeUnavailable)

    async def only_refusing():
        async with swe_env.AsyncClient([other], token) as client:
            with pytest.raises(errors.Unauthenticated, match=f"{other} \\(down: UNAUTHENTICATED"):
                await client.create_episode(task_id, timeout=5)
            assert (await client.nodes())[0].down

    started = time.monotonic()
    asyncio.run(only_refusing())
    assert time.monotonic() - started < 3, "no usable node and waiting cannot help: raised at once"


def test_a_create_refused_by_a_draining_node_leaves_its_live_episodes_working(token, task_id, fleet_nodes):
    """The fourth server (--max-episodes 3, --shutdown-grace-secs 20) is SIGTERMed here: while it drains, a create
    bounced off it (UNAVAILABLE) goes to another node, and the episode living on it still steps and closes."""
    drain, drain_node, drain_pid = env("SWE_ENV_DRAIN"), env("SWE_ENV_DRAIN_NODE"), int(env("SWE_ENV_DRAIN_PID"))
    first, first_node = fleet_nodes[0][0], fleet_nodes[0][1]  # max 2
    addresses = [drain, first]

    async def main():
        async with swe_env.AsyncClient(addresses, token, refresh_secs=10) as aclient:
            with swe_env.Client(addresses, token, refresh_secs=10) as client:
                # Free 3 and 2: the drain node, then (2 and 2, fewer placed) the first.
                e1 = client.episode(task_id, max_turns=16)
                e2 = client.episode(task_id, max_turns=16)
                assert (_fleet.node_of(e1.id), _fleet.node_of(e2.id)) == (drain_node, first_node)
                assert [(v.node_id, v.free) for v in await aclient.nodes()] == [(drain_node, 2), (first_node, 1)]
                os.kill(drain_pid, signal.SIGTERM)
                with swe_env.Client(addresses, token, refresh_secs=0) as watcher:
                    deadline = time.monotonic() + 10
                    while not watcher.nodes()[0].draining:
                        assert time.monotonic() < deadline, watcher.nodes()
                        time.sleep(0.05)
                # Both clients still think the drain node has the most free slots (reports cached 10 s).
                e3 = client.create_episode(task_id, max_turns=4)
                assert _fleet.node_of(e3.episode_id) == first_node, "bounced off the draining node"
                view = {v.node_id: v for v in client.nodes()}
                assert view[drain_node].draining and not view[drain_node].down, view
                out = e1.step(bash("echo during-drain"))
                assert "during-drain" in out.observation.text, "the live episode steps during the grace period"
                client.close_episode(e3.episode_id)
                a1 = await aclient.create_episode(task_id, max_turns=4)
                assert _fleet.node_of(a1.episode_id) == first_node, "the async client bounced off it too"
                view = {v.node_id: v for v in await aclient.nodes()}
                assert view[drain_node].draining and not view[drain_node].down, view
                out = await aclient.step(e1.id, bash("echo async-during-drain"))
                assert "async-during-drain" in out.observation.text
                await aclient.close_episode(a1.episode_id)
                e2.close()
                e1.close()  # closed on the draining node, within the grace period

    asyncio.run(main())


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
            assert f"episode {ep.id} is lost unless the node comes back" in text, text
            assert error.value.request_id, "the step's request id, to retry it at most once should the node return"
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
            with pytest.raises(errors.ResourceExhausted, match=rf"{victim}@{victim_address} \(down: "):
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
