"""Small network helpers shared by the launcher, the test cluster and Flower glue (#14)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1, below the kernel's ephemeral range.

    Ports handed out for *listening* must not be ones the kernel may also pick as the
    source port of an outgoing connection (32768-60999 by default): a peer that is not
    listening yet could then be "reached" through a TCP self-connect. Racy by nature
    (another process can bind it first), which callers retry.
    """
    import random

    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # everything below the range is taken: let the kernel pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
