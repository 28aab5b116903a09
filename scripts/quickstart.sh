#!/usr/bin/env bash
# Set up .venv (if needed) and run one full secure round on loopback: server A,
# server B and the dealer as separate processes, 20 workers through the SDK, Multi-Krum.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
.venv/bin/python -m examples.make_inputs --n 20 --d 10000 --byzantine 3 --out out/inputs.npy
exec .venv/bin/secagg round --inputs out/inputs.npy --f 3 --rule multi-krum \
  --out out/aggregate.npy --report out/report.json --check
