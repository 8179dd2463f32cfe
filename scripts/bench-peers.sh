#!/usr/bin/env bash
# swe-env beside mini-swe-agent, SWE-ReX and plain `docker exec`, on the same fixture image, interleaved in one run.
#
# Run after scripts/setup.sh (fixture images built, dockerd up):
#   scripts/bench-peers.sh [--rounds N] [--start-rounds N] [--settle-ms MS] [--json] [--task ID] [--build]
#     --rounds N        step rounds, each runs every command on every runner (default 100)
#     --start-rounds N  start rounds, each starts every runner once (default 10; 0: no start rows)
#     --settle-ms MS    untimed pause after each start sample (default 200)
#     --json            one JSON document on stdout instead of the tables
#     --task ID         the fixture task whose image every runner uses (default swe-env-fixtures__retrykit-1)
#     --build           run `cargo build --release -p swe-env` first (else only when the binary is missing)
#   BENCH_PEERS_SWEREX_OFFLINE=1: build the SWE-ReX image from host-downloaded wheels (no network in the container)
#
# It installs the pinned peers into a venv under target/bench-peers/ (pip reads the index from this machine's own
# pip configuration), generates the Python gRPC stubs from proto/, builds a SWE-ReX image once (the task image +
# swerex-remote in /opt/swerex; pip runs in a container with the host CA bundle mounted), starts `swe-env serve` on
# a loopback port and runs scripts/bench_peers.py. Every container it starts is labelled and removed on exit (Ctrl-C
# included); the server is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# Tested versions; printed by the driver.
PINS=(mini-swe-agent==2.4.6 swe-rex==1.4.0 grpcio==1.85.3 grpcio-tools==1.85.1)
SWEREX_VERSION=1.4.0

TASK=swe-env-fixtures__retrykit-1
BUILD=0
DRIVER_ARGS=()
JSON=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds | --start-rounds | --settle-ms)
      [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }
      DRIVER_ARGS+=("$1" "$2"); shift 2 ;;
    --json) DRIVER_ARGS+=(--json); JSON=1; shift ;;
    --task)
      [ $# -ge 2 ] || { echo "error: --task needs a fixture instance id" >&2; exit 2; }
      TASK=$2; shift 2 ;;
    --build) BUILD=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "==> $*" >&2; }

WORK=$ROOT/target/bench-peers
VENV=$WORK/venv
RUN_ID=$(date +%s)-$$
RUN_DIR=$WORK/run-$RUN_ID
LABEL_KEY=swe-env-bench-peers
LABEL="$LABEL_KEY=$RUN_ID"
SERVER_PID=
OWNER=

cleanup() {
  local status=$?
  set +e
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    for _ in $(seq 1 300); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "warning: swe-env serve did not stop within 30 s of SIGTERM; killing it" >&2
      kill -KILL "$SERVER_PID"
    fi
    wait "$SERVER_PID" 2>/dev/null
  fi
  local left
  left=$(docker ps -aq --filter "label=$LABEL")
  [ -n "$OWNER" ] && left="$left $(docker ps -aq --filter "label=swe-env.owner=$OWNER")"
  left=$(echo $left)
  if [ -n "$left" ]; then
    docker rm -f $left >/dev/null 2>&1 || echo "warning: could not remove containers $left" >&2
  fi
  # A failed run keeps its directory (server log, trajectories) for a look; a good one leaves nothing.
  if [ "$status" = 0 ]; then rm -rf "$RUN_DIR"; else echo "(server log and trajectories kept in $RUN_DIR)" >&2; fi
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

docker info >/dev/null 2>&1 || { echo "error: the Docker engine is unreachable; run scripts/setup.sh first" >&2; exit 1; }

IMAGE=$(python3 - "$TASK" <<'EOF'
import json, sys
for line in open("images/fixtures/tasks.jsonl"):
    row = json.loads(line)
    if row["instance_id"] == sys.argv[1]:
        print(row["image"])
        break
else:
    sys.exit(f"error: {sys.argv[1]} is not a fixture task (see images/fixtures/tasks.jsonl)")
EOF
)
docker image inspect "$IMAGE" >/dev/null 2>&1 ||
  { echo "error: image $IMAGE is missing; run scripts/setup.sh (it builds the fixture images)" >&2; exit 1; }

# The server binary.
BIN=$ROOT/target/release/swe-env
if [ "$BUILD" = 1 ] || [ ! -x "$BIN" ]; then
  say "building the release binary (cargo build --release -p swe-env)"
  cargo build --release -p swe-env >&2
else
  newer=$(find orchestrator sandbox tools grading model proto -newer "$BIN" \
    \( -name '*.rs' -o -name '*.proto' -o -name Cargo.toml \) | head -n 3)
  [ -z "$newer" ] || echo "warning: $BIN is older than the sources (e.g. $(echo $newer)); pass --build to rebuild" >&2
fi

# The peers and the gRPC tools, pinned.
mkdir -p "$WORK"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.pins" 2>/dev/null)" != "${PINS[*]}" ]; then
  say "creating $VENV with ${PINS[*]}"
  python3 -m venv --clear "$VENV" ||
    { echo "error: python3 -m venv failed; install python3-venv (scripts/setup.sh does)" >&2; exit 1; }
  "$VENV/bin/pip" install --quiet "${PINS[@]}" >&2 ||
    { echo "error: pip install ${PINS[*]} failed: the package index of this machine's pip configuration must be" \
      "reachable (see the pip output above)" >&2; exit 1; }
  echo "${PINS[*]}" >"$VENV/.pins"
fi

# Python stubs from proto/, fresh every run (they follow the checkout).
STUBS=$WORK/stubs
rm -rf "$STUBS" && mkdir -p "$STUBS"
"$VENV/bin/python" -m grpc_tools.protoc -I proto --python_out="$STUBS" --grpc_python_out="$STUBS" \
  proto/swe_env/v1/env.proto

# The SWE-ReX image: the task image plus swerex-remote, built once per task image and SWE-ReX version.
# SWE-ReX starts its server with `swerex-remote --auth-token T || (pip install pipx && pipx run swe-rex ...)` inside
# the container; installing it once here keeps that install out of every start.
image_id=$(docker image inspect --format '{{.Id}}' "$IMAGE" | sed 's/^sha256://' | cut -c1-12)
image_name=$(echo "${IMAGE%:latest}" | tr '/:' '--')
SWEREX_IMAGE="swe-env-bench/swerex-$image_name:$SWEREX_VERSION-$image_id"
SWEREX_SKIP=
# Installs swe-rex into /opt/swerex of a container of $IMAGE and commits it as $SWEREX_IMAGE. $1 = online: the
# container's pip reaches the index (this machine's pip settings and CA bundle are mounted, never committed);
# offline: the wheels are downloaded on the host for the container's Python and installed with --network none.
build_swerex_image() {
  local mode=$1 build_dir=$RUN_DIR/swerex-build-$1 builder=bench-peers-swerex-build-$1-$RUN_ID
  local net=() pip_args="swe-rex==$SWEREX_VERSION"
  mkdir -p "$build_dir"
  echo "export PIP_DISABLE_PIP_VERSION_CHECK=1" >"$build_dir/env"
  if [ "$mode" = online ]; then
    {
      echo "export PIP_CERT=/bench-peers/ca.crt"
      for key in index-url extra-index-url trusted-host; do
        var=PIP_$(echo "$key" | tr 'a-z-' 'A-Z_')
        value=${!var:-$("$VENV/bin/pip" config get "global.$key" 2>/dev/null || true)}
        [ -z "$value" ] || printf 'export %s=%q\n' "$var" "$value"
      done
    } >>"$build_dir/env"
    cp /etc/ssl/certs/ca-certificates.crt "$build_dir/ca.crt" ||
      { echo "no host CA bundle at /etc/ssl/certs/ca-certificates.crt" >"$build_dir/log"; return 1; }
  else
    local pyver
    pyver=$(docker run --rm --label "$LABEL" --network none "$IMAGE" \
      python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') ||
      { echo "the image has no python3" >"$build_dir/log"; return 1; }
    "$VENV/bin/pip" download --quiet --dest "$build_dir/wheels" --only-binary=:all: --python-version "$pyver" \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      "swe-rex==$SWEREX_VERSION" >"$build_dir/log" 2>&1 || return 1
    net=(--network none)
    pip_args="--no-index --find-links /bench-peers/wheels $pip_args"
  fi
  local status=0
  local install=". /bench-peers/env && python3 -m venv /opt/swerex"
  install="$install && /opt/swerex/bin/pip install --quiet --no-cache-dir $pip_args"
  install="$install && ln -sf /opt/swerex/bin/swerex-remote /usr/local/bin/swerex-remote && swerex-remote --version"
  docker run --name "$builder" --label "$LABEL" ${net[@]+"${net[@]}"} -v "$build_dir:/bench-peers:ro" "$IMAGE" \
    sh -c "$install" >>"$build_dir/log" 2>&1 || status=$?
  if [ "$status" = 0 ]; then
    local cmd change=()
    cmd=$(docker image inspect --format '{{json .Config.Cmd}}' "$IMAGE")
    [ "$cmd" = null ] || change=(--change "CMD $cmd")
    docker commit "${change[@]}" "$builder" "$SWEREX_IMAGE" >/dev/null || status=$?
  fi
  docker rm -f "$builder" >/dev/null 2>&1 || true
  return "$status"
}
if ! docker image inspect "$SWEREX_IMAGE" >/dev/null 2>&1; then
  say "building $SWEREX_IMAGE (swe-rex==$SWEREX_VERSION installed in a container of $IMAGE)"
  if [ "${BENCH_PEERS_SWEREX_OFFLINE:-0}" != 1 ] && build_swerex_image online; then
    :
  else
    if [ "${BENCH_PEERS_SWEREX_OFFLINE:-0}" != 1 ]; then
      echo "warning: pip in the container could not install swe-rex" \
        "($(tail -n 2 "$RUN_DIR/swerex-build-online/log" | tr '\n' ' ')); trying host-downloaded wheels" >&2
    fi
    if ! build_swerex_image offline; then
      SWEREX_SKIP="swerex-remote could not be installed in $IMAGE (SWE-ReX runs it inside the container): pip in"
      SWEREX_SKIP="$SWEREX_SKIP the container failed, and so did host-downloaded wheels:"
      SWEREX_SKIP="$SWEREX_SKIP $(tail -n 3 "$RUN_DIR/swerex-build-offline/log" | tr '\n' ' ')"
      echo "warning: $SWEREX_SKIP" >&2
      SWEREX_IMAGE=
    fi
  fi
fi

# The server, on a loopback port.
mkdir -p "$RUN_DIR"
TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
echo "$TOKEN" >"$RUN_DIR/token"
say "starting swe-env serve (log: $RUN_DIR/server.log)"
# With warm pools (the proto has Prewarm), the automatic policy is off so that a cold start stays cold; the warm row
# prewarms explicitly.
config=()
if grep -q 'rpc Prewarm' proto/swe_env/v1/env.proto; then
  printf 'pool:\n  auto:\n    enabled: false\n' >"$RUN_DIR/serve.yaml"
  config=(--config "$RUN_DIR/serve.yaml")
fi
# In its own session: Ctrl-C reaches the driver (which closes its episodes), and the EXIT trap then stops the server.
setsid "$BIN" serve ${config[@]+"${config[@]}"} --listen 127.0.0.1:0 --tasks fixtures --token-file "$RUN_DIR/token" \
  --trajectory-dir "$RUN_DIR/trajectories" >"$RUN_DIR/server.out" 2>"$RUN_DIR/server.log" &
SERVER_PID=$!
ADDR=
for _ in $(seq 1 300); do
  # The owner line comes last: read it first, then the address printed before it.
  OWNER=$(sed -n 's/^owner //p' "$RUN_DIR/server.out" 2>/dev/null || true)
  ADDR=$(sed -n 's/^listening tcp //p' "$RUN_DIR/server.out" 2>/dev/null || true)
  [ -n "$OWNER" ] && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "error: swe-env serve exited (a binary older than the checkout? pass --build); its log:" >&2
    tail -n 30 "$RUN_DIR/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
[ -n "$ADDR" ] && [ -n "$OWNER" ] || { echo "error: swe-env serve did not report its address within 30 s" >&2; exit 1; }

commit=$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- 2>/dev/null || echo '+changes')
SERVER_DESC="$("$BIN" --version) at $commit, release build, default durability"
[ ${#config[@]} = 0 ] || SERVER_DESC="$SERVER_DESC, pool auto policy off (warm row: Prewarm first)"
say "benchmarking on $IMAGE (server $ADDR)"
# mini-swe-agent keeps its global config under target/, not in the user's home, and starts quietly.
export MSWEA_GLOBAL_CONFIG_DIR=$WORK/mini-swe-agent-config MSWEA_SILENT_STARTUP=1
PYTHONPATH=$STUBS BENCH_PEERS_TOKEN=$TOKEN "$VENV/bin/python" scripts/bench_peers.py --target "$ADDR" \
  --task-id "$TASK" --server-desc "$SERVER_DESC" --image "$IMAGE" --swerex-image "$SWEREX_IMAGE" \
  --swerex-skip-reason "$SWEREX_SKIP" --label "$LABEL" ${DRIVER_ARGS[@]+"${DRIVER_ARGS[@]}"}
