"""Start server A, server B and the dealer as local processes (``secagg up``, tests).

Each process is started with ``python -m servers.<name>`` and the same flags a real
deployment passes, on free loopback ports. With TLS on (the default) a dev CA and
per-party certificates are made in the working directory first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from secagg import transport
from secagg.cluster import free_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class LocalDeployment:
    workdir: Path
    worker_ids: list[str]
    tls: bool = True
    mpc_timeout_s: float = 120.0
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    admin_token: str | None = None
    # servers keep their rounds under workdir/state/<name> (secagg.store), so a killed
    # server restarted with spawn() resumes them
    persist: bool = True
    # "gloo" or "mtls" (the parties' MPC links over mutual TLS; needs tls=True). None:
    # mtls whenever TLS is on, so that no byte between the parties is in the clear
    mpc_transport: str | None = None
    # serve each party's Prometheus metrics on a port of its own (secagg.metrics)
    metrics: bool = False

    def __post_init__(self) -> None:
        if self.mpc_transport is None:
            self.mpc_transport = "mtls" if self.tls else "gloo"

    # -------------------------------------------------------------- addresses
    @property
    def addr_a(self) -> str:
        return f"{self.host}:{self.ports['server-a']}"

    @property
    def addr_b(self) -> str:
        return f"{self.host}:{self.ports['server-b']}"

    @property
    def control_a(self) -> str:
        """Where the operator (Admin) reaches server A."""
        return f"{self.host}:{self.ports['server-a-control']}"

    @property
    def control_b(self) -> str:
        """Where server A (Peer) reaches server B."""
        return f"{self.host}:{self.ports['server-b-control']}"

    def metrics_url(self, name: str) -> str:
        """``/metrics`` of one party (``metrics=True``): HTTPS with TLS on."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.ports['metrics-' + name]}/metrics"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    def tls_for(self, name: str) -> transport.TlsConfig | None:
        return transport.TlsConfig.from_pki(self.pki, name) if self.tls else None

    def worker_tls(self) -> transport.TlsConfig | None:
        # workers verify the servers against the CA and authenticate by token
        return transport.TlsConfig(ca_cert=self.pki / "ca.pem") if self.tls else None

    # -------------------------------------------------------------- lifecycle
    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            transport.make_dev_pki(self.pki)
        self.tokens = transport.issue_tokens(self.worker_ids, self.workdir / "worker-tokens.json")
        import secrets

        for name in ("peer-token", "admin-token"):
            p = self.workdir / name
            p.write_text(secrets.token_urlsafe(32))
            p.chmod(0o600)
        self.admin_token = (self.workdir / "admin-token").read_text()
        for name in (
            "server-a",
            "server-b",
            "dealer",
            "mpc",
            "server-a-control",
            "server-b-control",
            "mpc-server-a",
            "mpc-server-b",
            "mpc-dealer",
        ):
            self.ports[name] = free_port()
        if self.metrics:
            for name in ("server-a", "server-b", "dealer"):
                self.ports["metrics-" + name] = free_port()

    def command(self, name: str) -> list[str]:
        module = {
            "server-a": "servers.server_a",
            "server-b": "servers.server_b",
            "dealer": "servers.dealer",
        }[name]
        args = [
            sys.executable,
            "-m",
            module,
            "--listen",
            f"{self.host}:{self.ports[name]}",
            "--mpc-addr",
            self.host,
            "--mpc-port",
            str(self.ports["mpc"]),
            "--mpc-timeout",
            str(self.mpc_timeout_s),
        ]
        if self.tls:
            args += ["--tls-dir", str(self.pki)]
        else:
            args += ["--peer-token-file", str(self.workdir / "peer-token")]
        if name in ("server-a", "server-b"):
            args += ["--control-listen", f"{self.host}:{self.ports[name + '-control']}"]
        if name == "server-a":
            args += [
                "--peer",
                self.control_b,
                "--worker-tokens",
                str(self.workdir / "worker-tokens.json"),
                "--admin-token-file",
                str(self.workdir / "admin-token"),
            ]
        if name == "server-b":
            args += ["--worker-tokens", str(self.workdir / "worker-tokens.json")]
        if self.metrics:
            args += ["--metrics-listen", f"{self.host}:{self.ports['metrics-' + name]}"]
        if self.persist and name in ("server-a", "server-b"):
            args += ["--state-dir", str(self.workdir / "state" / name)]
        if self.mpc_transport == "gloo":
            args += ["--mpc-transport", "gloo"]  # explicit: with TLS the default is mtls
        else:
            if not self.tls:
                raise ValueError(f"--mpc-transport {self.mpc_transport} needs tls=True")
            peers = ",".join(
                f"{other}={self.host}:{self.ports['mpc-' + other]}"
                for other in ("server-a", "server-b", "dealer")
                if other != name
            )
            args += [
                "--mpc-transport",
                self.mpc_transport,
                "--mpc-listen",
                f"{self.host}:{self.ports['mpc-' + name]}",
                "--mpc-peers",
                peers,
            ]
        return args

    def start(self, wait_s: float = 180.0) -> None:
        if not self.ports:
            self.prepare()
        for name in ("server-a", "server-b", "dealer"):
            self.spawn(name)
        self.wait_healthy(wait_s)

    def spawn(self, name: str) -> None:
        """Start one party's process (again, after :meth:`kill`); its log is appended to."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as out:  # the child keeps its own descriptor
            self.procs[name] = subprocess.Popen(
                self.command(name), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
            )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default: SIGKILL, no clean-up) to one party and reap it."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(30)

    def health(self, name: str, timeout_s: float = 2.0) -> bool:
        target = f"{self.host}:{self.ports[name]}"
        tls = self.tls_for("admin")
        with transport.make_channel(target, tls) as ch:
            try:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
                )
            except grpc.RpcError:
                return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    def wait_healthy(self, wait_s: float, names: tuple[str, ...] | None = None) -> None:
        deadline = time.monotonic() + wait_s
        pending = set(names or ("server-a", "server-b", "dealer"))
        while pending:
            for name in list(pending):
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with code {proc.returncode}; see "
                        f"{self.workdir / 'logs' / (name + '.log')}"
                    )
                if self.health(name):
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise TimeoutError(
                    f"{sorted(pending)} not healthy after {wait_s:.0f} s; see the logs in "
                    f"{self.workdir / 'logs'}"
                )
            if pending:
                time.sleep(0.2)

    def log_text(self, name: str) -> str:
        p = self.workdir / "logs" / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self) -> LocalDeployment:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
