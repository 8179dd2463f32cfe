"""Side-by-side speed of swe-env and its peers on one fixture image, interleaved (driven by scripts/bench-peers.sh).

Runners compared, each on its own container of the same image, in one process, round robin with equal sample
counts (the order rotates every round so no runner always goes first):

- swe-env: the gRPC Step of a live episode from this Python client (stubs generated from proto/), the full step
  (parse -> tool -> render -> durable trajectory append), over loopback TCP;
- mini-swe-agent: `DockerEnvironment.execute` (one `docker exec` CLI call per command);
- SWE-ReX: `DockerDeployment` + `run_in_session` on a bash session (HTTP to `swerex-remote` in the container);
- docker exec: the plain `docker exec` CLI, the floor every CLI-based runner pays.

Start rows time "start -> first command returned" (`true`): CreateEpisode + Step (cold; warm after Prewarm when
the proto has it), `DockerEnvironment(...)` + execute, `DockerDeployment.start` + create_session +
run_in_session, and `docker run -d` + `docker exec`. Clean-up after each start is not timed.

Every container this driver starts carries the label given by --label; the shell script removes any that are left
(trap on exit), and this driver removes its own in `finally` blocks.
"""

import argparse
import asyncio
import json
import logging
import os
import platform
import subprocess
import sys
import time
import uuid
from importlib import metadata

os.environ.setdefault("SWE_REX_LOG_STREAM_LEVEL", "WARNING")

import grpc  # noqa: E402

from swe_env.v1 import env_pb2, env_pb2_grpc  # noqa: E402

SWE_ENV = "swe-env gRPC Step"
MINI = "mini-swe-agent"
SWEREX = "SWE-ReX"
FLOOR = "docker exec (floor)"

START_COLD = "swe-env CreateEpisode (cold)"
START_WARM = "swe-env CreateEpisode (warm)"
START_MINI = "mini-swe-agent env start"
START_SWEREX = "SWE-ReX deployment start"
START_FLOOR = "docker run + exec (floor)"

REPO_DIR = "/testbed"
COMMANDS = ["true", "ls", "cat README.md"]


def log(message):
    print(message, file=sys.stderr, flush=True)


def ms_since(t0):
    return (time.perf_counter_ns() - t0) / 1e6


def percentile(values, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def docker(*args, check=True, timeout=120):
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def rm_container(cid):
    if cid:
        docker("rm", "-f", cid, check=False)


class SweEnv:
    """A client of the server under test."""

    def __init__(self, target, token, task_id):
        self.channel = grpc.insecure_channel(target)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub = env_pb2_grpc.EnvServiceStub(self.channel)
        self.auth = [("authorization", "Bearer " + token)]
        self.task_id = task_id
        methods = env_pb2.DESCRIPTOR.services_by_name["EnvService"].methods_by_name
        self.has_prewarm = "Prewarm" in methods
        self.episode = None
        self.turns_left = 0

    def create(self, max_turns=1024):
        created = self.stub.CreateEpisode(
            env_pb2.CreateEpisodeRequest(
                task_id=self.task_id,
                tool_format=env_pb2.TOOL_FORMAT_TEXT,
                budgets=env_pb2.Budgets(max_turns=max_turns),
                labels={"bench": "bench-peers"},
            ),
            metadata=self.auth,
        )
        return created.episode_id, created.budget.remaining_turns, getattr(created, "warm", False)

    def step(self, episode_id, command):
        out = self.stub.Step(
            env_pb2.StepRequest(episode_id=episode_id, text="<tool: bash>\n" + command + "\n</tool>"),
            metadata=self.auth,
        )
        if out.observation.tool_error or out.observation.format_error:
            raise RuntimeError(f"swe-env step {command!r} failed: {out.observation.text}")
        return out

    def close(self, episode_id):
        self.stub.CloseEpisode(env_pb2.CloseEpisodeRequest(episode_id=episode_id), metadata=self.auth)

    def prewarm(self, count):
        """Prewarm(task, count), returning once `count` containers are ready."""
        out = self.stub.Prewarm(
            env_pb2.PrewarmRequest(task_id=self.task_id, count=count, wait=True, wait_timeout_ms=120_000),
            metadata=self.auth,
        )
        if out.ready < count:
            raise RuntimeError(
                f"Prewarm({self.task_id}, {count}) returned with {out.ready} ready after {out.waited_ms} ms"
            )
        return out

    # Step runner: one live episode, replaced (untimed) before its turn budget runs out.
    def setup(self):
        self.episode, self.turns_left, _ = self.create()

    def run(self, command):
        if self.turns_left < 2:
            self.close(self.episode)
            self.setup()
        out = self.step(self.episode, command)
        self.turns_left = out.budget.remaining_turns
        return out.observation.text

    def teardown(self):
        if self.episode:
            self.close(self.episode)
            self.episode = None


class Mini:
    def __init__(self, image, label):
        self.image = image
        self.label = label
        self.env = None

    def new_env(self):
        from minisweagent.environments.docker import DockerEnvironment

        return DockerEnvironment(
            image=self.image,
            cwd=REPO_DIR,
            run_args=["--rm", "--label", self.label],
            logger=logging.getLogger("bench-peers.mini"),
        )

    @staticmethod
    def dispose(env):
        # Synchronous removal (mini-swe-agent's own cleanup is `docker stop` in the background, which waits 10 s for
        # `sleep` as PID 1 and would load the engine during the next samples).
        rm_container(env.container_id)
        env.container_id = None

    def setup(self):
        self.env = self.new_env()

    def run(self, command):
        out = self.env.execute({"command": command})
        if out["returncode"] != 0:
            raise RuntimeError(f"mini-swe-agent execute {command!r} failed: {out}")
        return out["output"]

    def teardown(self):
        if self.env is not None:
            self.dispose(self.env)
            self.env = None


class SweRex:
    def __init__(self, image, label, loop):
        self.image = image
        self.label = label
        self.loop = loop
        self.deployment = None

    async def new_deployment(self):
        from swerex.deployment.docker import DockerDeployment
        from swerex.runtime.abstract import CreateBashSessionRequest

        deployment = DockerDeployment(image=self.image, pull="never", docker_args=["--label", self.label])
        try:
            await deployment.start()
            await deployment.runtime.create_session(CreateBashSessionRequest())
        except BaseException:
            await deployment.stop()
            raise
        return deployment

    async def run_async(self, deployment, command):
        from swerex.runtime.abstract import BashAction

        out = await deployment.runtime.run_in_session(BashAction(command=command, check="silent"))
        if out.exit_code != 0:
            raise RuntimeError(f"SWE-ReX run_in_session {command!r} failed: {out}")
        return out.output

    def setup(self):
        self.deployment = self.loop.run_until_complete(self.new_deployment())
        self.run("cd " + REPO_DIR)

    def run(self, command):
        return self.loop.run_until_complete(self.run_async(self.deployment, command))

    def teardown(self):
        if self.deployment is not None:
            self.loop.run_until_complete(self.deployment.stop())
            self.deployment = None


class Floor:
    def __init__(self, image, label):
        self.image = image
        self.label = label
        self.cid = None

    def new_container(self):
        return docker("run", "-d", "--rm", "--label", self.label, self.image, "sleep", "infinity").stdout.strip()

    @staticmethod
    def exec(cid, command):
        result = subprocess.run(
            ["docker", "exec", "-w", REPO_DIR, cid, "bash", "-c", command],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"docker exec {command!r} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def setup(self):
        self.cid = self.new_container()

    def run(self, command):
        return self.exec(self.cid, command)

    def teardown(self):
        rm_container(self.cid)
        self.cid = None


def rotate(items, k):
    k %= len(items)
    return items[k:] + items[:k]


def bench_steps(runners, rounds):
    """Interleaved: every round runs every command on every runner, in a rotating order."""
    samples = {(c, name): [] for c in COMMANDS for name in runners}
    names = list(runners)
    for r in range(rounds):
        for command in COMMANDS:
            for name in rotate(names, r):
                t0 = time.perf_counter_ns()
                runners[name].run(command)
                samples[(command, name)].append(ms_since(t0))
    return samples


def check_same_output(runners):
    """Untimed warm-up: each runner runs each command once and must print what `docker exec` prints."""
    for command in COMMANDS:
        # Compared as words: SWE-ReX's shell has a terminal, so `ls` prints columns there.
        expected = " ".join(runners[FLOOR].run(command).split())
        for name, runner in runners.items():
            out = runner.run(command)
            if expected not in " ".join(out.split()):
                raise RuntimeError(f"{name} printed something else for {command!r}: {out[:300]!r}")


def bench_starts(swe_env, image, label, swerex_image, loop, rounds, warm, settle_s, notes, skipped):
    """Time to first command, interleaved round robin. Clean-up after each sample is untimed."""
    mini = Mini(image, label)
    rex = SweRex(swerex_image, label, loop) if swerex_image else None
    floor = Floor(image, label)
    served_warm = {START_COLD: 0, START_WARM: 0}

    def episode_start(row):
        t0 = time.perf_counter_ns()
        episode, _, was_warm = swe_env.create()
        swe_env.step(episode, "true")
        ms = ms_since(t0)
        swe_env.close(episode)
        served_warm[row] += bool(was_warm)
        return ms

    def cold():
        return episode_start(START_COLD)

    def warm_start():
        swe_env.prewarm(1)  # untimed: returns once a container of the task's pool key is ready
        return episode_start(START_WARM)

    def mini_start():
        t0 = time.perf_counter_ns()
        env = mini.new_env()
        try:
            mini_run = env.execute({"command": "true"})
            ms = ms_since(t0)
            if mini_run["returncode"] != 0:
                raise RuntimeError(f"mini-swe-agent first command failed: {mini_run}")
        finally:
            Mini.dispose(env)
        return ms

    def rex_start():
        async def once():
            t0 = time.perf_counter_ns()
            deployment = await rex.new_deployment()
            try:
                await rex.run_async(deployment, "true")
                return ms_since(t0)
            finally:
                await deployment.stop()

        return loop.run_until_complete(once())

    def floor_start():
        t0 = time.perf_counter_ns()
        cid = floor.new_container()
        try:
            Floor.exec(cid, "true")
            return ms_since(t0)
        finally:
            rm_container(cid)

    starters = {START_COLD: cold}
    if warm:
        starters[START_WARM] = warm_start
    starters[START_MINI] = mini_start
    if rex:
        starters[START_SWEREX] = rex_start
    starters[START_FLOOR] = floor_start

    samples = {name: [] for name in starters}
    names = list(starters)
    for r in range(rounds):
        for name in rotate(names, r):
            try:
                samples[name].append(starters[name]())
            except Exception as error:
                if name in (START_COLD, START_WARM, START_FLOOR):
                    raise
                # A peer that fails to start is dropped (its row too, so sample counts stay equal) and named.
                skipped.append({"runner": name, "reason": f"a start failed in round {r + 1}: {error}"})
                names.remove(name)
                del samples[name]
            time.sleep(settle_s)
    if served_warm[START_COLD]:
        notes.append(f"{served_warm[START_COLD]} of the {rounds} cold starts were served from a warm pool")
    if warm and served_warm[START_WARM] < rounds:
        notes.append(f"only {served_warm[START_WARM]} of the {rounds} warm starts were served from a warm pool")
    return samples


def versions():
    names = ["mini-swe-agent", "swe-rex", "grpcio", "grpcio-tools", "protobuf"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    engine = docker("version", "--format", "{{.Server.Version}}", check=False)
    out["docker engine"] = engine.stdout.strip() or None
    return out


def rows_for(samples, base, floor):
    rows = []
    for key, values in samples.items():
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        rows.append({"key": key, "n": len(values), "p50_ms": p50, "p99_ms": p99})
    by_key = {r["key"]: r for r in rows}
    for r in rows:
        b = by_key.get(base(r["key"]))
        f = by_key.get(floor(r["key"]))
        r["vs_swe_env_p50"] = r["p50_ms"] / b["p50_ms"] if b else None
        r["vs_floor_p50"] = r["p50_ms"] / f["p50_ms"] if f else None
    return rows


def fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def print_table(title, header, rows, label_cols):
    print(title)
    lines = [header] + [r for r in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for j, line in enumerate(lines):
        cells = []
        for i, cell in enumerate(line):
            cell = str(cell)
            cells.append(cell.ljust(widths[i]) if i < label_cols else cell.rjust(widths[i]))
        print("  " + "  ".join(cells))
        if j == 0:
            print("  " + "  ".join("-" * w for w in widths))
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="swe-env server host:port")
    parser.add_argument("--task-id", required=True)
    parser.add_argument("--image", required=True, help="the task's image, used by every runner")
    parser.add_argument("--swerex-image", default="", help="the image plus swerex-remote; empty: SWE-ReX skipped")
    parser.add_argument("--swerex-skip-reason", default="")
    parser.add_argument("--server-desc", default="", help="what the server under test is (printed)")
    parser.add_argument("--label", required=True, help="KEY=VALUE put on every container this driver starts")
    parser.add_argument("--rounds", type=int, default=100, help="step rounds (each: every command on every runner)")
    parser.add_argument("--start-rounds", type=int, default=10, help="start rounds (each: one start per runner)")
    parser.add_argument("--settle-ms", type=int, default=200, help="pause after each start sample (untimed)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    args = parser.parse_args()
    if args.rounds < 1 or args.start_rounds < 0:
        parser.error("--rounds must be at least 1 and --start-rounds at least 0")

    skipped = []
    if not args.swerex_image:
        skipped.append({"runner": SWEREX, "reason": args.swerex_skip_reason or "no SWE-ReX image"})

    loop = asyncio.new_event_loop()
    token = os.environ.get("BENCH_PEERS_TOKEN")
    if not token:
        parser.error("BENCH_PEERS_TOKEN must hold the server's bearer token (scripts/bench-peers.sh sets it)")
    swe_env = SweEnv(args.target, token, args.task_id)
    runners = {SWE_ENV: swe_env, MINI: Mini(args.image, args.label)}
    if args.swerex_image:
        runners[SWEREX] = SweRex(args.swerex_image, args.label, loop)
    runners[FLOOR] = Floor(args.image, args.label)

    started = []
    try:
        for name, runner in runners.items():
            log(f"bench-peers: starting {name} for the step rows")
            try:
                runner.setup()
                started.append(runner)
            except Exception as error:
                if runner is swe_env or name == FLOOR:
                    raise
                skipped.append({"runner": name, "reason": f"could not start: {error}"})
        runners = {name: r for name, r in runners.items() if r in started}
        check_same_output(runners)
        log(f"bench-peers: step rows, {args.rounds} rounds x {len(COMMANDS)} commands x {len(runners)} runners")
        step_samples = bench_steps(runners, args.rounds)
    finally:
        for runner in started:
            try:
                runner.teardown()
            except Exception as error:  # keep tearing down the others
                log(f"bench-peers: tearing down {type(runner).__name__} failed: {error}")

    notes = []
    warm = swe_env.has_prewarm
    if not warm:
        skipped.append(
            {
                "runner": START_WARM,
                "reason": "the generated proto has no Prewarm RPC (this checkout's server has no warm pools)",
            }
        )
    elif args.start_rounds:
        try:
            swe_env.prewarm(1)
            # Take that container (untimed) so the first cold start finds the pool empty.
            episode, _, _ = swe_env.create()
            swe_env.close(episode)
        except grpc.RpcError as error:
            warm = False
            unimplemented = error.code() == grpc.StatusCode.UNIMPLEMENTED
            hint = " (pools off, or a binary older than proto/: run with --build)" if unimplemented else ""
            skipped.append({"runner": START_WARM, "reason": f"Prewarm: {error.code().name} {error.details()}{hint}"})
    start_samples = {}
    if args.start_rounds:
        log(f"bench-peers: start rows, {args.start_rounds} rounds")
        rex_image = "" if any(s["runner"] == SWEREX for s in skipped) else args.swerex_image
        start_samples = bench_starts(
            swe_env,
            args.image,
            args.label,
            rex_image,
            loop,
            args.start_rounds,
            warm,
            args.settle_ms / 1000,
            notes,
            skipped,
        )
    loop.close()

    step_rows = rows_for(step_samples, lambda k: (k[0], SWE_ENV), lambda k: (k[0], FLOOR))
    start_rows = rows_for(start_samples, lambda k: START_COLD, lambda k: START_FLOOR)
    result = {
        "image": args.image,
        "swerex_image": args.swerex_image or None,
        "task_id": args.task_id,
        "server": args.server_desc,
        "rounds": args.rounds,
        "start_rounds": args.start_rounds,
        "versions": versions(),
        "step": [
            {"command": r["key"][0], "runner": r["key"][1], **{k: v for k, v in r.items() if k != "key"}}
            for r in step_rows
        ],
        "start": [{"runner": r["key"], **{k: v for k, v in r.items() if k != "key"}} for r in start_rows],
        "skipped": skipped,
        "notes": notes,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return

    print("versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()))
    print(f"server: {args.server_desc}")
    print(f"image: {args.image} (task {args.task_id}); SWE-ReX image: {args.swerex_image or '-'}")
    print()
    header = ["command", "runner", "n", "p50 ms", "p99 ms", "p50 / swe-env", "p50 / floor"]
    rows = [
        [r["command"], r["runner"], r["n"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}"]
        + [fmt_ratio(r["vs_swe_env_p50"]), fmt_ratio(r["vs_floor_p50"])]
        for r in result["step"]
    ]
    print_table(f"Step: one command on a live container, interleaved ({args.rounds} rounds)", header, rows, 2)
    if result["start"]:
        header = ["start -> first command", "n", "p50 ms", "p99 ms", "p50 / swe-env cold", "p50 / floor"]
        rows = [
            [r["runner"], r["n"], f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}"]
            + [fmt_ratio(r["vs_swe_env_p50"]), fmt_ratio(r["vs_floor_p50"])]
            for r in result["start"]
        ]
        print_table(f"Start: time to first command, interleaved ({args.start_rounds} rounds)", header, rows, 1)
    for s in skipped:
        print(f"skipped: {s['runner']}: {s['reason']}")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        log("bench-peers: interrupted")
        sys.exit(130)
