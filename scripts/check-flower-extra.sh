#!/usr/bin/env bash
# Show that the worker SDK with the Flower extra installs into a fresh venv without
# conflicts: `pip install '.[flower]'` (flwr==1.42.0 next to secagg's grpcio/protobuf
# pins), then `pip check` and an import of the integration.
#
#   bash scripts/check-flower-extra.sh            # full install + pip check (~1 min)
#   bash scripts/check-flower-extra.sh --dry-run  # resolution only (~20 s; the test's default)
#
# The venv is made in a temporary directory and removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
venv=$(mktemp -d "${TMPDIR:-/tmp}/secagg-flower-extra.XXXXXX")
trap 'rm -rf "$venv"' EXIT
"$PY" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
if [ "${1:-}" = "--dry-run" ]; then
  "${pip[@]}" install --quiet --dry-run --report "$venv/report.json" '.[flower]'
  "$venv/bin/python" - "$venv/report.json" <<'PY'
import json, sys
plan = {i["metadata"]["name"].lower(): i["metadata"]["version"]
        for i in json.load(open(sys.argv[1]))["install"]}
for name in ("secagg", "flwr", "grpcio", "protobuf"):
    print(f"{name}=={plan[name]}")
assert plan["flwr"] == "1.42.0", plan["flwr"]
PY
  echo "[flower-extra] '.[flower]' resolves in a fresh venv (dry run)"
  exit 0
fi
"${pip[@]}" install --quiet '.[flower]'
"${pip[@]}" check
# a non-editable install: run from outside the tree so that the installed copy is used
(cd "$venv" && "$venv/bin/python" -c "
import importlib.metadata as md
import secagg.flower.strategy, clients.sdk
print('flwr==' + md.version('flwr'), 'grpcio==' + md.version('grpcio'),
      'protobuf==' + md.version('protobuf'))
")
echo "[flower-extra] '.[flower]' installed into a fresh venv; pip check is clean"
