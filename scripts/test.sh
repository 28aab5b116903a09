#!/usr/bin/env bash
# Set up .venv (if needed), lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# no private key or token may be tracked in git (scripts/check_secrets.py says why)
.venv/bin/python scripts/check_secrets.py .
exec .venv/bin/python -m pytest -q "$@"
