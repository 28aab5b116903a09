"""Start server A, server B and the dealer as local processes (``secagg up``, tests).

Each process is started with ``python -m servers.<name>`` and the same flags a real
deployment passes, on free loopback ports. With TLS on (the default) a dev CA and
per-party certificates are made in the working directory first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from secagg import transport
from secagg.netutil import free_port

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
        transport.private_dir(self.workdir)
        if self.tls:
            transport.make_dev_pki(self.pki)
        self.tokens = transport.issue_tokens(self.worker_ids, self.workdir / "worker-tokens.json")
        import secrets

        for name in ("peer-token", "admin-token"):
            transport.write_private(self.workdir / name, secrets.token_urlsafe(32))
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

    # ------------------------------------------------------- `secagg up` re-runs
    @property
    def ports_file(self) -> Path:
        return self.workdir / "ports.json"

    def save_ports(self) -> None:
        """Keep the ports in the workdir: a re-run of ``secagg up`` listens there again."""
        self.ports_file.write_text(json.dumps(self.ports, indent=2, sort_keys=True))

    def reuse(self, tokens: dict[str, str]) -> bool:
        """Take the ports and credentials a previous run left in the workdir.

        ``tokens`` are the plaintext worker tokens that run handed out (the caller
        keeps them); they must be for this deployment's workers. Returns False, and
        changes nothing, if anything is missing: then :meth:`prepare` makes new ones.
        """
        needed = [self.ports_file, self.workdir / "worker-tokens.json"]
        needed += [self.workdir / n for n in ("peer-token", "admin-token")]
        if self.tls:
            needed += [self.pki / "ca.pem"]
        if not all(p.exists() for p in needed) or sorted(tokens) != sorted(self.worker_ids):
            return False
        store = transport.TokenStore.load(self.workdir / "worker-tokens.json")
        if not all(store.verify(w, t) for w, t in tokens.items()):
            return False  # the plaintext and the hashed files are from different runs
        self.ports = {str(k): int(v) for k, v in json.loads(self.ports_file.read_text()).items()}
        self.tokens = dict(tokens)
        self.admin_token = (self.workdir / "admin-token").read_text()
        return True

    def supervise(
        self,
        stop: threading.Event,
        say: Callable[[str], None],
        *,
        poll_s: float = 0.5,
        max_restarts: int = 5,
        window_s: float = 60.0,
    ) -> int:
        """Run until ``stop`` is set, restarting any party that exits (``secagg up``).

        Durable state makes a restart safe: a restarted server resumes its rounds, and
        the session is rebuilt (servers.session). A party that exits more than
        ``max_restarts`` times within ``window_s`` is given up on (a crash loop wants
        a person): returns 1; returns 0 once ``stop`` is set. The caller stops the
        children (:meth:`stop`).
        """
        exits: dict[str, list[float]] = {name: [] for name in self.procs}
        while not stop.wait(poll_s):
            for name, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                now = time.monotonic()
                recent = [t for t in exits[name] if now - t < window_s] + [now]
                exits[name] = recent
                log = self.workdir / "logs" / f"{name}.log"
                if len(recent) > max_restarts:
                    say(
                        f"{name} exited {len(recent)} times within {window_s:.0f} s (last "
                        f"code {code}); giving up: see {log}"
                    )
                    return 1
                say(f"{name} exited with code {code}; restarting it (see {log})")
                self.spawn(name)
        return 0

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
        logs = transport.private_dir(self.workdir / "logs")
        fd = transport.open_private_log(logs / f"{name}.log")
        with os.fdopen(fd, "ab") as out:  # the child keeps its own descriptor
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
