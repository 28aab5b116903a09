"""The dealer: CSPRNG correlated randomness (Beaver triples, Gram pairs) for A and B.

It joins the MPC session as rank 2, sends each server a fresh AES-256-CTR key and then
answers server A's fixed-layout requests. It never sees a share, only masks: it must
not be able to read A<->B traffic, and must not collude with either server.
"""

from __future__ import annotations

import argparse
import logging
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from secagg import mpc, transport
from servers import common

log = logging.getLogger("secagg.dealer")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="secagg-dealer", description=__doc__)
    common.add_common_args(p, "127.0.0.1:50053")
    args = p.parse_args(argv)
    settings = common.common_settings(args, "dealer")
    common.setup_logging(settings.log_level)
    # a small threaded gRPC server only for the standard health service
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), options=transport.server_options()
    )
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    if settings.tls is not None:
        server.add_secure_port(
            settings.listen, settings.tls.server_credentials(require_client_auth=False)
        )
    else:
        server.add_insecure_port(settings.listen)
    hs.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    ready = threading.Event()

    def on_ready() -> None:
        hs.set("", health_pb2.HealthCheckResponse.SERVING)
        ready.set()

    ep = mpc.MpcEndpoint(settings.mpc_addr, settings.mpc_port, settings.mpc_timeout_s)
    log.info('{"event": "dealer_starting"}')
    try:
        served = mpc.run_dealer(ep, on_ready=on_ready)
        log.info('{"event": "dealer_stopped", "requests": %d}', served)
    finally:
        server.stop(1)


if __name__ == "__main__":
    main()
