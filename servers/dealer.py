"""The dealer: CSPRNG correlated randomness (Beaver triples, Gram pairs) for A and B.

It joins the MPC session as rank 2, sends each server a fresh AES-256-CTR key and then
answers server A's fixed-layout requests. It never sees a share, only masks: it must
not be able to read A<->B traffic, and must not collude with either server. When a
session ends (server A rebuilt it, or a party died) it joins the next one, with fresh
keys; it keeps no state, so a restarted dealer simply joins too (servers/session.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from secagg import metrics, mpc, transport
from servers import common

log = logging.getLogger("secagg.dealer")

#: Pause between the end of a session and the next join attempt: long enough for
#: server A to finish closing the old session (whose rendezvous must be gone before a
#: new one is joined), short against a process restart.
REJOIN_PAUSE_S = 1.0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="secagg-dealer", description=__doc__)
    common.add_common_args(p, "127.0.0.1:50053")
    args = p.parse_args(argv)
    with common.starting("dealer"):  # a failure here: one line, no traceback
        settings = common.common_settings(args, "dealer")
        common.setup_logging(settings.log_level)
        common.tune_memory()
        common.disable_core_dumps()  # a core file would hold shares and keys
        metrics.serve(args.metrics_listen, "dealer", settings.tls)
        # a small threaded gRPC server only for the standard health service
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2), options=transport.server_options()
        )
        hs = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(hs, server)
        tls = settings.tls
        if tls is not None:
            creds = tls.server_credentials(require_client_auth=False)
            common.bind_port(settings.listen, lambda a: server.add_secure_port(a, creds))
        else:
            common.bind_port(settings.listen, server.add_insecure_port)
    hs.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    ready = threading.Event()

    def on_ready() -> None:
        hs.set("", health_pb2.HealthCheckResponse.SERVING)
        ready.set()
        metrics.mpc_session_built(True)

    ep = common.mpc_endpoint(settings)
    log.info('{"event": "dealer_starting"}')
    try:
        # The dealer keeps no state worth saving, so it simply rejoins whenever its
        # session ends: cleanly (server A closed it to build a new epoch, or A shut
        # down) or not (a peer died). Server A decides when a new session is built
        # (servers.session); a join attempt that finds nobody times out and is retried.
        # It stops only when its process is stopped.
        while True:
            try:
                served = mpc.run_dealer(ep, on_ready=on_ready)
                log.info('{"event": "dealer_session_ended", "requests": %d}', served)
            except Exception as exc:  # MpcError or a transport error: join again
                log.warning(
                    json.dumps({"event": "dealer_session_failed", "error": f"{exc}"[:500]})
                )
                metrics.mpc_session_broken()
            hs.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            ready.clear()
            time.sleep(REJOIN_PAUSE_S)
    finally:
        server.stop(1)


if __name__ == "__main__":
    main()
