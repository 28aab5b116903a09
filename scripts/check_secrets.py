"""Fail when a file tracked by git holds a private key or a token.

Run by ``scripts/test.sh`` (and ``tests/test_check_secrets.py``) from the repository
root: ``python scripts/check_secrets.py``. Exit status 1 lists every offending path and
why, without printing the secret itself. What counts:

* a PEM private key block (any algorithm, encrypted or not), or an OpenSSH one;
* a file whose name says it is a key or token store: ``*.key``, ``*-token``,
  ``*token*.json``, ``*.p12``/``*.pfx``, ``.env`` (``env.example`` is fine);
* anything under a ``.secagg/`` directory (``secagg up`` puts its keys, tokens and logs
  there; it is in ``.gitignore`` and must never be committed);
* a bearer header with a literal token (``Bearer`` followed by 32+ token characters).

Remove the file from the index (``git rm --cached PATH``), rotate what it held (issue new
tokens with ``secagg certs``/``issue_tokens``), and keep such files out of the tree.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

# split so that this file does not match itself
_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z0-9 ]*)?PRIVATE" + rb" KEY-----")
_BEARER = re.compile(rb"Bearer [A-Za-z0-9_\-]{32,}")
_NAME_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r".*\.key"), "a key file"),
    (re.compile(r".*-token"), "a token file"),
    (re.compile(r".*token.*\.json"), "a token store"),
    (re.compile(r".*\.(p12|pfx)"), "a PKCS#12 bundle"),
    (re.compile(r"\.env"), "an environment file with settings that may be secret"),
)


def findings(root: Path, paths: Iterable[str]) -> list[tuple[str, str]]:
    """(path, reason) for every path under ``root`` that holds a secret."""
    out: list[tuple[str, str]] = []
    for rel in paths:
        parts = PurePosixPath(rel).parts
        name = parts[-1] if parts else rel
        if ".secagg" in parts[:-1]:
            out.append((rel, "under .secagg/ (a local deployment's keys, tokens and logs)"))
            continue
        why = next((w for pat, w in _NAME_RULES if pat.fullmatch(name)), None)
        if why is not None:
            out.append((rel, why))
            continue
        try:
            data = (root / rel).read_bytes()
        except (FileNotFoundError, IsADirectoryError):  # deleted in the work tree
            continue
        if _PEM_KEY.search(data):
            out.append((rel, "holds a PEM private key"))
        elif _BEARER.search(data):
            out.append((rel, "holds a literal bearer token"))
    return out


def tracked_files(root: Path) -> list[str] | None:
    """Paths git tracks under ``root``; None when ``root`` is not a git checkout."""
    try:
        res = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return [p for p in res.stdout.decode("utf-8", "replace").split("\0") if p]


def main(argv: list[str] | None = None) -> int:
    root = Path(argv[0] if argv else ".").resolve()
    tracked = tracked_files(root)
    if tracked is None:
        print(f"check_secrets: {root} is not a git checkout: nothing to check", file=sys.stderr)
        return 0
    bad = findings(root, tracked)
    for rel, why in bad:
        print(f"check_secrets: {rel}: {why}", file=sys.stderr)
    if bad:
        print(
            f"check_secrets: {len(bad)} tracked file(s) hold secrets: remove them with "
            "`git rm --cached PATH`, rotate the keys/tokens they held, and keep them out "
            "of git (.gitignore)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
