"""A server refuses to start on ports or a state directory another one holds (issue #17).

Each check starts real processes with the launcher's flags: one server B that listens
(it waits for server A to have it join a session, which is enough here), then a second
one that must exit at once with one line saying what is taken and what to do.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from secagg.cluster import free_port
from servers.launcher import ROOT, LocalDeployment

IDS = ["w0", "w1"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=_env(), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def _wait_listening(proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120) -> None:
    end = time.monotonic() + timeout_s
    while '"event": "listening"' not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"the first server exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < end, "the first server never listened"
        time.sleep(0.1)


def _refused(cmd: list[str], timeout_s: float = 90) -> str:
    """Run ``cmd``, which must exit non-zero on its own; its output, for the checks."""
    try:
        proc = subprocess.run(
            cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the second server did not refuse to start: it is still running")
    assert proc.returncode != 0
    return proc.stderr


def _with(cmd: list[str], flag: str, value: str) -> list[str]:
    out = list(cmd)
    out[out.index(flag) + 1] = value
    return out


@pytest.fixture()
def first_b(tmp_path: Path):  # noqa: ANN201
    dep = LocalDeployment(tmp_path, IDS, tls=False, mpc_transport="gloo")
    dep.prepare()
    cmd = dep.command("server-b")
    log = tmp_path / "first-b.log"
    proc = _start(cmd, log)
    try:
        _wait_listening(proc, log)
        yield dep, cmd
    finally:
        proc.kill()
        proc.wait(30)


def test_a_second_server_on_the_same_ports_refuses_to_start(first_b) -> None:  # noqa: ANN001
    dep, cmd = first_b
    err = _refused(cmd)  # the very same flags: same ports, same state directory
    last = err.strip().splitlines()[-1]
    assert f"cannot listen on 127.0.0.1:{dep.ports['server-b']}" in last
    assert "Traceback" not in err


def test_a_second_server_on_the_same_state_directory_refuses_to_start(
    first_b,  # noqa: ANN001
) -> None:
    dep, cmd = first_b
    other = _with(cmd, "--listen", f"127.0.0.1:{free_port()}")
    other = _with(other, "--control-listen", f"127.0.0.1:{free_port()}")
    err = _refused(other)
    last = err.strip().splitlines()[-1]
    assert "is in use by another server" in last and str(dep.workdir / "state") in last
    assert "Traceback" not in err


def test_an_unusable_state_directory_is_one_line_saying_what_to_do(tmp_path: Path) -> None:
    dep = LocalDeployment(tmp_path, IDS, tls=False, mpc_transport="gloo")
    dep.prepare()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # a file where the state directory should be
    err = _refused(_with(dep.command("server-b"), "--state-dir", str(blocker)))
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert "server-b cannot start" in lines[-1] and "--state-dir" in lines[-1]


def test_a_missing_token_file_is_one_line(tmp_path: Path) -> None:
    dep = LocalDeployment(tmp_path, IDS, tls=False, mpc_transport="gloo")
    dep.prepare()
    cmd = _with(dep.command("server-a"), "--worker-tokens", str(tmp_path / "missing.json"))
    err = _refused(cmd)
    assert "Traceback" not in err
    assert "server-a cannot start" in err and "missing.json" in err


def test_the_state_lock_is_exclusive_and_dies_with_its_holder(tmp_path: Path) -> None:
    from secagg.store import StateDirError, lock_state_dir

    fd = lock_state_dir(tmp_path / "s", "server-a")
    with pytest.raises(StateDirError, match=f"pid {os.getpid()}"):
        lock_state_dir(tmp_path / "s", "server-a")
    os.close(fd)  # what the kernel does when the holder dies
    os.close(lock_state_dir(tmp_path / "s", "server-a"))
