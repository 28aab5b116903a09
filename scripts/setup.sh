#!/usr/bin/env bash
# Create .venv/ at the repository root with everything pinned, idempotently.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.secagg-installed
want=$(cat requirements/*.txt pyproject.toml | sha256sum | cut -c1-16)
build_kernel() {
  # the ring kernel (secagg/native/ring_gemm.c): ~8x faster 2PC products; optional
  .venv/bin/python -m secagg.ringmath --build >/dev/null \
    || echo "[setup] warning: no native ring kernel (no C compiler?); secagg falls back to torch's slower int64 matmul"
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] .venv is up to date"
  build_kernel
  exit 0
fi
echo "[setup] installing pinned dependencies (torch CPU, CrypTen, gRPC); first run takes a few minutes"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements/dev.txt
.venv/bin/python -m pip install --quiet --no-deps crypten==0.4.1
# without its training framework's torchvision/seaborn/pandas (requirements/oracle.txt)
.venv/bin/python -m pip install --quiet --no-deps -r requirements/oracle.txt
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e . 2>/dev/null \
  || .venv/bin/python -m pip install --quiet --no-deps -e .
build_kernel
echo "$want" > "$stamp"
echo "[setup] done: .venv/bin/secagg is ready"
