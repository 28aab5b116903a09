"""The benchmark suite (bench/suite.py): its --quick run end to end, and its cost caps.

The quick run checks the JSON's schema, that every secure result agreed with the
plaintext reference, and that the bytes figures equal their formulas (timings are not
checked: the machine is shared).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
# one ring share (8 B/coordinate) plus the seed and the messages' fixed fields
UPLOAD_B_PER_COORD = 8.05
UPLOAD_FIXED_OVERHEAD = 256


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("suite") / "suite.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.suite", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    res = json.loads(out.read_text())
    res["_stdout"], res["_stderr"] = proc.stdout, proc.stderr
    return res


def test_quick_schema_and_table(quick: dict[str, Any]) -> None:
    for key in ("schema", "machine", "config", "upload", "cells", "baselines", "scaling"):
        assert key in quick, key
    assert quick["schema"] == "secagg-bench-suite/1"
    m = quick["machine"]
    assert m["nproc"] >= 1 and len(m["loadavg_start"]) == 3 and len(m["loadavg_end"]) == 3
    cfg = quick["config"]
    assert cfg["quick"] is True
    rules = cfg["rules"]
    assert set(rules) == {"krum", "multi-krum", "bulyan"}
    # every (n, d, rule) has an entry: none is silently dropped
    want = {(n, d, r) for n in cfg["n"] for d in cfg["d"] for r in rules}
    assert {(c["n"], c["d"], c["rule"]) for c in quick["cells"]} == want
    assert {(b["n"], b["d"]) for b in quick["baselines"]} == {(n, d) for n, d, _ in want}
    for c in quick["cells"]:
        assert c["status"] == "ok", c.get("reason")
        s = c["seconds"]
        for key in ("round_online", "round_cold", "distances_cold", "distances_online"):
            assert s[key] > 0, key
        assert s["prepare"] >= 0
        phases = set(c["phases"]["online"])
        last = "bulyan_coordinate" if c["rule"] == "bulyan" else "reveal"
        assert {"prepare", "validation", "distances", "selection", last} <= phases
        assert c["plaintext"]["floor_seconds"] > 0
        for who in ("A", "B", "dealer"):
            assert c["memory_mib"][who]["peak_mib"] > 0, who
        for who in ("A", "B"):
            assert c["memory_mib"][who]["peak_over_idle_mib"] is not None, who
    for b in quick["baselines"]:
        assert b["crypten_default"]["status"] == "ok"
        assert b["crypten_default"]["seconds"] > 0
    for rule in rules:
        fit = quick["scaling"]["rules"][rule]["round_online"]
        assert isinstance(fit["in_n"]["exponent"], float)
        assert isinstance(fit["in_d"]["exponent"], float)
    assert isinstance(quick["scaling"]["crypten_default"]["in_d"]["exponent"], float)
    out = quick["_stdout"]
    for text in ("round online", "Bytes per worker upload", "Peak RSS", "Scaling", "PASSED"):
        assert text in out, text
    # a progress line on stderr for every cell
    for c in quick["cells"]:
        assert f"n={c['n']} d={c['d']:,} {c['rule']}: round" in quick["_stderr"]


def test_quick_checks_all_passed(quick: dict[str, Any]) -> None:
    assert quick["checks"]["passed"] is True, quick["checks"]["failures"]
    assert quick["checks"]["failures"] == []
    for c in quick["cells"]:
        ck = c["checks"]
        for key in ("all_accepted", "selection", "divisor", "aggregate_exact", "distances_exact"):
            assert ck[key] is True, (c["n"], c["d"], c["rule"], key)
        assert ck["passed"] is True
    for b in quick["baselines"]:
        assert b["crypten_default"]["checks"]["within_tolerance"] is True


def test_quick_bytes_match_their_formulas(quick: dict[str, Any]) -> None:
    for c in quick["cells"]:
        n, d = c["n"], c["d"]
        for mode in ("cold", "online"):
            t = c["bytes"][mode]
            # one n×d opening each way, plus B's n×n share of D to A
            assert t["distances"]["a_to_b_bytes"] == 8 * n * d, (n, d, mode)
            assert t["distances"]["b_to_a_bytes"] == 8 * n * d + 8 * n * n, (n, d, mode)
            assert t["distances"]["dealer_bytes_b"] == 0
            if c["rule"] != "bulyan":
                # the masked sum of the selected rows, opened both ways
                assert t["reveal"]["a_to_b_bytes"] == t["reveal"]["b_to_a_bytes"] == 8 * d
        prep = c["bytes"]["online"]["prepare"]
        assert prep["a_to_b_bytes"] == prep["b_to_a_bytes"] == 0  # the dealer only
        assert prep["dealer_bytes_a"] >= 8 * n * n  # at least A's share of Z = R Rᵀ
        # online: the Gram pair came with prepare, none in the distance phase itself
        assert c["bytes"]["online"]["distances"]["dealer_bytes_a"] == 0
        assert c["bytes"]["cold"]["distances"]["dealer_bytes_a"] == prep["dealer_bytes_a"]
    for u in quick["upload"]:
        d = u["d"]
        assert u["total_bytes"] == u["to_a_bytes"] + u["to_b_bytes"]
        assert 8 * d + 32 <= u["total_bytes"] <= UPLOAD_B_PER_COORD * d + UPLOAD_FIXED_OVERHEAD
        assert u["bytes_per_coord"] == pytest.approx(u["total_bytes"] / d)


def test_upload_bytes_per_coordinate_at_scale() -> None:
    from bench.suite import upload_bytes

    u = upload_bytes(100_000)
    assert u["bytes_per_coord"] <= UPLOAD_B_PER_COORD
    assert u["to_b_bytes"] >= 8 * 100_000 and u["to_a_bytes"] >= 32


def test_cost_caps_reduce_repeats_or_skip_explicitly() -> None:
    from bench.suite import CostModel, plan_cell

    m = CostModel()
    assert plan_cell(m, "k", 10, 10_000, 3, 100.0)["repeats"] == 3  # nothing measured: run
    m.add("k", 10, 10_000, 1.0)
    m.add("k", 10, 100_000, 10.0)  # exponent 1 in d
    m.add("k", 20, 10_000, 4.0)  # exponent 2 in n
    assert m.estimate("k", 20, 100_000) == pytest.approx(40.0)
    assert m.estimate("k", 10, 1_000_000) == pytest.approx(100.0)
    p = plan_cell(m, "k", 20, 100_000, 3, 100.0)
    assert p["repeats"] == 2 and p["reason"] is None and "reduced" in p["note"]
    p = plan_cell(m, "k", 50, 1_000_000, 3, 100.0)
    assert p["repeats"] == 0
    assert p["reason"] == "skipped: estimated 2,500 s > cap 100 s"
    p = plan_cell(m, "k", 10, 10_000, 3, 100.0, budget_left=0.5)
    assert p["repeats"] == 0 and "left of the total budget" in p["reason"]
    # slopes below 1 (fixed costs at small sizes) do not make big cells look cheap
    m2 = CostModel()
    m2.add("k", 10, 1_000, 1.0)
    m2.add("k", 10, 10_000, 1.1)
    assert m2.exponent("k", "d") == 1.0


def test_analysis_flags_a_wrong_secure_result() -> None:
    import numpy as np

    from bench.suite import analyse_cell, digest

    n, d = 7, 5
    total = np.arange(d, dtype=np.int64)
    dist = np.zeros((n, n), dtype=np.int64)
    ref = {"selected": [0, 1, 2], "divisor": 3, "encoded_sum": total}
    traffic = {"seconds": {"distances": 0.1}, "bytes_sent": {}, "rounds": {}, "dealer_bytes": {}}

    def party(sum_digest: str | None, dist_digest: str | None) -> dict:
        run = {
            "wall": 0.1,
            "traffic": traffic,
            "selected": [0, 1, 2],
            "accepted": list(range(n)),
            "divisor": 3,
            "sum_digest": sum_digest,
            "distances_digest": dist_digest,
        }
        last = {"encoded_sum": total + 1, "distances": dist}
        return {
            "runs": [dict(run, mode="cold"), dict(run, mode="online")],
            "last": {"cold": last, "online": last},
            "memory": {},
        }

    good = analyse_cell(
        party(digest(total), digest(dist)), party(digest(total), None), ref, dist, n, "krum"
    )
    assert good["checks"]["passed"] is True
    bad = analyse_cell(
        party(digest(total + 1), digest(dist)), party(digest(total), None), ref, dist, n, "krum"
    )
    assert bad["checks"]["aggregate_exact"] is False and bad["checks"]["passed"] is False
