"""``secagg relay``: forward one TCP port to one fixed target, bytes untouched.

Why it exists: server A hosts the MPC rendezvous (torch's TCPStore), which listens on
every interface of its host, and gloo, the Peer and Admin ports sit on the same host.
On one Docker host, networks give reachability per container, not per port, so a
worker network that contained server A would reach all of them. The compose file
therefore keeps A, B and the dealer off the workers' network and puts one relay per
exposed port there: it can only ever connect to the single ``--to`` target.

TLS passes through end to end (the relay holds no key and sees only ciphertext), so
the worker still verifies server A's certificate, and mTLS client identities on a
control port still reach the server. On three machines a host firewall does this job
and no relay is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal

from servers import common

log = logging.getLogger("secagg.relay")

CHUNK = 64 * 1024


def split_addr(addr: str, what: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SystemExit(f"{what} must be HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close: gRPC may still be answering the other way."""
    while data := await src.read(CHUNK):
        dst.write(data)
        await dst.drain()
    if dst.can_write_eof():
        dst.write_eof()


class Relay:
    def __init__(self, target: tuple[str, int], connect_timeout_s: float) -> None:
        self.target = target
        self.connect_timeout_s = connect_timeout_s
        self.open = 0

    async def handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        peer = c_writer.get_extra_info("peername")
        try:
            # resolve on every connection: the target's address changes when it restarts
            u_reader, u_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), self.connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            log.warning(
                json.dumps(
                    {
                        "event": "relay_connect_failed",
                        "target": f"{self.target[0]}:{self.target[1]}",
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                )
            )
            c_writer.close()
            return
        self.open += 1
        log.debug(json.dumps({"event": "relay_open", "client": str(peer), "open": self.open}))
        tasks = [
            asyncio.create_task(_pipe(c_reader, u_writer)),
            asyncio.create_task(_pipe(u_reader, c_writer)),
        ]
        try:
            # both directions must finish (half-close); an error on either ends both
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in pending:  # only left over when the other direction failed
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for w in (u_writer, c_writer):
                w.close()
            self.open -= 1
            log.debug(json.dumps({"event": "relay_closed", "client": str(peer)}))


async def serve(listen: tuple[str, int], target: tuple[str, int], timeout_s: float) -> None:
    relay = Relay(target, timeout_s)
    server = await asyncio.start_server(relay.handle, listen[0], listen[1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        json.dumps(
            {
                "event": "relay_listening",
                "listen": f"{listen[0]}:{listen[1]}",
                "target": f"{target[0]}:{target[1]}",
            }
        )
    )
    async with server:
        await stop.wait()
    log.info(json.dumps({"event": "relay_stopped"}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="secagg relay", description=__doc__)
    p.add_argument(
        "--listen",
        default=common.env("SECAGG_RELAY_LISTEN"),
        help="HOST:PORT to accept on ($SECAGG_RELAY_LISTEN)",
    )
    p.add_argument(
        "--to",
        default=common.env("SECAGG_RELAY_TO"),
        help="HOST:PORT every connection is forwarded to ($SECAGG_RELAY_TO)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=float(common.env("SECAGG_RELAY_CONNECT_TIMEOUT_S", "10") or 10),
    )
    p.add_argument("--log-level", default=common.env("SECAGG_LOG_LEVEL", "INFO"))
    args = p.parse_args(argv)
    if not args.listen or not args.to:
        p.error("--listen and --to are required (or SECAGG_RELAY_LISTEN, SECAGG_RELAY_TO)")
    common.setup_logging(args.log_level)
    asyncio.run(
        serve(
            split_addr(args.listen, "--listen"), split_addr(args.to, "--to"), args.connect_timeout
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
