#!/usr/bin/env bash
# Builds the Docker image that `--sandbox docker` runs sessions in (spindle-sandbox:latest by
# default) from Debian packages alone: no registry is needed. mmdebstrap makes a root filesystem
# tarball (python3 with matplotlib, numpy, pandas and IPython; bash; nodejs) and `docker import` loads it
# into the engine that DOCKER_HOST points at.
#
#   scripts/sandbox-image.sh                 # build spindle-sandbox:latest
#   scripts/sandbox-image.sh --if-missing    # only when the engine does not have it yet
#   SPINDLE_SANDBOX_IMAGE=me/img:1 scripts/sandbox-image.sh
#
# Needs root (mmdebstrap's root mode) or sudo, and `apt-get install mmdebstrap` (done here when
# missing). Environment: SPINDLE_SANDBOX_IMAGE (tag), SPINDLE_SANDBOX_SUITE (default bookworm),
# SPINDLE_SANDBOX_MIRROR (default: the mirror in this machine's apt sources, else deb.debian.org).
set -euo pipefail

IMAGE=${SPINDLE_SANDBOX_IMAGE:-spindle-sandbox:latest}
SUITE=${SPINDLE_SANDBOX_SUITE:-bookworm}
# The unprivileged user sessions run as when the host runs as root.
SANDBOX_UID=1000

say() { printf '==> %s\n' "$*" >&2; }

if [ "${1:-}" = "--if-missing" ]; then
  if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    exit 0
  fi
fi

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if ! command -v mmdebstrap >/dev/null 2>&1; then
  say "installing mmdebstrap with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mmdebstrap
fi

mirror=${SPINDLE_SANDBOX_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi

work=$(mktemp -d)
trap '$SUDO rm -rf "$work"' EXIT
tarball="$work/rootfs.tar"

say "building the root filesystem of $IMAGE ($SUITE from $mirror)"
# No docs, man pages or translations: about a third smaller. The user `sandbox` (uid 1000) owns
# nothing in the image; /work and /tmp are tmpfs mounts at run time.
$SUDO mmdebstrap --variant=apt --mode=root --format=tar \
  --include=python3,python3-matplotlib,python3-numpy,python3-pandas,python3-ipython,bash,nodejs,coreutils,procps \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook="chroot \"\$1\" useradd --uid $SANDBOX_UID --user-group --home-dir /work --no-create-home --shell /bin/bash sandbox" \
  --customize-hook='mkdir -p "$1/work" && chmod 1777 "$1/work"' \
  --customize-hook='rm -rf "$1/var/lib/apt/lists/"* "$1/var/cache/apt/"*' \
  "$SUITE" "$tarball" "$mirror"

say "importing $IMAGE into the engine (docker import)"
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "USER $SANDBOX_UID:$SANDBOX_UID" \
  --change 'WORKDIR /work' \
  --change 'LABEL spindle.sandbox=1' \
  --change 'CMD ["/bin/bash"]' \
  "$tarball" "$IMAGE" >/dev/null
say "built $IMAGE ($(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
