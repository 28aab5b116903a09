"""deploy/docker-compose.yml, checked without a Docker engine.

CI has no Docker engine, so the compose file is exercised in two ways that keep it
from rotting:

* ``docker-compose config`` (or ``docker compose config``) validates it when a Compose
  CLI is installed (``scripts/ci-deps.sh`` installs one), and its resolution of the
  variables must equal the one below.
* Every service's own command runs NATIVELY on loopback, in ``depends_on`` order, and
  the demo ``workers`` service's round must succeed, with TLS, and match the plaintext
  reference. What runs here is what the containers run, the parties' MPC links over
  mutual TLS included: the test checks from the processes' own sockets that A, B and
  the dealer talk over those links (to the ports their peers configured) and that no
  other port (a gloo rendezvous or gloo pair) is left listening.

Mapping from a container to a native process (the only liberties taken):

==============================  =====================================================
compose                         native
==============================  =====================================================
``secagg ARGS`` (entry point)   ``sys.executable -m secagg.cli ARGS``; inside ``sh -c``
                                scripts through a ``secagg`` shim first on PATH
``python ARGS``                 ``sys.executable ARGS`` (same shim trick)
image WORKDIR ``/app``          the repository root (cwd), which is what the image holds
``${VAR:-default}``             interpolated as compose does; every ``*_PORT`` variable
                                gets a free local port, and the demo is shrunk (few
                                workers, small dim)
host ``service-name``,          ``127.0.0.1`` (in ``HOST:PORT``, also inside lists such
``0.0.0.0``                     as ``SECAGG_MPC_PEERS=server-b=server-b:PORT,...``, and
                                in values that are just a host name)
named volume ``V`` at ``/T``    a temp dir ``volumes/V``; ``/T`` is rewritten to it in the
                                service's environment, command and health check
``healthcheck.test`` ``CMD``    the same argv, run until it exits 0
``networks``, ``ports``,        not reproducible on loopback: checked statically
``read_only``, ``cap_drop``     (test_network_isolation) or left to Docker
==============================  =====================================================
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from secagg import encoding, reference
from secagg.cluster import free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"

# a small demo: the point is the wiring, not the size (2 shared cores in CI)
DEMO = {
    "SECAGG_WORKERS": "8",
    "SECAGG_DEMO_DIM": "64",
    "SECAGG_DEMO_BYZANTINE": "2",
    "SECAGG_DEMO_F": "2",
    "SECAGG_DEMO_RULE": "multi-krum",
    "SECAGG_DEMO_SEED": "7",
    "SECAGG_DEMO_DEADLINE_S": "60",
    "SECAGG_MPC_TIMEOUT_S": "120",  # the three import torch at once on two cores
}
PARTIES = ("server-a", "server-b", "dealer")
# gloo's settings, which the mtls MPC transport does not use: none may be left behind
GLOO_ONLY = ("SECAGG_MPC_ADDR", "SECAGG_MPC_PORT", "GLOO_SOCKET_IFNAME", "MASTER_ADDR")
# the private key each service may see; `certs` makes them all (and alone mounts `ca`)
OWN_KEYS = {
    "server-a": {"server-a.key"},
    "server-b": {"server-b.key"},
    "dealer": {"dealer.key"},
    "workers": {"admin.key"},  # the demo also plays A's operator
}
STARTUP_S = 150.0
PROBE_EVERY_S = 2.0
ROUND_S = 120.0


# --------------------------------------------------------------- interpolation
_INTERP = re.compile(
    r"\$(?:(?P<esc>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|(?P<bad>))"
)


def interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose's ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``; anything
    else (``${VAR:?err}``...) fails loudly so that this test never guesses."""

    def sub(m: re.Match[str]) -> str:
        if m["esc"]:
            return "$"
        name = m["braced"] or m["named"]
        if name is None:
            raise ValueError(f"unsupported interpolation in {text!r}")
        value = variables.get(name)
        if m["op"] == ":-" and not value:
            return m["default"]
        if m["op"] == "-" and value is None:
            return m["default"]
        return value or ""

    return _INTERP.sub(sub, text)


def _walk(node: Any, variables: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_walk(x, variables) for x in node]
    if isinstance(node, dict):
        return {k: _walk(v, variables) for k, v in node.items()}
    return node


def variable_names() -> set[str]:
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))


def native_variables() -> dict[str, str]:
    """Free ports for every *_PORT variable (distinct), plus the small demo."""
    out = dict(DEMO)
    used: set[int] = set()
    for name in sorted(variable_names()):
        if name.endswith("_PORT"):
            port = free_port()
            while port in used:
                port = free_port()
            used.add(port)
            out[name] = str(port)
    return out


def load(variables: dict[str, str]) -> dict[str, Any]:
    return _walk(yaml.safe_load(COMPOSE.read_text()), variables)


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: "" if v is None else str(v) for k, v in raw.items()}


def networks_of(svc: dict[str, Any]) -> set[str]:
    nets = svc.get("networks") or []
    return set(nets if isinstance(nets, list) else nets.keys())


def mounts_of(svc: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(volume, target, read_only) for the short syntax SRC:TARGET[:ro]."""
    out = []
    for v in svc.get("volumes") or []:
        src, target, *mode = v.split(":")
        out.append((src, target, mode == ["ro"]))
    return out


# ------------------------------------------------------------------ static checks
@pytest.fixture(scope="module")
def variables() -> dict[str, str]:
    return native_variables()


@pytest.fixture(scope="module")
def spec(variables: dict[str, str]) -> dict[str, Any]:
    return load(variables)


def compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


def test_compose_config_validates(variables: dict[str, str], spec: dict[str, Any]) -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip("no Compose CLI (docker-compose / docker compose): run scripts/ci-deps.sh")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECAGG_")}
    env.update(variables)
    proc = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)["services"]
    assert set(resolved) == set(spec["services"])
    # compose's own interpolation must agree with the one the native run relies on
    for name, svc in spec["services"].items():
        got = resolved[name]
        assert got.get("command") == svc.get("command"), name
        assert env_of(got) == env_of(svc), name
        if "healthcheck" in svc:
            assert got["healthcheck"]["test"] == svc["healthcheck"]["test"], name


def test_network_isolation(spec: dict[str, Any]) -> None:
    """Workers reach the two worker ports (through relays) and nothing else of A, B or
    the dealer: no MPC port, control port or dealer."""
    svcs = spec["services"]
    parties = PARTIES
    for p in parties:
        # one network each: the internal one, where the MPC links and Peer run
        assert networks_of(svcs[p]) == {"mpc"}, p
    assert spec["networks"]["mpc"].get("internal") is True
    assert not networks_of(svcs["workers"]) & {"mpc"}
    listen = {p: env_of(svcs[p]).get("SECAGG_LISTEN", "") for p in parties}
    control = {p: env_of(svcs[p]).get("SECAGG_CONTROL_LISTEN", "") for p in parties}
    worker_ports = {f"{p}:{listen[p].rpartition(':')[2]}" for p in ("server-a", "server-b")}
    for name, svc in svcs.items():
        if name == "workers" or "workers" not in networks_of(svc):
            continue
        # everything else on the workers' network is a relay to a worker port
        assert svc["command"] == ["secagg", "relay"], name
        assert env_of(svc)["SECAGG_RELAY_TO"] in worker_ports, name
    for name, svc in svcs.items():
        if name == "workers" or "ops" not in networks_of(svc):
            continue
        assert svc["command"] == ["secagg", "relay"], name
        a_control = control["server-a"].rpartition(":")[2]
        assert env_of(svc)["SECAGG_RELAY_TO"] == f"server-a:{a_control}", name
    # the dealer's only gRPC port (health) is on its own loopback
    assert listen["dealer"].startswith("127.0.0.1:")


def mpc_topology() -> tuple[tuple[str, ...], dict[str, set[str]]]:
    """The MPC layer's party names (certificate CNs) and whom each party dials."""
    from secagg.mpc_link import PARTY_NAMES, SENDS_TO

    return PARTY_NAMES, {PARTY_NAMES[r]: {PARTY_NAMES[d] for d in SENDS_TO[r]} for r in SENDS_TO}


def mpc_peers(value: str) -> dict[str, str]:
    from servers.common import _mpc_peers

    return _mpc_peers(value)


def test_mpc_links_are_mutual_tls(spec: dict[str, Any]) -> None:
    """A, B and the dealer run their MPC links over mutual TLS (no plaintext gloo):
    each listens on its own port, dials exactly the parties it sends to at the ports
    they listen on, and presents the certificate `certs` gives it, whose CN is the
    party name the MPC layer checks."""
    names, dials = mpc_topology()
    assert set(names) == set(PARTIES), "compose services are named as the MPC parties"
    svcs = spec["services"]
    envs = {p: env_of(svcs[p]) for p in PARTIES}
    listen = {}
    for p, env in envs.items():
        assert env.get("SECAGG_MPC_TRANSPORT") == "mtls", p
        assert not set(GLOO_ONLY) & set(env), f"{p}: gloo settings {set(GLOO_ONLY) & set(env)}"
        host, _, port = env["SECAGG_MPC_LISTEN"].rpartition(":")
        assert host == "0.0.0.0" and port, p  # reachable on `mpc` (a container's eth0)
        listen[p] = port
    for p, env in envs.items():
        peers = mpc_peers(env["SECAGG_MPC_PEERS"])
        assert set(peers) == dials[p], (p, peers)
        for name, addr in peers.items():
            assert addr == f"{name}:{listen[name]}", (p, name, addr)  # service DNS name
    # each party's TLS dir gets its own NAME.pem/.key (CN NAME) and the CA from `certs`
    script = svcs["certs"]["command"][-1]
    for p, env in envs.items():
        tls_dir = env["SECAGG_TLS_DIR"]
        assert any(t == tls_dir and ro for _, t, ro in mounts_of(svcs[p])), p
        copy = rf"^\s*cp ca\.pem {re.escape(p)}\.pem {re.escape(p)}\.key .*{re.escape(tls_dir)}/$"
        assert re.search(copy, script, re.M), f"{p}: its certificate is not copied to {tls_dir}"


def test_addresses_are_services_and_port_variables(
    variables: dict[str, str], spec: dict[str, Any]
) -> None:
    """The conventions the native run relies on: every HOST:PORT names a service (or a
    wildcard/loopback) and its port comes from a ${..._PORT} variable, never a literal."""
    ports = {v for k, v in variables.items() if k.endswith("_PORT")}
    hosts = {*spec["services"], "0.0.0.0", "127.0.0.1"}
    for name, svc in spec["services"].items():
        strings = [*svc["command"], *env_of(svc).values()]
        strings += (svc.get("healthcheck") or {}).get("test", [])
        for text in strings:
            for host, port in re.findall(r"(?<![\w./-])([\w.-]+):(\d+)\b", text):
                assert host in hosts, f"{name}: {host}:{port} is not a service name"
                assert port in ports, f"{name}: port {port} is a literal, not a *_PORT variable"


def test_services_settings(spec: dict[str, Any]) -> None:
    svcs = spec["services"]
    for name, svc in svcs.items():
        oneshot = "healthcheck" not in svc
        assert svc.get("restart") == ("no" if oneshot else "unless-stopped"), name
        assert svc["image"] == spec["services"]["certs"]["image"], "one image for all"
        assert svc.get("read_only") is True and svc.get("cap_drop") == ["ALL"], name
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in svcs, (name, dep)
            assert cond["condition"] in (
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            )
    for p in ("server-a", "server-b", "dealer"):
        env = env_of(svcs[p])
        assert env["SECAGG_TLS_DIR"], f"{p} runs with TLS"
    for p in ("server-a", "server-b"):  # a durable volume at the state dir
        state = env_of(svcs[p])["SECAGG_STATE_DIR"]
        assert any(t == state and not ro for _, t, ro in mounts_of(svcs[p])), p
    # the CA key's volume is mounted by the one-shot certs service only
    for name, svc in svcs.items():
        if any(src == "ca" for src, _, _ in mounts_of(svc)):
            assert name == "certs", name
    for src, _, ro in (m for n, s in svcs.items() if n != "certs" for m in mounts_of(s)):
        assert ro or src in ("state-a", "state-b", "results"), f"{src} must be read-only"


def test_every_variable_is_documented() -> None:
    readme = (DEPLOY / "README.md").read_text()
    example = (DEPLOY / "env.example").read_text()
    for name in sorted(variable_names()):
        assert name in readme, f"{name} is not documented in deploy/README.md"
        assert name in example, f"{name} is missing from deploy/env.example"


# ------------------------------------------- `secagg round --servers` credentials
def _round_args(**kw: Any) -> Any:
    import argparse

    base = dict(tokens=None, tls_dir=None, insecure=False, admin=None, admin_token_file=None)
    return argparse.Namespace(**{**base, **kw})


def test_round_servers_credentials(tmp_path: Path) -> None:
    """The workers service passes everything explicitly (no `secagg up` workdir);
    `--servers` + `--workdir` of a `secagg up` deployment keeps working as before."""
    from secagg.cli import _remote_credentials

    wd = tmp_path / "up"
    wd.mkdir()
    (wd / "worker-tokens.plain.json").write_text('{"worker-000": "t0"}')
    (wd / "admin-token").write_text("adm\n")
    info = {"tls": True, "pki": str(wd / "pki"), "admin": "127.0.0.1:1"}
    (wd / "deployment.json").write_text(json.dumps(info))
    assert _remote_credentials(_round_args(), wd) == (
        {"worker-000": "t0"},
        True,
        wd / "pki",
        "127.0.0.1:1",
        None,
    )
    info["tls"] = False
    (wd / "deployment.json").write_text(json.dumps(info))
    assert _remote_credentials(_round_args(admin="h:2"), wd)[1:] == (False, None, "h:2", "adm")

    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"w": "x"}')
    explicit = _round_args(tokens=str(tokens), tls_dir=str(tmp_path / "ops"), admin="a:3")
    empty = tmp_path / "nothing-here"  # no deployment.json is needed, none is read
    assert _remote_credentials(explicit, empty) == ({"w": "x"}, True, tmp_path / "ops", "a:3", None)
    with pytest.raises(SystemExit, match="--tls-dir"):
        _remote_credentials(_round_args(tokens=str(tokens)), empty)


# ------------------------------------------------------------------- native run
@dataclass
class Native:
    name: str
    argv: list[str]
    env: dict[str, str]
    health: list[str] | None
    health_timeout_s: float
    depends: dict[str, str]
    mounts: dict[str, Path]  # container target -> host dir
    proc: subprocess.Popen | None = None
    probe: subprocess.Popen | None = None
    last_probe: float = 0.0
    healthy: bool = False
    log: Path | None = None

    @property
    def oneshot(self) -> bool:
        return self.health is None


def _seconds(value: str | None, default: float) -> float:
    if not value:
        return default
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", value)
    assert m, value
    return int(m[1] or 0) * 60 + float(m[2] or 0)


class Translator:
    """Rewrites one service's strings from container terms to native ones."""

    def __init__(self, services: list[str], mounts: dict[str, Path]) -> None:
        self.mounts = {t: str(h) for t, h in mounts.items()}
        targets = "|".join(re.escape(t) for t in sorted(mounts, key=len, reverse=True))
        # one pass, longest target first, so a rewritten path is never rewritten again
        self.paths = re.compile(rf"({targets})(?![\w.-])") if mounts else None
        names = "|".join(re.escape(s) for s in sorted(services, key=len, reverse=True))
        self.host_port = re.compile(rf"(?<![\w.-])({names}|0\.0\.0\.0|localhost)(?=:\d)")
        self.services = set(services)

    def __call__(self, s: str, whole_value: bool = False) -> str:
        if self.paths is not None:
            s = self.paths.sub(lambda m: self.mounts[m[1]], s)
        s = self.host_port.sub("127.0.0.1", s)
        if whole_value and (s in self.services or s == "0.0.0.0"):
            s = "127.0.0.1"
        return s


def _argv(cmd: list[str]) -> list[str]:
    if cmd[0] == "secagg":
        return [sys.executable, "-m", "secagg.cli", *cmd[1:]]
    if cmd[0] == "python":
        return [sys.executable, *cmd[1:]]
    return cmd


def native_services(spec: dict[str, Any], tmp: Path) -> dict[str, Native]:
    shim = tmp / "bin"
    shim.mkdir()
    for tool, line in (("secagg", "-m secagg.cli "), ("python", "")):
        p = shim / tool
        p.write_text(f'#!/bin/sh\nexec "{sys.executable}" {line}"$@"\n')
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("SECAGG_", "GLOO_", "MASTER_"))
    }
    base["PATH"] = f"{shim}{os.pathsep}{base.get('PATH', '')}"
    base["PYTHONPATH"] = str(ROOT)
    volumes = tmp / "volumes"
    out: dict[str, Native] = {}
    for name, svc in spec["services"].items():
        mounts: dict[str, Path] = {}
        for src, target, _ in mounts_of(svc):
            assert src in spec["volumes"], f"{name}: only named volumes ({src})"
            host = volumes / src
            host.mkdir(parents=True, exist_ok=True, mode=0o700)
            mounts[target] = host
        tr = Translator(list(spec["services"]), mounts)
        cmd = svc["command"]
        assert isinstance(cmd, list), f"{name}: write commands as lists"
        env = dict(base)
        env.update({k: tr(v, whole_value=True) for k, v in env_of(svc).items()})
        health = None
        hc = svc.get("healthcheck")
        if hc:
            test = hc["test"]
            assert test[0] == "CMD", f"{name}: health checks as [CMD, ...]"
            health = _argv([tr(x) for x in test[1:]])
        out[name] = Native(
            name=name,
            argv=_argv([tr(x) for x in cmd]),
            env=env,
            health=health,
            health_timeout_s=_seconds((hc or {}).get("timeout"), 30.0),
            depends={d: c["condition"] for d, c in (svc.get("depends_on") or {}).items()},
            mounts=mounts,
            log=tmp / "logs" / f"{name}.log",
        )
    return out


# /proc/net/tcp states
TCP_ESTABLISHED, TCP_LISTEN = "01", "0A"


def tcp_sockets(pid: int) -> list[tuple[int, int, str]]:
    """(local port, remote port, state) of every TCP socket process ``pid`` holds, read
    from /proc (Linux): its socket inodes, looked up in its network namespace's tables."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    out = []
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if inode in inodes:
                out.append(
                    (int(local.rpartition(":")[2], 16), int(remote.rpartition(":")[2], 16), state)
                )
    return out


def check_mpc_over_mtls(svcs: dict[str, Native]) -> None:
    """What the parties' processes show that they use the mtls MPC transport.

    * Each party logged secagg.mpc_link's line for an authenticated session.
    * Its sockets: an established connection to each party it sends to, at that party's
      MPC port, and accepted ones on its own MPC port from each party that sends to it.
      With gloo none of these would exist (gloo pairs use ports from a rendezvous).
    * It listens on its gRPC ports only: no rendezvous store, no gloo pair listener,
      and the mTLS listener is closed once the session is up."""
    names, dials = mpc_topology()
    envs = {p: svcs[p].env for p in PARTIES}
    mpc_port = {p: int(e["SECAGG_MPC_LISTEN"].rpartition(":")[2]) for p, e in envs.items()}
    for p in PARTIES:
        env = envs[p]
        assert env["SECAGG_MPC_TRANSPORT"] == "mtls", p
        assert not set(GLOO_ONLY) & set(env), p
        log = svcs[p].log.read_text(errors="replace")
        up = [
            json.loads(line)
            for line in log.splitlines()
            if line.startswith("{") and "has authenticated TLS links" in line
        ]
        assert up and all(e["logger"] == "secagg.mpc_link" for e in up), _tail(svcs[p])
        # dialled addresses are the peers' MPC ports, as configured
        peers = mpc_peers(env["SECAGG_MPC_PEERS"])
        assert {n: int(a.rpartition(":")[2]) for n, a in peers.items()} == {
            n: mpc_port[n] for n in dials[p]
        }, p
    if not Path("/proc/self/fd").is_dir():
        return  # the socket checks need Linux's /proc
    for p in PARTIES:
        proc = svcs[p].proc
        assert proc is not None and proc.poll() is None, p
        socks = tcp_sockets(proc.pid)
        listening = {lp for lp, _, st in socks if st == TCP_LISTEN}
        grpc_ports = {
            int(svcs[p].env[k].rpartition(":")[2])
            # gRPC ports, and the metrics endpoint (secagg.metrics)
            for k in ("SECAGG_LISTEN", "SECAGG_CONTROL_LISTEN", "SECAGG_METRICS_LISTEN")
            if svcs[p].env.get(k)
        }
        assert listening <= grpc_ports, f"{p} listens on {listening - grpc_ports} too"
        established = [(lp, rp) for lp, rp, st in socks if st == TCP_ESTABLISHED]
        for dst in dials[p]:
            assert any(rp == mpc_port[dst] for _, rp in established), f"{p} -> {dst}: no link"
        senders = {q for q in PARTIES if p in dials[q]}
        accepted = sum(lp == mpc_port[p] for lp, _ in established)
        assert accepted == len(senders), f"{p}: {accepted} MPC links accepted, not {senders}"


def _tail(svc: Native, n: int = 3000) -> str:
    text = svc.log.read_text(errors="replace") if svc.log and svc.log.exists() else ""
    return f"--- {svc.name} ---\n{text[-n:]}"


class NativeRun:
    """Starts services in depends_on order, as compose would, and tears them down."""

    def __init__(self, services: dict[str, Native]) -> None:
        self.svcs = services
        self.started_at: dict[str, float] = {}

    def _ready(self, dep: str, condition: str) -> bool:
        d = self.svcs[dep]
        if condition == "service_started":
            return d.proc is not None
        if condition == "service_healthy":
            return d.healthy
        if condition == "service_completed_successfully":
            return d.proc is not None and d.proc.poll() == 0
        raise AssertionError(condition)

    def _start(self, svc: Native) -> None:
        assert svc.log is not None
        svc.log.parent.mkdir(exist_ok=True)
        out = open(svc.log, "ab")  # noqa: SIM115 - the child owns it
        svc.proc = subprocess.Popen(
            svc.argv, env=svc.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
        out.close()
        self.started_at[svc.name] = time.monotonic()

    def _probe(self, svc: Native) -> None:
        """Health probes run concurrently, one in flight per service, like Docker's.

        Each probe is a Python process: on two shared cores, probing everything every
        second slows the servers' start-up more than it saves. So a service is probed
        every PROBE_EVERY_S, and only once the services it depends on that have a
        health check are healthy (before that its own check cannot pass: a relay's
        goes through to its server)."""
        if svc.probe is not None:
            rc = svc.probe.poll()
            if rc is None:
                if time.monotonic() - svc.last_probe > svc.health_timeout_s:
                    svc.probe.kill()
                    svc.probe.wait()
                    svc.probe = None
                return
            svc.healthy = rc == 0
            svc.probe = None
        gated = any(not self.svcs[d].healthy for d in svc.depends if not self.svcs[d].oneshot)
        if not svc.healthy and not gated and time.monotonic() - svc.last_probe >= PROBE_EVERY_S:
            assert svc.health is not None
            svc.last_probe = time.monotonic()
            svc.probe = subprocess.Popen(
                svc.health,
                env=svc.env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def until_oneshots_exit(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            for svc in self.svcs.values():
                if svc.proc is None and all(self._ready(d, c) for d, c in svc.depends.items()):
                    self._start(svc)
            for svc in self.svcs.values():
                if svc.proc is None:
                    continue
                rc = svc.proc.poll()
                if svc.oneshot:
                    assert rc in (None, 0), f"{svc.name} exited {rc}\n{self.logs()}"
                else:
                    assert rc is None, f"{svc.name} died ({rc})\n{self.logs()}"
                    self._probe(svc)
            if all(
                s.proc is not None and s.proc.poll() == 0 for s in self.svcs.values() if s.oneshot
            ):
                return
            if time.monotonic() > deadline:
                waiting = {
                    s.name: ("not started" if s.proc is None else "unhealthy")
                    for s in self.svcs.values()
                    if s.proc is None or not (s.healthy or s.oneshot)
                }
                raise AssertionError(f"timed out; waiting for {waiting}\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(_tail(s) for s in self.svcs.values() if s.proc is not None)

    def stop(self) -> None:
        procs = [p for s in self.svcs.values() for p in (s.proc, s.probe) if p is not None]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def test_compose_services_run_natively(spec: dict[str, Any], tmp_path: Path) -> None:
    t0 = time.monotonic()
    svcs = native_services(spec, tmp_path)
    run = NativeRun(svcs)
    try:
        run.until_oneshots_exit(STARTUP_S + ROUND_S)
        elapsed = time.monotonic() - t0
        ready = run.started_at["workers"] - t0  # workers waits for all six to be healthy

        # each service sees its own private key and no other; the CA key only in certs
        for name, svc in svcs.items():
            keys = {p.name for d in svc.mounts.values() for p in d.glob("*.key")}
            if name == "certs":
                assert "ca.key" in keys
            else:
                assert keys == OWN_KEYS.get(name, set()), (name, keys)

        # the round: TLS on, the secure result equals the plaintext reference
        results = svcs["workers"].mounts["/results"]
        X = np.load(results / "inputs.npy")
        agg = np.load(results / "aggregate.npy")
        report = json.loads((results / "report.json").read_text())
        n, rule, f = (
            int(DEMO["SECAGG_WORKERS"]),
            DEMO["SECAGG_DEMO_RULE"],
            int(DEMO["SECAGG_DEMO_F"]),
        )
        assert X.shape == (n, int(DEMO["SECAGG_DEMO_DIM"]))
        assert len(report["participants"]) == n
        ref = reference.aggregate(X, rule, f)
        ids = sorted(report["participants"])
        assert report["selected"] == [ids[i] for i in ref.selected]
        byz = {ids[i] for i in range(n - int(DEMO["SECAGG_DEMO_BYZANTINE"]), n)}
        assert not byz & set(report["selected"]), "the sign-flipped workers were rejected"
        res = encoding.resolution(encoding.EncodingParams(scale=1.0, coord_bound=1, norm_bound=1))
        assert np.max(np.abs(agg - ref.aggregate)) <= res
        text = svcs["workers"].log.read_text()
        assert "selection identical, max |secure - plaintext| = 0\n" in text, text

        # what the workers dialled speaks TLS only: plaintext gets no answer
        edge = svcs["edge-a"].health
        assert edge is not None and "--tls-dir" in edge
        plain = subprocess.run(
            [*edge, "--insecure"], env=svcs["edge-a"].env, capture_output=True, text=True
        )
        assert plain.returncode == 1, plain.stdout
        ok = subprocess.run(edge, env=svcs["edge-a"].env, capture_output=True, text=True)
        assert ok.returncode == 0 and json.loads(ok.stdout)["status"] == "SERVING"

        # the servers' logs are JSON lines (what `docker compose logs` shows)
        events = []
        for line in svcs["server-a"].log.read_text().splitlines():
            if line.startswith("{"):
                events.append(json.loads(line).get("event"))
        assert "mpc_ready" in events

        # the MPC links between A, B and the dealer were mutual TLS, not gloo
        check_mpc_over_mtls(svcs)
        print(f"compose services healthy after {ready:.1f} s, round done at {elapsed:.1f} s")
    finally:
        run.stop()
