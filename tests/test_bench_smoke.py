"""Smoke test of the benchmark: it runs end to end at --quick sizes and its secure
results agree with the plaintext reference (timings are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick_runs_and_agrees_with_plaintext(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.bench_distances",
            "--quick",
            "--repeats",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "secagg sq_distances" in proc.stdout
    res = json.loads(out.read_text())

    for key in (
        "config",
        "plaintext",
        "secagg",
        "crypten_default",
        "bulyan",
        "memory",
        "correctness",
        "targets",
    ):
        assert key in res, key
    assert res["config"]["quick"] is True
    assert (res["config"]["n"], res["config"]["d"]) == (8, 10_000)

    cr = res["correctness"]
    assert cr["secagg_exact"] is True
    assert cr["profile_exact"] is True
    assert cr["crypten_within_tol"] is True
    assert cr["bulyan_exact"] is True
    assert cr["passed"] is True

    n, d = res["config"]["n"], res["config"]["d"]
    s = res["secagg"]
    for field in ("median_s", "online_s", "gram_pair", "rounds", "dealer_bytes", "profile"):
        assert field in s, field
    # one n×d opening each way, plus B's n×n share of D
    assert s["bytes_sent"]["A"] == 8 * n * d
    assert s["bytes_sent"]["B"] == 8 * n * d + 8 * n * n
    assert res["targets"]["distance_bytes"]["met"] is True

    c = res["crypten_default"]
    for field in ("median_s", "triple_median_s", "bytes_sent", "counted_bytes", "rounds"):
        assert field in c, field
    # Beaver opens X - A and Xᵀ - B: twice secagg's opening
    assert c["bytes_sent"]["A"] >= 2 * 8 * n * d

    b = res["bulyan"]
    for field in ("median_s", "bytes_sent", "rounds", "dealer_bytes"):
        assert field in b, field
    for who in ("A", "B"):
        assert res["memory"][who]["lifetime"]["ru_maxrss_mib"] > 0
        assert "sq_distances" in res["memory"][who]
