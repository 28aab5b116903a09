"""``secagg up`` supervises its three children (issue #17, item 7).

One real run: a child killed with SIGKILL is restarted; SIGTERM to ``secagg up`` stops
every child and waits for them (none is left to init); a second run on the same
workdir listens on the same ports with the same worker tokens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from servers.launcher import ROOT, LocalDeployment

NAMES = ("server-a", "server-b", "dealer")
MODULES = {n: "servers." + n.replace("-", "_") for n in NAMES}


def _children(pid: int) -> dict[str, int]:
    """The party processes ``secagg up`` (pid) started: name -> pid (Linux /proc)."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in kids:
            try:
                cmd = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            for name, module in MODULES.items():
                if module.encode() in cmd:
                    out[name] = int(kid)
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _wait(cond, what: str, timeout_s: float = 300) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def _up(workdir: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    log = open(workdir.parent / f"{workdir.name}-up.log", "ab")  # noqa: SIM115
    cmd = [sys.executable, "-m", "secagg.cli", "up", "--workdir", str(workdir)]
    cmd += ["--workers", "3", "--insecure"]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _healthy(workdir: Path) -> bool:
    """Both servers SERVING (A only once B and the dealer are in its MPC session)."""
    try:
        info = json.loads((workdir / "deployment.json").read_text())
    except (OSError, ValueError):
        return False
    dep = LocalDeployment(workdir, [], tls=False)
    for name, key in (("server-a", "server_a"), ("server-b", "server_b")):
        dep.ports[name] = int(info[key].rsplit(":", 1)[1])
    return all(dep.health(n) for n in ("server-a", "server-b"))


def _stop(up: subprocess.Popen[bytes]) -> dict[str, int]:
    kids = _children(up.pid)
    up.send_signal(signal.SIGTERM)
    assert up.wait(120) == 0
    return kids


def test_up_restarts_a_dead_child_stops_on_sigterm_and_reuses_its_workdir(
    tmp_path: Path,
) -> None:
    wd = tmp_path / "wd"
    up = _up(wd)
    try:
        _wait(lambda: _healthy(wd), "secagg up")
        first = _children(up.pid)
        assert set(first) == set(NAMES)
        addresses = json.loads((wd / "deployment.json").read_text())
        tokens = json.loads((wd / "worker-tokens.plain.json").read_text())

        os.kill(first["dealer"], signal.SIGKILL)  # a child dies: it is started again

        def restarted() -> bool:
            assert up.poll() is None, "secagg up exited when one child died"
            return _children(up.pid).get("dealer") not in (None, first["dealer"])

        _wait(restarted, "the dealer to be restarted")
        _wait(lambda: _healthy(wd), "all three healthy again")
        assert up.poll() is None

        kids = _stop(up)  # SIGTERM reaches the children, and up waits for them
        assert set(kids) == set(NAMES)
        assert not any(_alive(pid) for pid in kids.values())
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(30)

    again = _up(wd)  # the same workdir: the same ports and tokens
    try:
        _wait(lambda: len(_children(again.pid)) == 3 and _healthy(wd), "the second run")
        assert json.loads((wd / "deployment.json").read_text()) == addresses
        assert json.loads((wd / "worker-tokens.plain.json").read_text()) == tokens
        kids = _stop(again)
        assert not any(_alive(pid) for pid in kids.values())
    finally:
        if again.poll() is None:
            again.kill()
            again.wait(30)
