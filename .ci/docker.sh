#!/usr/bin/env bash
# Prepares the docker sandbox backend on a fresh Debian 12 machine, as root. Idempotent.
# Call it AFTER the project is installed (pip install -e '.[dev]'): the image is built
# with `trajdistill sandbox build-image`, which needs no registry (debootstrap + docker import).
set -euo pipefail

WAIT_S="${TRAJDISTILL_DOCKERD_WAIT_S:-60}"
IMAGE="${TRAJDISTILL_SANDBOX_IMAGE:-trajdistill-sandbox:latest}"

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q docker.io debootstrap
fi

if ! docker info >/dev/null 2>&1; then
  # No init system in CI containers: start the engine by hand.
  log="${TMPDIR:-/tmp}/dockerd.log"
  echo "starting dockerd (log: $log)"
  nohup dockerd >"$log" 2>&1 &
  for _ in $(seq "$WAIT_S"); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    echo "error: dockerd did not answer within ${WAIT_S}s; last log lines:" >&2
    tail -n 5 "$log" >&2 || true
    exit 1
  fi
fi
echo "docker engine: $(docker version --format '{{.Server.Version}}')"

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  if ! python3 -c "import trajdistill" 2>/dev/null; then
    echo "error: trajdistill is not installed; install the project before .ci/docker.sh" >&2
    exit 1
  fi
  python3 -m trajdistill sandbox build-image --tag "$IMAGE"
fi
echo "sandbox image ready: $IMAGE"
