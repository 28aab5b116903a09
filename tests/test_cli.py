"""The command line as a user runs it: ``secagg round`` starts its own deployment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from secagg import encoding, reference
from secagg.cli import auto_scale

ROOT = Path(__file__).resolve().parents[1]


def test_secagg_round_writes_aggregate_and_report(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=40) + rng.normal(size=(9, 40)) * 0.3
    X[-2:] *= -8  # two sign-flip attackers
    np.save(tmp_path / "X.npy", X)
    out, rep = tmp_path / "agg.npy", tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "secagg.cli",
            "round",
            "--inputs",
            str(tmp_path / "X.npy"),
            "--f",
            "2",
            "--rule",
            "multi-krum",
            "--out",
            str(out),
            "--report",
            str(rep),
            "--workdir",
            str(tmp_path / "w"),
            "--check",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "selection identical" in proc.stdout
    report = json.loads(rep.read_text())
    for key in ("round_id", "participants", "selected", "distances", "phases"):
        assert key in report
    assert len(report["participants"]) == 9
    assert "worker-007" not in report["selected"] and "worker-008" not in report["selected"]
    D = np.asarray(report["distances"])
    np.testing.assert_array_equal(D, D.T)
    agg = np.load(out)
    scale = auto_scale(X)  # the CLI's default: a power of two, largest norm <= 64
    assert 32 < np.max(np.linalg.norm(X * scale, axis=1)) <= 64
    coord = float(np.max(np.abs(X))) * 1.01 * scale
    norm = float(np.max(np.linalg.norm(X * scale, axis=1))) * 1.01
    params = encoding.EncodingParams(scale=scale, coord_bound=coord, norm_bound=norm)
    ref = reference.aggregate_encoded(
        np.stack([encoding.encode(r, params) for r in X]), "multi-krum", 2
    )
    np.testing.assert_array_equal(agg, encoding.decode(ref.encoded_sum, params, ref.divisor))
    assert "mpc.distances" in report["phases"]
    assert report["phases"]["mpc.distances"]["bytes_sent"] >= 8 * 9 * 40


def test_bad_inputs_file_gives_a_clear_error(tmp_path):
    np.save(tmp_path / "X.npy", np.zeros(5))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "secagg.cli",
            "round",
            "--inputs",
            str(tmp_path / "X.npy"),
            "--f",
            "0",
            "--rule",
            "mean",
            "--out",
            str(tmp_path / "a.npy"),
            "--report",
            str(tmp_path / "r.json"),
            "--workdir",
            str(tmp_path / "w"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "2-D array" in proc.stderr
