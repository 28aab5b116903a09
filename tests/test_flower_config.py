"""secagg.flower's settings and array layout: pure functions, no Flower processes.

The end-to-end behaviour (mod, strategy, real Flower and secagg processes) is in
tests/test_flower.py; this file needs neither flwr nor servers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from secagg import encoding
from secagg.flower.arrays import add_update, layout_of, update_vector
from secagg.flower.config import (
    ClientSettings,
    ConfigError,
    ServerSettings,
    check_no_secrets,
    encoding_params,
)

RUN = {
    "secagg-server-a": "127.0.0.1:1",
    "secagg-server-b": "127.0.0.1:2",
    "secagg-admin": "127.0.0.1:3",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "SECAGG_WORKER_ID",
        "SECAGG_TOKEN",
        "SECAGG_TOKEN_FILE",
        "SECAGG_ADMIN_TOKEN",
        "SECAGG_ADMIN_TOKEN_FILE",
    ):
        monkeypatch.delenv(var, raising=False)


def _token_file(tmp_path: Path, name: str, token: str) -> str:
    p = tmp_path / name
    p.write_text(token + "\n")
    p.chmod(0o600)
    return str(p)


def test_importing_the_package_does_not_import_flwr() -> None:
    import subprocess

    code = "import sys, secagg.flower, secagg.flower.mod; print('flwr' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("key", ["secagg-token", "secagg-admin-token", "secagg-reader-token"])
def test_tokens_in_the_config_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match="-token-file"):
        check_no_secrets({key: "s3cret"})
    with pytest.raises(ConfigError) as err:
        ClientSettings.from_configs({**RUN, "secagg-insecure": True}, {key: "s3cret"})
    assert "s3cret" not in str(err.value)


def test_client_settings_node_config_over_run_config(tmp_path: Path) -> None:
    node = {
        "secagg-worker-id": "w07",
        "secagg-token-file": _token_file(tmp_path, "tok", "tok-value"),
        "secagg-server-a": "10.0.0.1:9",
    }
    s = ClientSettings.from_configs({**RUN, "secagg-pki-dir": str(tmp_path)}, node)
    assert (s.server_a, s.server_b, s.worker_id, s.token) == (
        "10.0.0.1:9",
        "127.0.0.1:2",
        "w07",
        "tok-value",
    )
    assert s.ca_cert == tmp_path / "ca.pem"
    assert "tok-value" not in repr(s)


def test_client_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECAGG_WORKER_ID", "w01")
    monkeypatch.setenv("SECAGG_TOKEN", "env-token")
    s = ClientSettings.from_configs({**RUN, "secagg-insecure": True}, {})
    assert (s.worker_id, s.token, s.ca_cert) == ("w01", "env-token", None)


@pytest.mark.parametrize(
    ("run", "node", "match"),
    [
        (RUN, {"secagg-worker-id": "w1", "secagg-token-file": "/x"}, "secagg-pki-dir"),
        ({**RUN, "secagg-insecure": True}, {}, "worker id"),
        ({**RUN, "secagg-insecure": True}, {"secagg-worker-id": "w1"}, "no worker token"),
        (
            {**RUN, "secagg-insecure": True},
            {"secagg-worker-id": "w1", "secagg-token-file": "/nonexistent/tok"},
            "cannot read the worker token",
        ),
        (
            {"secagg-server-b": "x:1", "secagg-insecure": True},
            {"secagg-worker-id": "w1"},
            "secagg-server-a",
        ),
    ],
)
def test_client_settings_errors_say_what_to_set(run: dict, node: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ClientSettings.from_configs(run, node)


def test_server_settings(tmp_path: Path) -> None:
    run = {
        **RUN,
        "secagg-pki-dir": str(tmp_path),
        "secagg-rule": "bulyan",
        "secagg-f": 2,
        "secagg-clip-norm": 5.0,
    }
    s = ServerSettings.from_run_config(run)
    assert (s.admin_cert, s.admin_key) == (tmp_path / "admin.pem", tmp_path / "admin.key")
    assert (s.rule, s.f, s.m, s.admin_token) == ("bulyan", 2, 0, None)
    with pytest.raises(ConfigError, match="must be one of"):
        ServerSettings.from_run_config({**run, "secagg-rule": "median"})
    with pytest.raises(ConfigError, match="integer"):
        ServerSettings.from_run_config({**run, "secagg-f": 1.5})
    # without TLS the operator is its token, read from a file, never logged
    plain = {**RUN, "secagg-insecure": True,
             "secagg-admin-token-file": _token_file(tmp_path, "admin", "admin-tok")}
    assert ServerSettings.from_run_config(plain).admin_token == "admin-tok"
    assert "admin-tok" not in repr(ServerSettings.from_run_config(plain))
    with pytest.raises(ConfigError, match="admin token"):
        ServerSettings.from_run_config({**plain, "secagg-admin-token-file": ""})


def test_encoding_params_map_the_clip_norm_to_the_norm_bound() -> None:
    p = encoding_params(5.0)
    x = np.full(100, 1.0)  # norm 10: clipped onto the 5-ball
    clipped = encoding.clip_to_bounds(x, p)
    assert np.linalg.norm(clipped) <= 5.0 + 1e-9
    encoding.encode(clipped, p)  # accepted
    with pytest.raises(ConfigError):
        encoding_params(0.0)


def test_update_vector_and_add_update_round_trip() -> None:
    rng = np.random.default_rng(0)
    glob = {
        "w": rng.normal(size=(3, 4)).astype(np.float32),
        "steps": np.array([7], dtype=np.int64),  # not aggregated: keeps the global value
        "b": rng.normal(size=4).astype(np.float64),
    }
    local = {k: (v + 1).astype(v.dtype) for k, v in glob.items()}
    u = update_vector(local, glob)
    assert u.shape == (layout_of(glob).dim,) == (16,)
    np.testing.assert_allclose(u, 1.0, rtol=0, atol=1e-6)
    out = add_update(glob, u)
    assert list(out) == ["w", "steps", "b"]
    assert all(out[k].dtype == glob[k].dtype for k in glob)
    np.testing.assert_array_equal(out["steps"], glob["steps"])
    np.testing.assert_array_equal(out["w"], local["w"])
    np.testing.assert_allclose(out["b"], local["b"], rtol=0, atol=1e-15)


def test_layout_mismatch_is_refused_with_the_reason() -> None:
    glob = {"w": np.zeros((2, 2), np.float32)}
    with pytest.raises(ValueError, match="same keys and shapes"):
        update_vector({"w": np.zeros(4, np.float32)}, glob)
    with pytest.raises(ValueError, match="another model"):
        add_update(glob, np.zeros(3))
