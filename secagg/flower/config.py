"""Settings of the Flower integration, read from Flower's run and node configuration.

Pure: no flwr import, so the parsing is testable without Flower. Everything that is not
a secret comes from the run config (``[tool.flwr.app.config]`` in the app's
``pyproject.toml``, overridable with ``flwr run --run-config``) or, per SuperNode, from
the node config (``flower-supernode --node-config``), which overrides the run config on
that node. Tokens are never configuration values: a key naming a token (rather than a
token *file*) is refused, and tokens are read from a 0600 file whose path is configured,
or from the environment.

Run config keys (all optional except the addresses):

==========================  ======================================================
``secagg-server-a``         server A's worker endpoint ``host:port``
``secagg-server-b``         server B's worker endpoint ``host:port``
``secagg-admin``            server A's admin endpoint (ServerApp only)
``secagg-pki-dir``          a directory laid out like ``secagg certs`` writes it:
                            ``ca.pem``, and for the ServerApp ``admin.pem``/``admin.key``
``secagg-ca-cert``          CA certificate (PEM) the servers' certificates chain to
``secagg-admin-cert/-key``  the ServerApp's admin certificate and key (mutual TLS)
``secagg-insecure``         ``true`` for plaintext gRPC (local experiments only)
``secagg-rule``             ``mean``, ``krum``, ``multi-krum`` (default) or ``bulyan``
``secagg-f``                Byzantine clients tolerated (default 0)
``secagg-m``                Multi-Krum's m (0: n - f - 2)
``secagg-clip-norm``        public L2 bound on a client's update, in model units
``secagg-deadline-s``       how long a round collects submissions (default 600)
``secagg-timeout-s``        per-call timeout of the SDK (default 60)
``secagg-clip``             honest clients clip to the bounds first (default true)
==========================  ======================================================

Per SuperNode (node config or environment): ``secagg-worker-id`` (or
``SECAGG_WORKER_ID``) and ``secagg-token-file`` (or ``SECAGG_TOKEN_FILE``, or the token
itself in ``SECAGG_TOKEN``). The ServerApp acts as the operator: it opens each round
and reads its aggregate with the admin certificate, or without TLS the
``secagg-admin-token-file`` (or ``SECAGG_ADMIN_TOKEN_FILE`` / ``SECAGG_ADMIN_TOKEN``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secagg import encoding
from secagg.rules import RULES

__all__ = [
    "ClientSettings",
    "ConfigError",
    "ServerSettings",
    "check_no_secrets",
    "encoding_params",
    "merged",
]

#: ``scale`` maps the public clip norm onto this norm bound (scaled units). With input
#: validation the servers accept norm bounds up to about 200 (README, "Headroom").
NORM_BOUND_SCALED = 128.0
DEFAULT_CLIP_NORM = 10.0
DEFAULT_DEADLINE_S = 600.0
DEFAULT_TIMEOUT_S = 60.0


class ConfigError(ValueError):
    """A missing or invalid setting; the message names the key and what to set."""


Config = Mapping[str, Any]


def merged(run_config: Config, node_config: Config | None = None) -> dict[str, Any]:
    """The run config with the node config's values on top (node wins)."""
    out = dict(run_config)
    out.update(node_config or {})
    return out


def check_no_secrets(config: Config) -> None:
    """Refuse tokens given as configuration values.

    Raises
    ------
    ConfigError
        For a ``secagg-*token`` key (``secagg-token``, ``secagg-admin-token`` ...): run
        configs are stored by the SuperLink and shown by ``flwr ls``.
    """
    for key in config:
        if key.startswith("secagg-") and key.endswith("token"):
            raise ConfigError(
                f"{key!r} is in the Flower config, which the SuperLink stores and shows: "
                f"put the token in a 0600 file and set {key + '-file'!r} to its path, or "
                "use the environment variable documented in secagg.flower.config"
            )


def _str(config: Config, key: str, default: str | None = None) -> str:
    value = config.get(key, default)
    if value is None or value == "":
        if default is not None:
            return default
        raise ConfigError(f"set {key!r} in [tool.flwr.app.config] (or --run-config)")
    if not isinstance(value, str):
        raise ConfigError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _num(config: Config, key: str, default: float, *, integer: bool = False) -> Any:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key!r} must be a number, got {value!r}")
    if integer:
        if int(value) != value:
            raise ConfigError(f"{key!r} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _bool(config: Config, key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key!r} must be true or false, got {value!r}")
    return value


def _path(config: Config, key: str) -> Path | None:
    value = config.get(key, "")
    if value in ("", None):
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key!r} must be a path string, got {type(value).__name__}")
    return Path(value).expanduser()


def _secret(config: Config, file_key: str, env_file: str, env_value: str, what: str) -> str:
    """A token from the configured file, the file named in the environment, or the env."""
    path = _path(config, file_key) or (
        Path(os.environ[env_file]).expanduser() if os.environ.get(env_file) else None
    )
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the {what} from {str(path)!r} ({exc.strerror}): check "
                f"{file_key!r} / {env_file}"
            ) from None
    else:
        token = os.environ.get(env_value, "").strip()
    if not token:
        raise ConfigError(
            f"no {what}: set {file_key!r} (node or run config) to a 0600 file holding it, "
            f"or {env_file} / {env_value} in the environment"
        )
    return token


def _in_pki(config: Config, key: str, name: str) -> Path | None:
    """``key``'s path, else ``name`` inside ``secagg-pki-dir`` (if set)."""
    explicit = _path(config, key)
    if explicit is not None:
        return explicit
    pki = _path(config, "secagg-pki-dir")
    return pki / name if pki is not None else None


def _tls(config: Config) -> tuple[Path | None, bool]:
    ca = _in_pki(config, "secagg-ca-cert", "ca.pem")
    insecure = _bool(config, "secagg-insecure", False)
    if ca is None and not insecure:
        raise ConfigError(
            "set 'secagg-pki-dir' (or 'secagg-ca-cert') to the secagg servers' CA (or "
            "'secagg-insecure' = true for a plaintext local experiment)"
        )
    return (None if insecure else ca), insecure


def encoding_params(clip_norm: float) -> encoding.EncodingParams:
    """The round's public encoding parameters for updates of L2 norm <= ``clip_norm``.

    ``scale`` maps ``clip_norm`` onto :data:`NORM_BOUND_SCALED`; a coordinate cannot
    exceed the norm, so the coordinate bound equals the norm bound.
    """
    if not clip_norm > 0:
        raise ConfigError(f"'secagg-clip-norm' must be > 0, got {clip_norm!r}")
    scale = NORM_BOUND_SCALED / clip_norm
    return encoding.EncodingParams(
        scale=scale, coord_bound=NORM_BOUND_SCALED, norm_bound=NORM_BOUND_SCALED
    )


@dataclass(frozen=True)
class ClientSettings:
    """What the client mod needs on one SuperNode."""

    server_a: str
    server_b: str
    worker_id: str
    token: str
    ca_cert: Path | None
    clip: bool = True
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        return (
            f"ClientSettings(server_a={self.server_a!r}, server_b={self.server_b!r}, "
            f"worker_id={self.worker_id!r})"
        )

    @classmethod
    def from_configs(cls, run_config: Config, node_config: Config | None) -> ClientSettings:
        """Read the client's settings (node config over run config, then environment).

        Raises
        ------
        ConfigError
            Naming the missing or invalid key and where to set it.
        """
        check_no_secrets(run_config)
        check_no_secrets(node_config or {})
        cfg = merged(run_config, node_config)
        ca, _ = _tls(cfg)
        worker_id = cfg.get("secagg-worker-id") or os.environ.get("SECAGG_WORKER_ID", "")
        if not worker_id or not isinstance(worker_id, str):
            raise ConfigError(
                "this SuperNode has no secagg worker id: start it with --node-config "
                "\"secagg-worker-id='<id>' secagg-token-file='<path>'\" or set "
                "SECAGG_WORKER_ID"
            )
        return cls(
            server_a=_str(cfg, "secagg-server-a"),
            server_b=_str(cfg, "secagg-server-b"),
            worker_id=worker_id,
            token=_secret(
                cfg, "secagg-token-file", "SECAGG_TOKEN_FILE", "SECAGG_TOKEN", "worker token"
            ),
            ca_cert=ca,
            clip=_bool(cfg, "secagg-clip", True),
            timeout_s=_num(cfg, "secagg-timeout-s", DEFAULT_TIMEOUT_S),
        )


@dataclass(frozen=True)
class ServerSettings:
    """What the strategy needs in the ServerApp."""

    admin: str
    server_a: str
    server_b: str
    ca_cert: Path | None
    admin_cert: Path | None
    admin_key: Path | None
    admin_token: str | None
    rule: str = "multi-krum"
    f: int = 0
    m: int = 0
    clip_norm: float = DEFAULT_CLIP_NORM
    deadline_s: float = DEFAULT_DEADLINE_S
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __repr__(self) -> str:  # tokens stay out of logs and tracebacks
        return (
            f"ServerSettings(admin={self.admin!r}, rule={self.rule!r}, f={self.f}, "
            f"m={self.m}, clip_norm={self.clip_norm:g})"
        )

    @property
    def params(self) -> encoding.EncodingParams:
        return encoding_params(self.clip_norm)

    @classmethod
    def from_run_config(cls, run_config: Config) -> ServerSettings:
        """Read the strategy's settings from the run config (and the environment).

        Raises
        ------
        ConfigError
            Naming the missing or invalid key and where to set it.
        """
        check_no_secrets(run_config)
        cfg = dict(run_config)
        ca, insecure = _tls(cfg)
        rule = _str(cfg, "secagg-rule", "multi-krum")
        if rule not in RULES:
            raise ConfigError(f"'secagg-rule' must be one of {', '.join(RULES)}, got {rule!r}")
        f = _num(cfg, "secagg-f", 0, integer=True)
        m = _num(cfg, "secagg-m", 0, integer=True)
        if f < 0 or m < 0:
            raise ConfigError("'secagg-f' and 'secagg-m' must be >= 0")
        admin_cert = _in_pki(cfg, "secagg-admin-cert", "admin.pem")
        admin_key = _in_pki(cfg, "secagg-admin-key", "admin.key")
        if not insecure and (admin_cert is None or admin_key is None):
            raise ConfigError(
                "set 'secagg-pki-dir' (or 'secagg-admin-cert' and 'secagg-admin-key'): the "
                "operator's certificate and key, CN 'admin', which server A's admin port "
                "requires"
            )
        clip_norm = _num(cfg, "secagg-clip-norm", DEFAULT_CLIP_NORM)
        encoding_params(clip_norm)  # fail now, not at the first round
        return cls(
            admin=_str(cfg, "secagg-admin"),
            server_a=_str(cfg, "secagg-server-a"),
            server_b=_str(cfg, "secagg-server-b"),
            ca_cert=ca,
            admin_cert=None if insecure else admin_cert,
            admin_key=None if insecure else admin_key,
            admin_token=(
                _secret(
                    cfg,
                    "secagg-admin-token-file",
                    "SECAGG_ADMIN_TOKEN_FILE",
                    "SECAGG_ADMIN_TOKEN",
                    "admin token (needed without TLS)",
                )
                if insecure
                else None
            ),
            rule=rule,
            f=f,
            m=m,
            clip_norm=clip_norm,
            deadline_s=_num(cfg, "secagg-deadline-s", DEFAULT_DEADLINE_S),
            timeout_s=_num(cfg, "secagg-timeout-s", DEFAULT_TIMEOUT_S),
        )
