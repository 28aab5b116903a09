"""No private key or token is tracked in git (issue #15, item 7): the repository passes
``scripts/check_secrets.py``, which ``scripts/test.sh`` runs, and the check catches each
kind of secret it claims to."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import check_secrets  # noqa: E402

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git client")


@needs_git
def test_no_tracked_file_holds_a_secret() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = check_secrets.tracked_files(ROOT)
    assert tracked, "git ls-files listed nothing"
    bad = check_secrets.findings(ROOT, tracked)
    assert bad == [], f"tracked secrets (git rm --cached them and rotate): {bad}"


@needs_git
def test_the_check_catches_keys_and_tokens(tmp_path: Path) -> None:
    from secagg import transport

    repo = tmp_path / "repo"
    transport.make_dev_pki(repo / "pki")
    (repo / "config.py").write_text('HDR = "Bearer ' + "x" * 43 + '"\n')
    (repo / "k.txt").write_bytes((repo / "pki" / "admin.key").read_bytes())
    (repo / ".secagg" / "local-1").mkdir(parents=True)
    (repo / ".secagg" / "local-1" / "notes.txt").write_text("harmless")
    (repo / "admin-token").write_text("t")
    (repo / "fine.py").write_text("print('no secrets here')\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    got = dict(check_secrets.findings(repo, check_secrets.tracked_files(repo) or []))
    assert "fine.py" not in got and "pki/ca.pem" not in got
    assert {"config.py", "k.txt", ".secagg/local-1/notes.txt", "admin-token"} <= set(got)
    assert {"pki/ca.key", "pki/admin.key"} <= set(got)
    # the command fails with the paths, never the secret
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_secrets.py"), str(repo)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "k.txt" in res.stderr and "x" * 43 not in res.stderr
