"""The Flower extra installs into a fresh venv without conflicts (issue #21).

By default the resolution only (``pip install --dry-run '.[flower]'`` in a new venv,
about 20 s): pip fails on any conflict between flwr==1.42.0 and secagg's pins. With
``SECAGG_FLOWER_INSTALL=full`` the real install, ``pip check`` and an import (about a
minute). Both run ``scripts/check-flower-extra.sh``, the command a person runs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check-flower-extra.sh"


def test_flower_extra_installs_into_a_fresh_venv() -> None:
    full = os.environ.get("SECAGG_FLOWER_INSTALL") == "full"
    proc = subprocess.run(
        ["bash", str(SCRIPT), *([] if full else ["--dry-run"])],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "flwr==1.42.0" in proc.stdout
    assert "protobuf==6." in proc.stdout  # flwr 1.42 requires protobuf < 7
    if full:
        assert "pip check is clean" in proc.stdout
