"""``secagg health``: one gRPC health check, for Docker/Kubernetes probes and operators.

Exits 0 when the server answers SERVING for the service (the overall status "" by
default) and 1 otherwise: NOT_SERVING, unreachable, TLS refused, timeout. Docker reads
1 as unhealthy (2 is reserved there, so it is never used). One JSON line on stdout says
what happened; ``docker inspect`` keeps it with the health history.

There is no ``grpc_health_probe`` binary in the image on purpose: this module uses the
same TLS code as the servers, so a probe that passes also proves that the
certificates a worker would check are in place. Servers report SERVING only while
the MPC session with the other two parties is up and their state store takes writes;
server A also needs server B to answer its heartbeat (10 s of silence, e.g. a hung B,
is NOT_SERVING). So a healthy server A means that B and the dealer are in its session.
The reasons for NOT_SERVING are in the server's log (``"event": "health"``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc

from secagg import transport


def probe(
    addr: str,
    tls: transport.TlsConfig | None,
    *,
    server_name: str | None = None,
    service: str = "",
    timeout_s: float = 3.0,
) -> tuple[bool, str]:
    """(serving, status or error) of one Check call; never raises for RPC failures."""
    with transport.make_channel(addr, tls, server_name=server_name) as ch:
        try:
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = exc.details() if hasattr(exc, "details") else ""
            return False, f"{code.name}: {details}"
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        return resp.status == health_pb2.HealthCheckResponse.SERVING, name


def tcp_probe(addr: str, timeout_s: float = 3.0) -> tuple[bool, str]:
    """Only "something accepts connections at addr": for a relay in front of a
    mutual-TLS control port, whose health service a keyless relay cannot call."""
    import socket

    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True, "ACCEPTING"
    except (OSError, ValueError) as exc:
        return False, f"{type(exc).__name__}: {exc}"


def tls_from_args(args: argparse.Namespace) -> transport.TlsConfig | None:
    if args.insecure or not args.tls_dir:
        return None
    d = Path(args.tls_dir)
    if args.cert_name:  # a control port: present a client certificate (mTLS)
        return transport.TlsConfig.from_pki(d, args.cert_name)
    # a worker port: server authentication only, like a worker
    return transport.TlsConfig(ca_cert=d / "ca.pem")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="secagg health", description=__doc__)
    p.add_argument("--addr", required=True, help="HOST:PORT of the gRPC server")
    p.add_argument(
        "--tls-dir",
        default=os.environ.get("SECAGG_TLS_DIR"),
        help="directory with ca.pem (default $SECAGG_TLS_DIR); plaintext without it",
    )
    p.add_argument(
        "--cert-name",
        default=None,
        help="also present NAME.pem/NAME.key from --tls-dir (needed on control ports)",
    )
    p.add_argument(
        "--server-name",
        default=None,
        help="name expected in the server's certificate, if not the host in --addr",
    )
    p.add_argument("--service", default="", help="service to ask about (default: overall)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds")
    p.add_argument("--insecure", action="store_true", help="plaintext, even with --tls-dir")
    p.add_argument(
        "--tcp", action="store_true", help="only check that ADDR accepts TCP connections"
    )
    args = p.parse_args(argv)
    if args.tcp:
        ok, status = tcp_probe(args.addr, args.timeout)
        print(json.dumps({"addr": args.addr, "serving": ok, "status": status}), flush=True)
        return 0 if ok else 1
    try:
        ok, status = probe(
            args.addr,
            tls_from_args(args),
            server_name=args.server_name,
            service=args.service,
            timeout_s=args.timeout,
        )
    except (OSError, ValueError) as exc:  # unreadable TLS material: say so, stay unhealthy
        ok, status = False, f"{type(exc).__name__}: {exc}"
    print(json.dumps({"addr": args.addr, "serving": ok, "status": status}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
