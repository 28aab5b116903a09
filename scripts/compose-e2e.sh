#!/usr/bin/env bash
# The real thing: build the image, run deploy/docker-compose.yml under a container
# engine, check a round against the plaintext rule, crash a party and check that its
# restart policy and durable state bring a round through, check the metrics, tear down.
#
#   bash scripts/compose-e2e.sh            (as root, or a user allowed to run docker)
#
# Steps (each timed; the summary prints the image size and every step's seconds):
#  1. engine    a running Docker engine; if none, installs docker.io (apt) when missing
#               and starts dockerd with {"storage-driver": "vfs", "iptables": false}
#               when /etc/docker/daemon.json does not exist yet
#  2. base      SECAGG_E2E_BASE_IMAGE if set; else python:3.11-slim if present or
#               pullable; else a Debian bookworm base made here (debootstrap, python3
#               from apt, this host's extra CA certificates, `docker import`), cached
#  3. build     deploy/Dockerfile (--network host); torch's CPU wheel from pip's
#               find-links directory when it has torch 2.13.0+cpu (served on loopback),
#               else PyTorch's CPU index, the Dockerfile's default
#  4. up        `docker-compose up -d` of the real file with a small demo; waits for
#               every health check; the demo `workers` round must exit 0 (--check)
#  5. metrics   server A's and B's /metrics (HTTPS) show the round: rounds done,
#               submissions accepted, 2PC bytes
#  6. crash     a round is opened and half its workers submit; server B's process is
#               SIGKILLed (a crash, not `docker stop`); Docker's restart policy brings
#               it back, it reloads the shares from its state volume, A rebuilds the
#               MPC session; the other half submit; the result must equal the
#               plaintext rule's, and the shares from before the crash must be in it
#  7. down      `docker-compose down -v` (also on failure, unless SECAGG_E2E_KEEP=1)
# Idempotent: a previous run's project is removed first; images are reused.
set -euo pipefail
cd "${SECAGG_E2E_ROOT:-$(dirname "$0")/..}"
ROOT=$PWD
PROJECT=${SECAGG_E2E_PROJECT:-secagg-e2e}
IMAGE=${SECAGG_E2E_IMAGE:-secagg:e2e}
BASE_CACHE=secagg-e2e-base:bookworm-py311
WORK=$(mktemp -d /tmp/secagg-e2e.XXXXXX)
export SECAGG_IMAGE=$IMAGE
# a small demo: the point is the wiring (2 shared cores in CI)
export SECAGG_WORKERS=${SECAGG_WORKERS:-8} SECAGG_DEMO_DIM=${SECAGG_DEMO_DIM:-1000}
export SECAGG_DEMO_BYZANTINE=${SECAGG_DEMO_BYZANTINE:-2} SECAGG_DEMO_F=${SECAGG_DEMO_F:-2}
export SECAGG_DEMO_RULE=${SECAGG_DEMO_RULE:-multi-krum} SECAGG_MPC_TIMEOUT_S=${SECAGG_MPC_TIMEOUT_S:-180}
# the host's published ports must not collide with anything else on this machine
export SECAGG_PUBLISH_ADDR=127.0.0.1 SECAGG_PUBLIC_A_PORT=${SECAGG_PUBLIC_A_PORT:-55051}
export SECAGG_PUBLIC_B_PORT=${SECAGG_PUBLIC_B_PORT:-55052} SECAGG_PUBLIC_ADMIN_PORT=${SECAGG_PUBLIC_ADMIN_PORT:-55061}

# compose v1 gives up on the engine after 60 s; removing a container on vfs under load
# can take longer (seen: "An HTTP request took too long to complete")
export COMPOSE_HTTP_TIMEOUT=${COMPOSE_HTTP_TIMEOUT:-600} DOCKER_CLIENT_TIMEOUT=${DOCKER_CLIENT_TIMEOUT:-600}

declare -a STEPS=()
T_ALL=$(date +%s.%N)
T_STEP=$T_ALL
log() { echo "[compose-e2e $(date +%H:%M:%S)] $*" >&2; }
die() { log "FAILED: $*"; exit 1; }
step() {  # step NAME: close the previous step's clock, start this one
  local now; now=$(date +%s.%N)
  if [ -n "${CUR:-}" ]; then STEPS+=("$CUR $(awk -v a="$T_STEP" -v b="$now" 'BEGIN{printf "%.1f", b-a}')"); fi
  CUR=$1; T_STEP=$now; log "== $1"
}

if command -v docker-compose >/dev/null 2>&1; then DC=(docker-compose)
elif docker compose version >/dev/null 2>&1; then DC=(docker compose)
else DC=(); fi
compose() { "${DC[@]}" -p "$PROJECT" -f deploy/docker-compose.yml "$@"; }
leftovers() {
  echo "$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")$(docker volume ls -q \
    --filter "label=com.docker.compose.project=$PROJECT")"
}
teardown() {  # down, retried; then wait until the engine has really removed everything
  # (compose v1 may return while vfs is still deleting "marked for removal" containers)
  for _ in 1 2 3; do
    compose down -v --remove-orphans >"$WORK/down.log" 2>&1 && break
    sleep 2
  done
  for _ in $(seq 300); do [ -z "$(leftovers)" ] && return 0; sleep 1; done
  cat "$WORK/down.log" >&2
  return 1
}

SERVER_PID=""
cleanup() {
  local rc=$?
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  if [ "${SECAGG_E2E_KEEP:-0}" != 1 ] && [ ${#DC[@]} -gt 0 ] && docker info >/dev/null 2>&1; then
    if [ $rc -ne 0 ]; then
      log "logs of the failed run (last lines per service):"
      compose logs --no-color --tail 30 2>&1 | tail -200 >&2 || true
    fi
    teardown || log "could not remove everything: $(leftovers)"
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT

# ------------------------------------------------------------------ 1. engine
step engine
if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null 2>&1; then
    command -v apt-get >/dev/null || die "no Docker engine and no apt-get: install Docker"
    log "installing docker.io and docker-compose (Debian packages)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      docker.io docker-compose >/dev/null
  fi
  if [ ! -f /etc/docker/daemon.json ]; then
    # vfs: works on any filesystem (also inside a container); iptables off: hosts
    # whose kernel or sandbox refuses Docker's rules
    mkdir -p /etc/docker
    echo '{"storage-driver": "vfs", "iptables": false}' > /etc/docker/daemon.json
  fi
  log "starting dockerd (log: /var/log/secagg-e2e-dockerd.log)"
  (setsid nohup dockerd >/var/log/secagg-e2e-dockerd.log 2>&1 &)
  for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || die "dockerd did not come up; see /var/log/secagg-e2e-dockerd.log"
fi
if [ ${#DC[@]} -eq 0 ]; then
  command -v docker-compose >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends docker-compose >/dev/null; }
  DC=(docker-compose)
fi
log "engine $(docker version --format '{{.Server.Version}}'), $(docker info --format '{{.Driver}}') storage; compose: ${DC[*]}"

# -------------------------------------------------------------------- 2. base
step base
BASE=${SECAGG_E2E_BASE_IMAGE:-}
if [ -z "$BASE" ]; then
  if docker image inspect python:3.11-slim >/dev/null 2>&1 \
     || timeout 60 docker pull -q python:3.11-slim >/dev/null 2>&1; then
    BASE=python:3.11-slim
  elif docker image inspect "$BASE_CACHE" >/dev/null 2>&1; then
    BASE=$BASE_CACHE
  else
    log "no registry: making $BASE_CACHE with debootstrap (Debian bookworm, python3.11)"
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends debootstrap >/dev/null
    R=$WORK/rootfs
    debootstrap --variant=minbase bookworm "$R" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
      || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    chroot "$R" /bin/sh -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update -qq \
      && apt-get install -y -qq --no-install-recommends python3 python3-pip python-is-python3 ca-certificates \
      && apt-get clean && rm -rf /var/lib/apt/lists/*' >"$WORK/chroot.log" 2>&1 \
      || { tail -20 "$WORK/chroot.log" >&2; die "python3 in the base image"; }
    # this host's own CAs (e.g. a TLS-inspecting egress proxy) so that pip works in builds
    if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
      cp /usr/local/share/ca-certificates/*.crt "$R/usr/local/share/ca-certificates/"
      chroot "$R" update-ca-certificates >/dev/null 2>&1
    fi
    rm -f "$R"/usr/lib/python3.*/EXTERNALLY-MANAGED  # pip installs system-wide, as in python:3.11-slim
    tar -C "$R" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_CACHE" >/dev/null
    rm -rf "$R"
    BASE=$BASE_CACHE
  fi
fi
log "base image: $BASE"

# ------------------------------------------------------------------- 3. build
step build
BUILD_ARGS=(--build-arg "BASE_IMAGE=$BASE")
FIND_LINKS=$(pip config list 2>/dev/null | sed -n "s/^[a-z:.]*find-links='\(.*\)'$/\1/p" | head -1)
if [ -n "$FIND_LINKS" ] && ls "$FIND_LINKS"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
  # a fixed port by default: the URL is part of the build cache's key of the torch layer
  PORT=${SECAGG_E2E_WHEEL_PORT:-18765}
  if ! python3 -c "import socket; socket.socket().bind(('127.0.0.1', $PORT))" 2>/dev/null; then
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  fi
  python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$FIND_LINKS" >/dev/null 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 50); do python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/')" 2>/dev/null && break; sleep 0.1; done
  BUILD_ARGS+=(--build-arg "TORCH_PIP_ARGS=--find-links http://127.0.0.1:$PORT/")
  log "torch from $FIND_LINKS (served on 127.0.0.1:$PORT)"
fi
docker build --network host -f deploy/Dockerfile "${BUILD_ARGS[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log" >&2; die "docker build"; }
[ -n "$SERVER_PID" ] && { kill "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; }
# the previous build of this tag, now untagged: vfs keeps a full copy per layer
docker image prune -f >/dev/null 2>&1 || true
SIZE=$(docker image inspect --format '{{.Size}}' "$IMAGE")
log "image $IMAGE: $((SIZE / 1000000)) MB"

# ---------------------------------------------------------------------- 4. up
step up
teardown || die "a previous run's containers or volumes could not be removed: $(leftovers)"
# `up` waits for each dependency's condition (certs completed, parties healthy)
compose up -d --no-build >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "compose up"; }
cid() { compose ps -q "$1"; }
W=$(cid workers)
[ -n "$W" ] || die "the workers service did not start"
RC=$(timeout 600 docker wait "$W") || die "the demo round did not end within 600 s"
docker logs "$W" 2>&1 | grep -v '^\s*$' | tail -5 >&2
[ "$RC" = 0 ] || die "the demo round exited $RC (its --check compares with the plaintext rule)"
for s in server-a server-b dealer edge-a edge-b admin-a; do
  h=$(docker inspect --format '{{.State.Health.Status}}' "$(cid $s)")
  [ "$h" = healthy ] || die "$s is $h"
done
log "demo round: secure aggregate equals the plaintext rule's; all six services healthy"

# ----------------------------------------------------------------- 5. metrics
step metrics
metric() {  # metric SERVICE PORT_VAR DEFAULT SAMPLE LABELS -> value
  compose exec -T "$1" python -c "
import sys
from secagg import metrics
s = metrics.parse(metrics.scrape('https://127.0.0.1:$2/metrics', '/run/secagg/$1/ca.pem'))
print(int(metrics.value(s, '$3', **dict(kv.split('=') for kv in '$4'.split(',') if kv))))"
}
for spec in "server-a 9464" "server-b 9465"; do
  set -- $spec
  done_n=$(metric "$1" "$2" secagg_rounds_total state=done)
  acc=$(metric "$1" "$2" secagg_submissions_total result=accepted)
  b=$(metric "$1" "$2" secagg_bytes_total phase=distances,link=server_to_server)
  log "$1 metrics: rounds done $done_n, submissions accepted $acc, distance-phase bytes $b"
  [ "$done_n" -ge 1 ] && [ "$acc" -ge "$SECAGG_WORKERS" ] && [ "$b" -gt 0 ] || die "$1's counters did not move"
done

# ------------------------------------------------------------------- 6. crash
step crash
run_round() {
  compose run --rm --no-deps -T -e SECAGG_WORKERS -e SECAGG_DEMO_DIM -e SECAGG_DEMO_RULE \
    -e SECAGG_DEMO_F workers python - "$1" <deploy/e2e_round.py
}
run_round open || die "opening the crash round"
B=$(cid server-b)
RESTARTS=$(docker inspect --format '{{.RestartCount}}' "$B")
PID=$(docker inspect --format '{{.State.Pid}}' "$B")
log "SIGKILL to server-b's container (host pid $PID)"
kill -KILL "$PID"
for _ in $(seq 600); do
  [ "$(docker inspect --format '{{.RestartCount}}' "$B")" -gt "$RESTARTS" ] \
    && [ "$(docker inspect --format '{{.State.Health.Status}}' "$B")" = healthy ] && break
  sleep 0.5
done
[ "$(docker inspect --format '{{.RestartCount}}' "$B")" -gt "$RESTARTS" ] || die "server-b was not restarted"
[ "$(docker inspect --format '{{.State.Health.Status}}' "$B")" = healthy ] || die "server-b did not become healthy"
log "server-b restarted by its restart policy and healthy again"
run_round finish || die "the round after the crash"
REBUILDS=$(metric server-a 9464 secagg_mpc_session_rebuilds_total "")
log "server A rebuilt the MPC session $REBUILDS time(s)"
[ "$REBUILDS" -ge 1 ] || die "server A's metrics show no session rebuild"

# -------------------------------------------------------------------- 7. down
step down
# judged by what is left, not by compose's exit status ("No such container" races)
teardown || die "left behind after down: $(leftovers)"
step end
echo "compose-e2e: PASSED in $(awk -v a="$T_ALL" -v b="$(date +%s.%N)" 'BEGIN{printf "%.0f", b-a}') s; image $IMAGE $((SIZE / 1000000)) MB (base $BASE)"
for s in "${STEPS[@]}"; do echo "  step $s s"; done
