"""Everything about the wire that is not protocol logic.

* size limits and the gRPC options that enforce them;
* a development PKI (:func:`make_dev_pki`) and mTLS credentials (:class:`TlsConfig`);
* worker authentication by per-worker bearer token (:class:`TokenStore`);
* chunking of vectors into <= 1 MiB messages and their validated reassembly
  (:func:`iter_chunks`, :class:`ChunkAssembler`, :func:`read_share_stream`, ...);
* :class:`ProtocolError`, which carries the gRPC status code a server answers with.

Imports grpc, protobuf, numpy and cryptography only, so that the worker SDK can use it
without torch or CrypTen; ``grpc_health`` (a server extra) is imported lazily.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import numpy as np

from secagg.contract import ID_PATTERN, RoundError
from secagg.v1 import secagg_pb2

if TYPE_CHECKING:
    from grpc_health.v1.health import HealthServicer

__all__ = [
    "AUTHORIZATION_METADATA_KEY",
    "DEFAULT_PKI_NAMES",
    "MAX_CHUNK_BYTES",
    "MAX_CHUNK_ELEMENTS",
    "MAX_MESSAGE_BYTES",
    "WORKER_METADATA_KEY",
    "ChunkAssembler",
    "ProtocolError",
    "ReceivedShare",
    "TlsConfig",
    "TokenStore",
    "add_health_service",
    "aggregate_chunk_messages",
    "channel_options",
    "check_health",
    "check_repeated_header",
    "hash_token",
    "issue_tokens",
    "iter_chunks",
    "make_channel",
    "make_dev_pki",
    "peer_identity",
    "read_aggregate_stream",
    "read_share_stream",
    "server_options",
    "share_chunk_messages",
    "worker_metadata",
]

log = logging.getLogger("secagg.transport")

MAX_CHUNK_BYTES: int = 1 << 20
"""Largest ``data`` field of a ShareChunk / AggregateChunk (1 MiB)."""
MAX_CHUNK_ELEMENTS: int = MAX_CHUNK_BYTES // 8
MAX_MESSAGE_BYTES: int = 4 << 20
"""Largest gRPC message either side sends or accepts (4 MiB): a chunk plus headers fits."""

WORKER_METADATA_KEY: str = "x-secagg-worker"
AUTHORIZATION_METADATA_KEY: str = "authorization"
_BEARER = "Bearer "


# ------------------------------------------------------------------------- errors


class ProtocolError(Exception):
    """A request refused at the wire level, with the status code to answer it with.

    Parameters
    ----------
    code
        The gRPC status code.
    message
        What went wrong and what the client must do; sent to the client verbatim, so it
        never contains secrets or payload bytes.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    def abort(self, context: grpc.ServicerContext) -> NoReturn:
        """End the RPC with this error (``context.abort`` raises)."""
        context.abort(self.code, self.message)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    @classmethod
    def from_round_error(cls, exc: RoundError) -> ProtocolError:
        """Map a :class:`secagg.rounds.RoundError` to its status code."""
        return cls(grpc.StatusCode[exc.code], exc.message)


# ------------------------------------------------------------------- gRPC options


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Options for ``grpc.secure_channel``: cap messages both ways at 4 MiB.

    gRPC's default receive limit is already 4 MiB but its send limit is unbounded;
    setting both makes the contract explicit and makes an oversize send fail locally.
    """
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def server_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Options for ``grpc.server``: the same 4 MiB caps as :func:`channel_options`.

    Port reuse is off: with gRPC's default ``SO_REUSEPORT`` a second server started
    on the same port binds too and the kernel splits connections between the two
    (issue #17); without it the second one fails to start and says so.
    """
    return [*channel_options(max_message_bytes), ("grpc.so_reuseport", 0)]


# ---------------------------------------------------------------------------- PKI

DEFAULT_PKI_NAMES: tuple[str, ...] = ("server-a", "server-b", "dealer", "admin")
#: The identities a gRPC client pins (TLS name check against the certificate's SAN).
SERVER_A_NAME = "server-a"
SERVER_B_NAME = "server-b"
#: Identities that only ever act as TLS clients: their certificates carry only the
#: clientAuth usage and their own name, so they cannot pose as a server.
CLIENT_ONLY_NAMES: frozenset[str] = frozenset({"admin"})


def is_client_only(name: str) -> bool:
    """Whether the dev PKI issues ``name`` a client-only certificate (admin, workers)."""
    return name in CLIENT_ONLY_NAMES or name.startswith("worker-")
_PKI_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # one DNS label


def write_private(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write a secret file (key, token) atomically, mode 0o600 from its creation.

    The one way secagg writes secrets: the bytes go to a fresh temporary file created
    with ``O_CREAT | O_EXCL`` and mode 0o600 (``tempfile.mkstemp``), which then replaces
    ``path``. There is no moment at which the secret sits in a file with wider
    permissions (``write_text`` followed by ``chmod`` left a 0644 window under umask
    022), and a reader never sees half a key.
    """
    p = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
    try:
        # mkstemp already creates 0o600; fchmod guards against exotic umask/ACL setups
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if needed and make it 0o700: it holds secrets or
    logs that only the deployment's user may list and read."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(p, 0o700)  # mkdir's mode is ignored for an existing directory
    return p


def open_private_log(path: str | os.PathLike[str]) -> int:
    """A file descriptor appending to ``path``, created 0o600 if it does not exist."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


_write_private = write_private


def _write_public(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_dev_pki(
    out_dir: str | os.PathLike[str],
    names: Sequence[str] = DEFAULT_PKI_NAMES,
    workers: int = 0,
    *,
    force: bool = False,
    valid_days: int = 365,
) -> Path:
    """Create a development CA and one mTLS key pair per name.

    Layout: ``ca.pem``/``ca.key`` and ``<name>.pem``/``<name>.key`` in ``out_dir``. Each
    leaf certificate has CN and SAN DNS ``<name>``. The parties (server A, server B, the
    dealer) are TLS servers and clients (Peer, MPC links): their certificates carry both
    usages and also SAN ``localhost`` and ``127.0.0.1`` (local health probes); secagg's
    own clients pin the party's name, not the host (:data:`SERVER_A_NAME`). The admin
    and workers (:func:`is_client_only`) get clientAuth only and only their name, so
    their certificates cannot serve as a server's. Keys are EC P-256, unencrypted PKCS#8
    PEM (gRPC cannot read encrypted keys), mode 0o600.

    Idempotent: an existing CA is reused, never overwritten, and only missing, expired
    or foreign-signed leaves are (re)issued. ``force=True`` replaces the CA and re-issues
    every requested leaf (leaves of other names left in the directory become invalid).

    Not for production: the CA key sits next to the certificates it signs.

    Parameters
    ----------
    out_dir
        Directory to create or complete.
    names
        Leaf identities; each must be a lower-case DNS label.
    workers
        Also issue ``worker-0`` ... ``worker-{workers-1}`` (for deployments that want
        mTLS on the worker port as well as tokens).
    force
        Replace an existing CA.
    valid_days
        Validity of the CA and the leaves.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    FileExistsError
        If only one of ``ca.pem``/``ca.key`` exists (a CA cannot be completed, and
        replacing it silently would invalidate certificates issued before).
    ValueError
        For a name that is not a DNS label.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(out_dir)
    all_names = [*names, *(f"worker-{i}" for i in range(workers))]
    for name in all_names:
        if not _PKI_NAME.fullmatch(name):
            raise ValueError(
                f"PKI name {name!r} must be a lower-case DNS label ([a-z0-9-], at most 63 "
                "characters, no leading/trailing '-')"
            )
    out.mkdir(parents=True, exist_ok=True)
    ca_pem, ca_key_path = out / "ca.pem", out / "ca.key"
    now = datetime.datetime.now(datetime.UTC)
    # a little backdating tolerates clock skew between the machines of a deployment
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + datetime.timedelta(days=valid_days)
    pem = serialization.Encoding.PEM

    def key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    have_ca = ca_pem.exists(), ca_key_path.exists()
    if any(have_ca) and not all(have_ca) and not force:
        raise FileExistsError(
            f"{out} holds only one of ca.pem/ca.key: restore the missing file, or pass "
            "force=True to replace the CA (and re-issue every certificate)"
        )
    if all(have_ca) and not force:
        ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_path} is not an EC private key")
        ca_key = loaded
        fresh_ca = False
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "secagg development CA"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "secagg (development only)"),
            ]
        )
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ca_ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(ca_key_path, key_bytes(ca_key))
        _write_public(ca_pem, ca_cert.public_bytes(pem))
        fresh_ca = True
        log.info("dev PKI: new CA written to %s", ca_pem)

    for name in all_names:
        cert_path, key_path = out / f"{name}.pem", out / f"{name}.key"
        if not fresh_ca and cert_path.exists() and key_path.exists():
            existing = x509.load_pem_x509_certificate(cert_path.read_bytes())
            try:
                existing.verify_directly_issued_by(ca_cert)
                current = existing.not_valid_after_utc > now
            except Exception:
                # wrong issuer, unsupported algorithm, unreadable: re-issue either way
                current = False
            if current:
                continue
        client_only = is_client_only(name)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        alt_names: list[x509.GeneralName] = [x509.DNSName(name)]
        if not client_only:
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
            alt_names += [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(key_path, key_bytes(key))
        _write_public(cert_path, cert.public_bytes(pem))
        log.info("dev PKI: issued %s", cert_path)
    return out


@dataclass(frozen=True)
class TlsConfig:
    """Paths of a party's TLS material.

    Parameters
    ----------
    ca_cert
        CA certificate (PEM) that peers' certificates must chain to.
    cert, key
        This party's certificate and private key (PEM). May be None for a client that
        authenticates by token only (a worker talking to a port without client auth).
    """

    ca_cert: Path
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def from_pki(cls, pki_dir: str | os.PathLike[str], name: str) -> TlsConfig:
        """The material :func:`make_dev_pki` wrote for ``name``."""
        d = Path(pki_dir)
        return cls(ca_cert=d / "ca.pem", cert=d / f"{name}.pem", key=d / f"{name}.key")

    def _read(self) -> tuple[bytes, bytes | None, bytes | None]:
        try:
            ca = Path(self.ca_cert).read_bytes()
            cert = Path(self.cert).read_bytes() if self.cert is not None else None
            key = Path(self.key).read_bytes() if self.key is not None else None
        except OSError as exc:
            raise FileNotFoundError(
                f"cannot read TLS material ({exc}): create it with `make_dev_pki` or point "
                "the TLS options at existing files"
            ) from exc
        if (cert is None) != (key is None):
            raise ValueError("TlsConfig needs both cert and key, or neither")
        return ca, cert, key

    def server_credentials(self, require_client_auth: bool = True) -> grpc.ServerCredentials:
        """Credentials for ``server.add_secure_port``.

        With ``require_client_auth`` the handshake fails for a client without a
        certificate from ``ca_cert``: that is what keeps Peer and Admin calls to the
        two servers and the admin.
        """
        ca, cert, key = self._read()
        if cert is None or key is None:
            raise ValueError("a server needs its own certificate and key in TlsConfig")
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=require_client_auth
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for ``grpc.secure_channel`` (with a client certificate if set)."""
        ca, cert, key = self._read()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )


def make_channel(
    target: str,
    tls: TlsConfig | None = None,
    *,
    server_name: str | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel with the 4 MiB caps; TLS unless ``tls`` is None (local development).

    Parameters
    ----------
    target
        ``host:port``.
    tls
        Client TLS material; None gives a plaintext channel.
    server_name
        Expected name in the server's certificate when it differs from the host in
        ``target`` (e.g. connecting to 127.0.0.1 but verifying ``server-b``).
    options
        Extra channel options.
    """
    opts: list[tuple[str, Any]] = [*channel_options(), *options]
    if tls is None:
        return grpc.insecure_channel(target, options=opts)
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(target, tls.channel_credentials(), options=opts)


def peer_identity(context: grpc.ServicerContext) -> str | None:
    """The CN of the caller's verified client certificate, or None without mTLS."""
    values = context.auth_context().get("x509_common_name") or []
    if not values:
        return None
    first = values[0]
    return first.decode("utf-8", "replace") if isinstance(first, bytes) else str(first)


# ------------------------------------------------------------------------- health


def add_health_service(server: grpc.Server, services: Iterable[str] = ()) -> HealthServicer:
    """Register ``grpc.health.v1.Health`` on ``server``, reporting SERVING.

    The overall status ("") and every name in ``services`` start as SERVING; the server
    flips them (``set(name, NOT_SERVING)``) when, e.g., its peer is down.
    """
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    servicer = health.HealthServicer()
    for name in ("", *services):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


def check_health(channel: grpc.Channel, service: str = "", timeout_s: float = 5.0) -> bool:
    """True if the server answers SERVING for ``service``; raises grpc.RpcError otherwise
    if the call itself fails (unreachable, TLS refused, unknown service)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    return resp.status == health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------------ worker tokens


def hash_token(token: str) -> str:
    """SHA-256 hex of a token, the form a :class:`TokenStore` keeps.

    No salt or slow hash is needed: tokens are 256-bit random strings, not passwords.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def worker_metadata(worker_id: str, token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that authenticates a worker."""
    return (
        (WORKER_METADATA_KEY, worker_id),
        (AUTHORIZATION_METADATA_KEY, _BEARER + token),
    )


_HEX64 = re.compile(r"[0-9a-f]{64}")
_UNAUTH = grpc.StatusCode.UNAUTHENTICATED


class TokenStore:
    """Worker ids and the SHA-256 of their tokens; tokens themselves are never stored.

    Parameters
    ----------
    hashes
        worker_id -> lower-case SHA-256 hex of its token.
    """

    def __init__(self, hashes: Mapping[str, str]) -> None:
        for worker_id, digest in hashes.items():
            if not isinstance(worker_id, str) or not ID_PATTERN.fullmatch(worker_id):
                raise ValueError(f"token store: invalid worker id {worker_id!r}")
            if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
                raise ValueError(
                    f"token store: the entry for {worker_id!r} must be a lower-case "
                    "SHA-256 hex digest of the token (64 characters), not the token itself"
                )
        self._hashes = dict(hashes)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TokenStore:
        """Read a JSON object ``{worker_id: sha256_hex}`` (as :func:`issue_tokens` writes)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot load token store {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"token store {path} must hold a JSON object worker_id -> sha256")
        return cls(data)

    @property
    def worker_ids(self) -> frozenset[str]:
        return frozenset(self._hashes)

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def verify(self, worker_id: str, token: str) -> bool:
        """Whether ``token`` is ``worker_id``'s token, compared in constant time."""
        # An unknown id still costs one comparison, so timing does not tell which
        # worker ids exist.
        expected = self._hashes.get(worker_id, "0" * 64)
        ok = hmac.compare_digest(hash_token(token), expected)
        return ok and worker_id in self._hashes

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
        """The worker id authenticated by call metadata (``context.invocation_metadata()``).

        Raises
        ------
        ProtocolError
            UNAUTHENTICATED, with what the worker must send, if the metadata is missing
            or the token does not match. The message never echoes the token.
        """
        worker_id: str | None = None
        auth: str | None = None
        for key, value in metadata or ():
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            if key == WORKER_METADATA_KEY:
                worker_id = text
            elif key == AUTHORIZATION_METADATA_KEY:
                auth = text
        if not worker_id or not auth:
            raise ProtocolError(
                _UNAUTH,
                f"missing credentials: send metadata '{WORKER_METADATA_KEY}: <worker_id>' "
                f"and '{AUTHORIZATION_METADATA_KEY}: Bearer <token>'",
            )
        if not auth.startswith(_BEARER):
            raise ProtocolError(
                _UNAUTH, f"'{AUTHORIZATION_METADATA_KEY}' must read 'Bearer <token>'"
            )
        if not self.verify(worker_id, auth[len(_BEARER) :]):
            log.warning("authentication failed for worker id %r", worker_id[:128])
            raise ProtocolError(
                _UNAUTH,
                f"invalid token for worker {worker_id[:128]!r}: check the worker's token "
                "file, or ask the operator to issue a new token",
            )
        return worker_id


def issue_tokens(worker_ids: Iterable[str], path: str | os.PathLike[str]) -> dict[str, str]:
    """Create a fresh token per worker and record its hash in the store at ``path``.

    Entries of other workers already in the file are kept; listed workers get a new
    token (their old one stops working). The file is written atomically with mode
    0o600.

    Parameters
    ----------
    worker_ids
        Workers to issue tokens for (valid ids, see :data:`secagg.rounds.ID_PATTERN`).
    path
        The JSON token store, shared by both servers.

    Returns
    -------
    dict
        worker_id -> token, to hand to each worker over a secure channel. Not stored
        anywhere by this function.
    """
    p = Path(path)
    existing: dict[str, str] = {}
    if p.exists():
        existing = dict(TokenStore.load(p)._hashes)
    tokens: dict[str, str] = {}
    for worker_id in worker_ids:
        if not isinstance(worker_id, str) or not ID_PATTERN.fullmatch(worker_id):
            raise ValueError(f"invalid worker id {worker_id!r}: use [A-Za-z0-9._-], 1-128")
        tokens[worker_id] = secrets.token_urlsafe(32)
        existing[worker_id] = hash_token(tokens[worker_id])
    p.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(existing, indent=2, sort_keys=True) + "\n"
    _write_private(p, body.encode("utf-8"))
    return tokens


# ------------------------------------------------------------------------- chunks


def _check_chunk_size(max_chunk_bytes: int) -> int:
    if not (8 <= max_chunk_bytes <= MAX_CHUNK_BYTES and max_chunk_bytes % 8 == 0):
        raise ValueError(
            f"max_chunk_bytes must be a multiple of 8 within [8, {MAX_CHUNK_BYTES}], "
            f"got {max_chunk_bytes}"
        )
    return max_chunk_bytes


def iter_chunks(
    share: np.ndarray, max_chunk_bytes: int = MAX_CHUNK_BYTES, dtype: str = "<i8"
) -> Iterator[tuple[int, bytes]]:
    """Split a 1-D vector into ``(offset, data)`` pieces of at most ``max_chunk_bytes``.

    Parameters
    ----------
    share
        1-D array; converted to ``dtype`` (little-endian int64 by default, ``"<f8"``
        for aggregates). An integer share is never silently cast to float or back.
    max_chunk_bytes
        Multiple of 8, at most :data:`MAX_CHUNK_BYTES`.
    dtype
        ``"<i8"`` or ``"<f8"``.

    Yields
    ------
    (int, bytes)
        Element offset and little-endian bytes.
    """
    _check_chunk_size(max_chunk_bytes)
    want = np.dtype(dtype)
    arr = np.asarray(share)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D vector, got shape {arr.shape}")
    if arr.dtype.kind != want.kind or arr.dtype.itemsize != 8:
        raise ValueError(f"expected a {want} vector, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=want)
    step = max_chunk_bytes // 8
    for start in range(0, arr.shape[0], step):
        yield start, arr[start : start + step].tobytes()


class ChunkAssembler:
    """Reassembles a streamed vector, validating every chunk before storing it.

    Chunks must arrive in order, start at offset 0, hold a positive multiple of 8 bytes
    of at most ``max_chunk_bytes``, and add up to exactly ``dim`` elements. Memory grows
    with the data actually received and never beyond ``dim * 8`` bytes: a chunk that
    would exceed the declared size is refused before it is appended.

    Parameters
    ----------
    dim
        Declared number of elements (already checked against the round by the caller).
    dtype
        Element type on the wire: ``"<i8"`` (shares) or ``"<f8"`` (aggregates).
    max_chunk_bytes
        Largest accepted chunk.
    hash_chunks
        Hash each chunk as it is added (the default). False leaves the SHA-256 to
        :meth:`digest`, which then hashes the whole vector in one call: a server calls
        it off its event loop, where hashing runs in parallel with other uploads
        (hashlib releases the GIL).
    """

    def __init__(
        self,
        dim: int,
        dtype: str = "<i8",
        max_chunk_bytes: int = MAX_CHUNK_BYTES,
        *,
        hash_chunks: bool = True,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"declared dim must be a positive integer, got {dim!r}",
            )
        self.dim = int(dim)
        self.dtype = np.dtype(dtype)
        self.max_chunk_bytes = _check_chunk_size(max_chunk_bytes)
        # One allocation of the declared size, filled in place: no regrowth copies.
        # Its pages are touched only as data arrives (a share-sized block is mapped
        # lazily), so resident memory still follows the bytes received.
        self._arr = np.empty(self.dim, dtype=self.dtype)
        self._bytes = memoryview(self._arr).cast("B")
        self._n = 0
        self._hash: Any = hashlib.sha256() if hash_chunks else None
        self._finished = False

    @property
    def received(self) -> int:
        """Elements received so far."""
        return self._n // 8

    @property
    def complete(self) -> bool:
        return self._n == self.dim * 8

    def add(self, offset: int, data: bytes) -> None:
        """Validate and append one chunk.

        Raises
        ------
        ProtocolError
            INVALID_ARGUMENT for an out-of-order, gapped, overlapping, empty, oversize
            or misaligned chunk; OUT_OF_RANGE for data beyond the declared dim;
            FAILED_PRECONDITION after :meth:`finish`.
        """
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        if self._finished:
            raise ProtocolError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "chunk after the end of the vector: open a new stream for a new submission",
            )
        expected = self.received
        if offset != expected:
            kind = "overlaps data already sent" if offset < expected else "leaves a gap"
            raise ProtocolError(
                invalid,
                f"chunk at offset {offset} {kind}: expected offset {expected}; send chunks "
                "in order, without gaps or overlaps, starting at 0, and restart the whole "
                "upload on a new stream after an error",
            )
        n = len(data)
        if n == 0:
            raise ProtocolError(invalid, f"empty chunk at offset {offset}: omit empty chunks")
        if n % 8:
            raise ProtocolError(
                invalid,
                f"chunk at offset {offset} has {n} bytes, not a multiple of 8: send whole "
                "little-endian 8-byte elements",
            )
        if n > self.max_chunk_bytes:
            raise ProtocolError(
                invalid,
                f"chunk at offset {offset} has {n} bytes, over the {self.max_chunk_bytes}-byte "
                "limit: split the vector into smaller chunks",
            )
        if offset + n // 8 > self.dim:
            # refused before appending: memory stays bounded by the declared dim
            raise ProtocolError(
                grpc.StatusCode.OUT_OF_RANGE,
                f"chunk at offset {offset} with {n // 8} elements runs past the declared "
                f"dim {self.dim}: send exactly dim elements",
            )
        self._bytes[self._n : self._n + n] = data
        self._n += n
        if self._hash is not None:
            self._hash.update(data)

    def finish(self) -> np.ndarray:
        """The reassembled vector (native int64 or float64), once complete.

        Raises
        ------
        ProtocolError
            INVALID_ARGUMENT if fewer than ``dim`` elements arrived.
        """
        if not self.complete:
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"stream ended after {self.received} of {self.dim} elements: resend the "
                "whole vector from offset 0 on a new stream",
            )
        self._finished = True
        native = np.int64 if self.dtype.kind == "i" else np.float64
        return self._arr.astype(native, copy=False)

    def digest(self) -> bytes:
        """SHA-256 of all bytes received (of the whole vector after :meth:`finish`)."""
        if self._hash is None:
            return hashlib.sha256(self._bytes[: self._n]).digest()
        return self._hash.digest()


@dataclass(frozen=True)
class ReceivedShare:
    """A complete, validated share upload (server B)."""

    round_id: str
    worker_id: str
    submission_id: str
    dim: int
    share: np.ndarray
    digest: bytes


_SHARE_HEADER_FIELDS: tuple[str, ...] = ("round_id", "worker_id", "submission_id", "dim")


def check_repeated_header(first: secagg_pb2.ShareChunk, later: secagg_pb2.ShareChunk) -> None:
    """Refuse a later ``ShareChunk`` whose header differs from the first chunk's.

    The wire contract (``proto/SHARE_ENCODING.md`` §5): a later chunk leaves each header
    field unset (empty string, dim 0) or repeats the first chunk's value unchanged. One
    stream carries one submission, so a change is an error, never an update.

    Raises
    ------
    ProtocolError
        INVALID_ARGUMENT naming the first field that changed.
    """
    for name in _SHARE_HEADER_FIELDS:
        value = getattr(later, name)
        if value and value != getattr(first, name):
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"chunk at offset {later.offset} changes the header's {name} set by the first "
                "chunk: one stream carries one submission; leave the header empty after the "
                "first chunk (or repeat it unchanged) and start a new stream for another "
                "submission",
            )


def read_share_stream(
    chunks: Iterable[secagg_pb2.ShareChunk],
    resolve_dim: Callable[[str], int],
    *,
    authenticated_worker: str | None = None,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> ReceivedShare:
    """Consume a ``SubmitShare`` request stream and validate it completely.

    Parameters
    ----------
    chunks
        The request iterator.
    resolve_dim
        round_id -> the round's dim; may raise :class:`ProtocolError` (e.g. NOT_FOUND)
        or :class:`secagg.rounds.RoundError`, which is converted. Called once, on the
        first chunk, before any data is stored.
    authenticated_worker
        If given, the header's worker_id must equal it (PERMISSION_DENIED otherwise).
    max_chunk_bytes
        Largest accepted chunk.

    Raises
    ------
    ProtocolError
        For any malformed stream; nothing is stored in that case.
    """
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    it = iter(chunks)
    first = next(it, None)
    if first is None:
        raise ProtocolError(
            invalid, "empty SubmitShare stream: send at least one chunk with the header"
        )
    for name in ("round_id", "worker_id", "submission_id"):
        if not ID_PATTERN.fullmatch(getattr(first, name)):
            raise ProtocolError(
                invalid,
                f"first chunk: {name} {getattr(first, name)!r} is missing or malformed; the "
                "first chunk must carry round_id, worker_id, submission_id and dim",
            )
    if authenticated_worker is not None and first.worker_id != authenticated_worker:
        raise ProtocolError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"worker_id {first.worker_id!r} in the stream differs from the authenticated "
            f"worker {authenticated_worker!r}: submit only your own share",
        )
    try:
        dim = resolve_dim(first.round_id)
    except RoundError as exc:
        raise ProtocolError.from_round_error(exc) from None
    if first.dim != dim:
        raise ProtocolError(
            invalid,
            f"declared dim {first.dim} differs from round {first.round_id!r}'s dim {dim}: "
            "flatten the whole model for this round's configuration",
        )
    asm = ChunkAssembler(dim, "<i8", max_chunk_bytes)
    asm.add(first.offset, first.data)
    for chunk in it:
        check_repeated_header(first, chunk)
        asm.add(chunk.offset, chunk.data)
    share = asm.finish()
    return ReceivedShare(
        round_id=first.round_id,
        worker_id=first.worker_id,
        submission_id=first.submission_id,
        dim=dim,
        share=share,
        digest=asm.digest(),
    )


def share_chunk_messages(
    round_id: str,
    worker_id: str,
    submission_id: str,
    share: np.ndarray,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> Iterator[secagg_pb2.ShareChunk]:
    """The ``SubmitShare`` request stream for ``share``; header on the first chunk.

    A generator: call again for every retry (a consumed stream cannot be resent).
    """
    dim = int(np.asarray(share).shape[0])
    for offset, data in iter_chunks(share, max_chunk_bytes, "<i8"):
        if offset == 0:
            yield secagg_pb2.ShareChunk(
                round_id=round_id,
                worker_id=worker_id,
                dim=dim,
                submission_id=submission_id,
                offset=0,
                data=data,
            )
        else:
            yield secagg_pb2.ShareChunk(offset=offset, data=data)


def aggregate_chunk_messages(
    header: secagg_pb2.AggregateHeader,
    vector: np.ndarray,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> Iterator[secagg_pb2.AggregateChunk]:
    """The ``GetAggregate`` response stream; fills ``header.dim`` and ``header.digest``."""
    arr = np.ascontiguousarray(vector, dtype="<f8")
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"aggregate must be a non-empty 1-D vector, got shape {arr.shape}")
    hdr = secagg_pb2.AggregateHeader()
    hdr.CopyFrom(header)
    hdr.dim = arr.shape[0]
    hdr.digest = hashlib.sha256(memoryview(arr).cast("B")).digest()
    for offset, data in iter_chunks(arr, max_chunk_bytes, "<f8"):
        if offset == 0:
            yield secagg_pb2.AggregateChunk(header=hdr, offset=0, data=data)
        else:
            yield secagg_pb2.AggregateChunk(offset=offset, data=data)


def read_aggregate_stream(
    chunks: Iterable[secagg_pb2.AggregateChunk],
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> tuple[secagg_pb2.AggregateHeader, np.ndarray]:
    """Consume a ``GetAggregate`` response stream: header, then the float64 vector.

    Raises
    ------
    ProtocolError
        For a malformed stream, or DATA_LOSS if the digest in the header does not match.
    """
    it = iter(chunks)
    first = next(it, None)
    if first is None or not first.HasField("header"):
        raise ProtocolError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "aggregate stream without a header in its first chunk: the server is not "
            "speaking secagg.v1; check the server address",
        )
    header = first.header
    asm = ChunkAssembler(header.dim, "<f8", max_chunk_bytes)
    asm.add(first.offset, first.data)
    for chunk in it:
        asm.add(chunk.offset, chunk.data)
    vector = asm.finish()
    if header.digest and not hmac.compare_digest(header.digest, asm.digest()):
        raise ProtocolError(
            grpc.StatusCode.DATA_LOSS,
            "aggregate digest mismatch: the data was corrupted in transit; fetch it again",
        )
    return header, vector
