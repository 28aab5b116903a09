"""Secure Byzantine-robust aggregation for Flower apps (``pip install 'secagg[flower]'``).

Two pieces, added to an existing Flower Message-API app:

* :func:`secagg_mod`, a ClientApp mod: the train reply's update goes to the two secagg
  servers as secret shares; Flower receives an empty ArrayRecord and the metrics.
* :class:`SecAggFedAvg`, a ServerApp strategy: each Flower round is a secagg round
  (Krum, Multi-Krum, Bulyan or the mean) and its aggregate is the new global model.

Settings come from the run config (:mod:`secagg.flower.config`). Importing this package
does not import flwr; the names below load it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from secagg.flower.config import ClientSettings, ConfigError, ServerSettings
    from secagg.flower.mod import secagg_mod
    from secagg.flower.strategy import SecAggFedAvg

__all__ = ["ClientSettings", "ConfigError", "SecAggFedAvg", "ServerSettings", "secagg_mod"]

_WHERE = {
    "ClientSettings": "secagg.flower.config",
    "ConfigError": "secagg.flower.config",
    "ServerSettings": "secagg.flower.config",
    "secagg_mod": "secagg.flower.mod",
    "SecAggFedAvg": "secagg.flower.strategy",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'secagg.flower' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
