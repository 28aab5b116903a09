"""A Flower federation on loopback for tests and examples: one SuperLink, n SuperNodes.

These are Flower's own deployment-engine processes (``flower-superlink``,
``flower-supernode``; each starts a SuperExec that runs the ServerApp / ClientApps in
subprocesses), and apps are submitted with ``flwr run``, exactly as a Flower user runs
them. Flower's links are plaintext on loopback here (``--insecure``): this helper is for
local runs; secagg's own links use TLS whenever the deployment has it.

Runtime dependency installation is off (``--disable-runtime-dependency-installation``):
the app's dependencies are those of the current environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secagg.netutil import free_port

__all__ = ["FlowerError", "FlowerRun", "LocalFlower", "toml_value"]


class FlowerError(RuntimeError):
    """A Flower process failed; the message points at its log."""


@dataclass(frozen=True)
class FlowerRun:
    """One finished ``flwr run``."""

    run_id: int
    status: str  # "finished:completed", "finished:failed", "finished:stopped"
    logs: str  # the ServerApp's log

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal (strings, bools, ints, floats)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"no TOML literal for {type(value).__name__}")


def _node_config_arg(config: Mapping[str, Any]) -> str:
    # flower-supernode --node-config: space-separated key=value, values in TOML
    return " ".join(f"{k}={toml_value(v)}" for k, v in config.items())


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class LocalFlower:
    """Start with ``with LocalFlower(workdir, node_configs) as fl: fl.run(app_dir, cfg)``.

    Parameters
    ----------
    workdir
        Logs (``logs/``) and the Flower homes (``flwr-home/``) go here.
    node_configs
        One mapping per SuperNode: its ``--node-config``.
    env
        Extra environment for every Flower process (e.g. secagg token variables).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        node_configs: Sequence[Mapping[str, Any]],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.node_configs = [dict(c) for c in node_configs]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.port = 0
        self._extra_env = dict(env or {})
        bindir = Path(sys.executable).parent
        self.bin = {
            name: str(bindir / name) for name in ("flower-superlink", "flower-supernode", "flwr")
        }

    @staticmethod
    def available() -> str | None:
        """None if Flower's executables are installed next to this Python, else why not."""
        bindir = Path(sys.executable).parent
        try:
            import flwr  # noqa: F401
        except ImportError:
            return "flwr is not installed (pip install 'secagg[flower]')"
        for name in ("flower-superlink", "flower-supernode", "flwr"):
            if not (bindir / name).exists() and shutil.which(name) is None:
                return f"{name} is not installed next to {sys.executable}"
        return None

    # ------------------------------------------------------------------ processes
    def env(self, home: Path) -> dict[str, str]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["FLWR_HOME"] = str(home)
        env["FLWR_TELEMETRY_ENABLED"] = "0"
        env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        env.update(self._extra_env)
        return env

    def _spawn(self, name: str, args: list[str], home: Path) -> None:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        home.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                args, env=self.env(home), stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir
            )

    def log_text(self, name: str) -> str:
        p = self.workdir / "logs" / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def _wait_log(self, name: str, needle: str, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while needle not in self.log_text(name):
            proc = self.procs[name]
            if proc.poll() is not None:
                raise FlowerError(
                    f"{name} exited with code {proc.returncode}; see "
                    f"{self.workdir / 'logs' / (name + '.log')}"
                )
            if time.monotonic() > deadline:
                raise FlowerError(
                    f"{name} not ready after {wait_s:.0f} s (no {needle!r} in its log); see "
                    f"{self.workdir / 'logs' / (name + '.log')}"
                )
            time.sleep(0.2)

    def start(self, wait_s: float = 120.0) -> None:
        """Start the SuperLink, then the SuperNodes; return once each is registered."""
        self.port = free_port()
        home = self.workdir / "flwr-home"
        self._spawn(
            "superlink",
            [
                self.bin["flower-superlink"],
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ],
            home / "superlink",
        )
        self._wait_log("superlink", "Uvicorn running on", wait_s)
        for i, config in enumerate(self.node_configs):
            self._spawn(
                f"supernode-{i}",
                [
                    self.bin["flower-supernode"],
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{self.port}",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    _node_config_arg(config),
                ],
                home / f"supernode-{i}",
            )
        for i in range(len(self.node_configs)):
            self._wait_log(f"supernode-{i}", "SuperNode ID:", wait_s)
        (home / "cli").mkdir(parents=True, exist_ok=True)
        (home / "cli" / "config.toml").write_text(
            '[superlink]\ndefault = "local-loopback"\n\n[superlink.local-loopback]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )

    def _cli(self, args: list[str], timeout_s: float, cwd: Path | None = None) -> str:
        proc = subprocess.run(
            [self.bin["flwr"], *args],
            env=self.env(self.workdir / "flwr-home" / "cli"),
            cwd=str(cwd or self.workdir),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if proc.returncode != 0:
            raise FlowerError(
                f"flwr {args[0]} failed with exit code {proc.returncode}: "
                f"{(proc.stdout + proc.stderr)[-2000:]}"
            )
        return proc.stdout

    @staticmethod
    def _json(text: str) -> dict[str, Any]:
        # the CLI may print notices before its JSON document
        return dict(json.loads(text[text.index("{") :]))

    def run(
        self, app_dir: str | os.PathLike[str], run_config: Mapping[str, Any], timeout_s: float
    ) -> FlowerRun:
        """``flwr run app_dir`` with ``run_config`` overrides; waits until the run ends.

        ``flwr run --stream`` can return early when its log stream breaks (seen on a
        loaded machine), so the run's end is read from the SuperLink (``flwr ls``).

        Returns
        -------
        FlowerRun
            The run id, its final status (``finished:completed`` when the ServerApp
            returned) and the ServerApp's logs.

        Raises
        ------
        FlowerError
            If the run cannot be submitted or does not end within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        overrides = self.workdir / f"run-config-{time.time_ns()}.toml"
        overrides.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in run_config.items()))
        out = self._cli(
            ["run", str(app_dir), "local-loopback", "--run-config", str(overrides)]
            + ["--format", "json"],
            timeout_s,
            cwd=Path(app_dir),
        )
        run_id = self._json(out).get("run-id")
        if not run_id:
            raise FlowerError(f"flwr run did not start a run: {out[-2000:]}")
        status = ""
        while not status.startswith("finished"):
            if time.monotonic() > deadline:
                raise FlowerError(
                    f"run {run_id} still {status or 'pending'} after {timeout_s:.0f} s; see "
                    f"{self.workdir / 'logs'}"
                )
            time.sleep(2.0)
            try:
                listing = self._cli(
                    ["ls", "local-loopback", "--run-id", str(run_id), "--format", "json"],
                    max(1.0, min(120.0, deadline - time.monotonic())),
                )
            except subprocess.TimeoutExpired:
                continue  # a loaded machine, not the run's end: ask again until the deadline
            runs = self._json(listing).get("runs", [])
            status = str(runs[0].get("status", "")) if runs else ""
        logs = self._cli(["log", str(run_id), "local-loopback", "--show"], 120)
        return FlowerRun(int(run_id), status, logs)

    def stop(self) -> None:
        """Terminate every Flower process this object started, their SuperExecs too."""
        family: list[int] = []
        for proc in self.procs.values():
            family += _descendants(proc.pid)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pid in family:  # SuperExecs and apps they started, if still around
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue  # already gone
            if b"flwr" in cmdline or b"flower" in cmdline:  # not a recycled pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def __enter__(self) -> LocalFlower:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
