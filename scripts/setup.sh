#!/usr/bin/env bash
# Prepares a fresh Debian machine for swe-env: Debian packages, a running Docker engine, the base and fixture
# images. Idempotent and quick when everything is already there. Needs root (or sudo) for apt and dockerd.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
command -v iptables >/dev/null 2>&1 || need_pkgs+=(iptables)
command -v patch >/dev/null 2>&1 || need_pkgs+=(patch) # tests/it/apply_reference.rs runs the apply chain on the host
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl) # tests/it/remote_engine.rs makes the TLS certificates of a second dockerd
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium) # tests/it/view.rs loads the HTML report in a headless browser
[ -x /usr/bin/docker-registry ] || need_pkgs+=(docker-registry)
python3 -m venv --help >/dev/null 2>&1 || need_pkgs+=(python3-venv)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "==> starting dockerd"
  log=${DOCKERD_LOG:-/var/log/swe-env-dockerd.log}
  $SUDO sh -c "nohup dockerd >'$log' 2>&1 &"
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "error: dockerd did not come up; see $log" >&2; tail -n 30 "$log" >&2; exit 1; }
fi
echo "==> Docker engine $(docker version --format '{{.Server.Version}}') is up"

echo "==> building images"
bash images/build.sh
