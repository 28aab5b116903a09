"""How a hand-started server picks its MPC transport: TLS on every link by default."""

from __future__ import annotations

import argparse
import sys

import pytest

from servers import common


def _settings(monkeypatch: pytest.MonkeyPatch, *argv: str) -> common.CommonSettings:
    for var in ("SECAGG_MPC_TRANSPORT", "SECAGG_MPC_LISTEN", "SECAGG_MPC_PEERS"):
        monkeypatch.delenv(var, raising=False)
    p = argparse.ArgumentParser()
    common.add_common_args(p, "127.0.0.1:0")
    return common.common_settings(p.parse_args(list(argv)), "server-b")


PEERS = ("--mpc-listen", "127.0.0.1:7101", "--mpc-peers", "server-a=10.0.0.1:7100")


def test_with_certificates_the_mpc_links_default_to_mutual_tls(monkeypatch, tmp_path) -> None:
    s = _settings(monkeypatch, "--tls-dir", str(tmp_path), *PEERS)
    assert s.mpc_transport == "mtls"
    assert s.mpc_peers == {"server-a": "10.0.0.1:7100"}


def test_mutual_tls_without_addresses_says_what_to_give(monkeypatch, tmp_path) -> None:
    with pytest.raises(SystemExit, match="--mpc-listen .* --mpc-peers .* --mpc-transport gloo"):
        _settings(monkeypatch, "--tls-dir", str(tmp_path))


def test_plaintext_links_only_when_asked_or_without_tls(monkeypatch, tmp_path) -> None:
    assert _settings(monkeypatch).mpc_transport == "gloo"
    s = _settings(monkeypatch, "--tls-dir", str(tmp_path), "--mpc-transport", "gloo")
    assert s.mpc_transport == "gloo"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_servers_fix_glibcs_mmap_threshold(monkeypatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert common.tune_memory() is True
