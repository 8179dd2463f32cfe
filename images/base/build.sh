#!/usr/bin/env bash
# Builds swe-env/base:bookworm from Debian packages: debootstrap into a temp dir, then `docker import`.
# The mirror is read from this machine's apt configuration (never hard-coded). Idempotent: does nothing when
# the image exists, unless FORCE=1.
#
# Env: IMAGE (default swe-env/base:bookworm), FORCE=1 to rebuild, MIRROR to override the apt mirror,
#      SUITE (default bookworm).
set -euo pipefail
IMAGE=${IMAGE:-swe-env/base:bookworm}
SUITE=${SUITE:-bookworm}

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE exists (FORCE=1 rebuilds)"
  exit 0
fi

mirror_from_apt() {
  # deb822 sources first, then the one-line format.
  local uri
  uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v -- '-security' | head -n1 || true)
  if [ -z "$uri" ]; then
    uri=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | grep -v -- '-security' | awk '{ for (i=2;i<=NF;i++) if ($i !~ /^\[/) { print $i; exit } }' | head -n1 || true)
  fi
  printf '%s' "$uri"
}
MIRROR=${MIRROR:-$(mirror_from_apt)}
if [ -z "$MIRROR" ]; then
  echo "error: no Debian mirror found in /etc/apt; set MIRROR=<url>" >&2
  exit 1
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }

root=$(mktemp -d /var/tmp/swe-env-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
pkgs=python3,python3-venv,python3-pip,python3-pytest,git,patch,ca-certificates,procps,less,file
echo "debootstrap $SUITE from the configured mirror into $root"
debootstrap --variant=minbase --include="$pkgs" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 || {
  tail -n 30 "$root.log" >&2; echo "error: debootstrap failed (log: $root.log)" >&2; exit 1; }
# Keep the image small and deterministic-ish.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
# A git identity so commits inside task images work without set-up.
chroot "$root" git config --system user.email "swe-env@localhost"
chroot "$root" git config --system user.name "swe-env"
chroot "$root" git config --system init.defaultBranch main
tar -C "$root" -c . | docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENV LANG=C.UTF-8' \
  -c 'CMD ["/bin/bash"]' - "$IMAGE"
rm -f "$root.log"
echo "built $IMAGE"
