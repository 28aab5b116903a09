#!/usr/bin/env bash
# System packages CI needs beyond .venv: a Compose CLI, so that tests/test_compose.py
# can validate deploy/docker-compose.yml (`docker-compose config`; no Docker engine is
# needed for that). Idempotent and quiet: does nothing when a Compose CLI is present.
set -euo pipefail
if command -v docker-compose >/dev/null 2>&1 \
  || { command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; }; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[ci-deps] no apt-get: install docker-compose (or the docker compose plugin) yourself" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "[ci-deps] need root (or sudo) to apt-get install docker-compose" >&2
    exit 1
  fi
  sudo=(sudo -n)
fi
echo "[ci-deps] installing docker-compose (Debian package; the CLI only, no engine)"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >/dev/null
"${sudo[@]}" apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
docker-compose --version
