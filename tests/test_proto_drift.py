"""The committed generated wire code must match ``proto/secagg/v1/secagg.proto``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_gen_proto():
    # scripts/ is not a package; load the generator by path so the test uses the very
    # same function as the developer's command.
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    gen = _load_gen_proto()
    fresh = gen.generate(tmp_path)
    stale = []
    for path in fresh:
        rel = path.relative_to(tmp_path)
        committed = ROOT / rel
        if not committed.exists() or committed.read_bytes() != path.read_bytes():
            stale.append(str(rel))
    assert not stale, (
        f"generated wire code is out of date with proto/secagg/v1/secagg.proto: {stale}; "
        "run `python scripts/gen_proto.py` and commit the result"
    )


def test_generated_modules_import_as_package() -> None:
    from secagg.v1 import secagg_pb2, secagg_pb2_grpc

    assert secagg_pb2.DESCRIPTOR.package == "secagg.v1"
    assert {s for s in secagg_pb2.DESCRIPTOR.services_by_name} == {"Worker", "Admin", "Peer"}
    assert hasattr(secagg_pb2_grpc, "PeerStub")
