"""No plaintext gradient, seed or share in the logs, the report or on the wire.

A real deployment (server A, server B and the dealer as processes, TLS on) runs a
round with workers going through the SDK. A tiny TCP proxy sits between the SDK and
each server's worker port and records every byte in both directions. Afterwards the
servers' logs, the operator's round report and the capture are searched for every
seed (hex, base64, raw bytes, decimal words), every share word (raw bytes, hex in both
byte orders, decimal, base64) and every gradient value. As a control, the same proxy
in front of a deployment with TLS off does see the shares and seeds: the search would
catch a leak.
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from clients.admin import AdminClient
from clients.sdk import SecAggClient
from secagg import encoding, sharing
from secagg.rounds import RoundConfig
from servers.launcher import LocalDeployment

N, D = 5, 64
IDS = [f"p{i}" for i in range(N)]
# gradients in [1000, 2000): long, distinctive decimal expansions no timing resembles
PARAMS = encoding.EncodingParams(scale=1e-3, coord_bound=2.5, norm_bound=100.0)


class TcpTap:
    """A TCP forwarder on 127.0.0.1 that records everything passing through it."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.captured = bytearray()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                with self._lock:
                    self.captured += data
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    def __enter__(self) -> TcpTap:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def data(self) -> bytes:
        with self._lock:
            return bytes(self.captured)


@dataclass
class RoundRecord:
    gradients: np.ndarray
    shares: list[sharing.WorkerShares] = field(default_factory=list)
    capture: bytes = b""
    logs: str = ""
    report: str = ""
    report_bytes: bytes = b""
    tokens: list[str] = field(default_factory=list)


def _run_round(tmp: object, tls: bool, monkeypatch: pytest.MonkeyPatch) -> RoundRecord:
    rng = np.random.default_rng()
    rec = RoundRecord(gradients=rng.uniform(1000.0, 2000.0, size=(N, D)))
    real_split = sharing.split

    def recording_split(x_enc):  # noqa: ANN001, ANN202 - the SDK's own call, recorded
        out = real_split(x_enc)
        rec.shares.append(out)
        return out

    monkeypatch.setattr(sharing, "split", recording_split)
    dep = LocalDeployment(tmp, IDS, tls=tls)
    dep.start()
    try:
        with TcpTap(dep.addr_a) as tap_a, TcpTap(dep.addr_b) as tap_b:
            rid = f"leak-{uuid.uuid4().hex[:8]}"
            admin = AdminClient(dep.control_a, dep.tls_for("admin"), token=dep.admin_token)
            with admin:
                admin.open_round(
                    RoundConfig(
                        round_id=rid,
                        n_expected=N,
                        f=1,
                        rule="multi-krum",
                        dim=D,
                        scale=PARAMS.scale,
                        coord_bound=PARAMS.coord_bound,
                        norm_bound=PARAMS.norm_bound,
                        deadline_unix_ms=int((time.time() + 120) * 1000),
                    )
                )
                for wid, g in zip(IDS, rec.gradients, strict=True):
                    with SecAggClient(
                        tap_a.address, tap_b.address, wid, dep.tokens[wid], tls=dep.worker_tls()
                    ) as c:
                        c.submit(rid, g, PARAMS)
                with SecAggClient(
                    tap_a.address, tap_b.address, IDS[0], dep.tokens[IDS[0]], tls=dep.worker_tls()
                ) as c:
                    agg = c.wait_for_result(rid, timeout_s=120)
                report = admin.get_round_report(rid)
            rec.capture = tap_a.data() + tap_b.data()
        rec.report = str(report)
        rec.report_bytes = report.SerializeToString()
        # the aggregate is right: the round really ran through the proxies
        Xenc = np.stack([encoding.encode(g, PARAMS) for g in rec.gradients])
        assert agg.vector.shape == (D,)
        assert len(rec.shares) == N and all(
            np.array_equal(sharing.reconstruct(s.seed, s.share_b), x)
            for s, x in zip(rec.shares, Xenc, strict=True)
        )
        rec.tokens = [dep.tokens[w] for w in IDS]
    finally:
        dep.stop()
    rec.logs = "\n".join(dep.log_text(n) for n in ("server-a", "server-b", "dealer"))
    assert rec.logs.strip(), "the servers wrote no logs"
    return rec


@pytest.fixture(scope="module")
def tls_round(tmp_path_factory) -> RoundRecord:
    with pytest.MonkeyPatch.context() as mp:
        return _run_round(tmp_path_factory.mktemp("tls"), True, mp)


@pytest.fixture(scope="module")
def plain_round(tmp_path_factory) -> RoundRecord:
    with pytest.MonkeyPatch.context() as mp:
        return _run_round(tmp_path_factory.mktemp("plain"), False, mp)


# ----------------------------------------------------------- what to search for
def _words(rec: RoundRecord) -> Iterator[np.int64]:
    for s in rec.shares:
        yield from s.share_b
        yield from np.frombuffer(s.seed, dtype="<i8")


def text_needles(rec: RoundRecord) -> dict[str, str]:
    """Every textual form of a secret we search the logs and the report for."""
    needles: dict[str, str] = {}
    for i, s in enumerate(rec.shares):
        needles[f"seed {i} hex"] = s.seed.hex()
        needles[f"seed {i} base64"] = base64.b64encode(s.seed).decode()
        needles[f"seed {i} urlsafe base64"] = base64.urlsafe_b64encode(s.seed).decode().rstrip("=")
        needles[f"seed {i} repr"] = repr(s.seed)[2:-1][:24]
        raw = sharing.share_to_bytes(s.share_b)
        for off in range(3):  # every base64 alignment of a long enough substring
            needles[f"share {i} base64@{off}"] = base64.b64encode(raw[off : off + 48]).decode()
        needles[f"share {i} hex"] = raw[:16].hex()
    for j, w in enumerate(_words(rec)):
        v = int(w)
        needles[f"word {j} decimal"] = str(v)
        needles[f"word {j} unsigned"] = str(v & ((1 << 64) - 1))
        needles[f"word {j} hex be"] = f"{v & ((1 << 64) - 1):016x}"
        needles[f"word {j} hex le"] = int(w).to_bytes(8, "little", signed=True).hex()
    for t, tok in enumerate(rec.tokens):
        needles[f"token {t}"] = tok
    return needles


_FLOAT = re.compile(r"\d+\.\d+(?:[eE][-+]?\d+)?")


def gradient_values_in(text: str, grads: np.ndarray) -> list[float]:
    """Decimal numbers in the text that equal a gradient coordinate to >= 6 digits."""
    vals = np.sort(grads.ravel())
    found = []
    for tok in set(_FLOAT.findall(text)):
        x = float(tok)
        if len(tok.replace(".", "").lstrip("0")) < 6 or not 999.0 < x < 2001.0:
            continue  # too short to identify a coordinate, or outside the data's range
        i = np.searchsorted(vals, x)
        near = vals[max(i - 1, 0) : i + 1]
        if np.any(np.abs(near - x) <= 1e-5 * x):
            found.append(x)
    return found


def _lower_hits(haystack: str, needles: dict[str, str]) -> list[str]:
    low = haystack.lower()
    return [name for name, n in needles.items() if n.lower() in low]


def raw_hits(capture: bytes, rec: RoundRecord) -> tuple[int, int, int]:
    """(share words found, all share words, seeds found) in a byte capture."""
    words = [int(w).to_bytes(8, "little", signed=True) for s in rec.shares for w in s.share_b]
    found = sum(w in capture for w in words)
    seeds = sum(s.seed in capture for s in rec.shares)
    return found, len(words), seeds


# ------------------------------------------------------------------------ tests
def test_logs_contain_no_seed_share_token_or_gradient(tls_round):
    hits = _lower_hits(tls_round.logs, text_needles(tls_round))
    assert not hits, f"found in the server logs: {hits[:10]}"
    assert not gradient_values_in(tls_round.logs, tls_round.gradients)
    found, _, seeds = raw_hits(tls_round.logs.encode(errors="replace"), tls_round)
    assert found == 0 and seeds == 0


def test_report_contains_no_seed_share_token_or_gradient(tls_round):
    needles = text_needles(tls_round)
    assert not _lower_hits(tls_round.report, needles)
    assert not gradient_values_in(tls_round.report, tls_round.gradients)
    found, _, seeds = raw_hits(tls_round.report_bytes, tls_round)
    assert found == 0 and seeds == 0


def test_tls_capture_contains_no_share_or_seed_bytes(tls_round):
    assert len(tls_round.capture) > 8 * N * D  # the shares did pass through the proxy
    found, total, seeds = raw_hits(tls_round.capture, tls_round)
    assert found == 0, f"{found} of {total} share words in the clear on a TLS link"
    assert seeds == 0


def test_control_without_tls_the_capture_shows_the_shares(plain_round):
    """The same proxy and search on a plaintext deployment find the secrets: the TLS
    result above is not an artefact of a blind search."""
    found, total, seeds = raw_hits(plain_round.capture, plain_round)
    assert found >= 0.9 * total and seeds == N
    # and the logs stay clean without TLS too
    assert not _lower_hits(plain_round.logs, text_needles(plain_round))


def test_the_searches_find_planted_secrets(tls_round):
    """Controls for the text searches: a log line with a seed, a share word or a
    gradient value in any of the searched forms is caught."""
    needles = text_needles(tls_round)
    s = tls_round.shares[1]
    w = int(s.share_b[3])
    planted = [
        f"debug seed={s.seed.hex()}",
        f"seed {base64.b64encode(s.seed).decode()}",
        f"share[3]={w}",
        f"share={w & ((1 << 64) - 1):016X}",
        f"x = {tls_round.gradients[2, 5]!r}",
        f"x = [{tls_round.gradients[2, 5]:.8g} ...]",
    ]
    for line in planted[:4]:
        assert _lower_hits(line, needles), line
    for line in planted[4:]:
        assert gradient_values_in(line, tls_round.gradients), line
