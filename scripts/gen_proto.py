"""Regenerate the Python wire code from ``proto/secagg/v1/secagg.proto``.

Run from anywhere: ``python scripts/gen_proto.py``. The output is committed
(``secagg/v1/secagg_pb2.py``, ``secagg_pb2.pyi``, ``secagg_pb2_grpc.py``) so that
installing secagg never needs grpcio-tools; ``tests/test_proto_drift.py`` fails when the
committed files no longer match the .proto.

``-I proto`` makes the .proto's import path ``secagg/v1/secagg.proto``, so the generated
gRPC module imports ``from secagg.v1 import secagg_pb2`` and works as a package module.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_FILES = ("secagg/v1/secagg.proto",)
# Relative to the output root; the drift test compares exactly these.
GENERATED = (
    "secagg/v1/secagg_pb2.py",
    "secagg/v1/secagg_pb2.pyi",
    "secagg/v1/secagg_pb2_grpc.py",
)


def generate(out_root: Path = ROOT) -> list[Path]:
    """Run protoc on the secagg protos, writing below ``out_root``.

    Parameters
    ----------
    out_root
        Directory that receives ``secagg/v1/...``; the project root by default, a
        temporary directory in the drift test.

    Returns
    -------
    list of Path
        The generated files.

    Raises
    ------
    RuntimeError
        If protoc reports an error (its message is on stderr).
    """
    # Imported here so that importing this module (e.g. to read GENERATED) is cheap.
    from importlib import resources

    from grpc_tools import protoc

    out_root = Path(out_root)
    (out_root / "secagg" / "v1").mkdir(parents=True, exist_ok=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *PROTO_FILES,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}; see its message above")
    return [out_root / rel for rel in GENERATED]


def main() -> int:
    for path in generate():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
