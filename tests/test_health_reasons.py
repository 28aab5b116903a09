"""Health says when a server cannot do its job (issue #17, item 6).

* a disk that refuses writes makes the server NOT_SERVING, and SERVING again once it
  takes them (the store's write probe);
* server A reports a hung server B (SIGSTOP) within seconds, with the reason logged,
  and recovers when B runs again: see ``tests/test_reliability.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from servers.launcher import ROOT

# Runs in its own process: RLIMIT_FSIZE (the disk "full" for this process: a write
# that extends a file fails with EFBIG) must not touch pytest's own files.
_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, resource, signal, sys, time
    from grpc_health.v1 import health, health_pb2
    from secagg.store import SqliteStore
    from servers import common

    async def main(d):
        common.setup_logging("INFO")  # JSON lines on stderr
        st = SqliteStore(d + "/server-b.db", "server-b")
        hs = health.aio.HealthServicer()

        async def status():
            r = await hs.Check(health_pb2.HealthCheckRequest(service=""), None)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

        async def until(want):
            end = time.monotonic() + 60
            while (got := await status()) != want and time.monotonic() < end:
                await asyncio.sleep(0.02)
            return got

        await common.set_health(hs, True)  # the MPC session is up
        task = asyncio.create_task(common.watch_store(hs, st, d, interval_s=0.05))
        seen = [await status()]
        st._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the next write extends the WAL
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
        seen.append(await until("NOT_SERVING"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        seen.append(await until("SERVING"))
        task.cancel()
        print(json.dumps(seen))

    asyncio.run(main(sys.argv[1]))
    """
)


def test_a_disk_that_refuses_writes_makes_the_server_not_serving(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [
        "SERVING",
        "NOT_SERVING",
        "SERVING",
    ]
    # the reason is in the log line that reports the change (health carries none)
    events = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
    down = [e for e in events if e.get("event") == "health" and not e["serving"]]
    assert any("cannot write its state" in e["reasons"].get("store", "") for e in down)
