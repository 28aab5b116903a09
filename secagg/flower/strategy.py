"""A Flower Message-API strategy whose aggregation runs on the two secagg servers.

:class:`SecAggFedAvg` is Flower's ``FedAvg`` (node sampling, evaluation, metrics) with
training aggregation replaced: for each Flower round it opens a secagg round (rule, f,
public bounds) for the sampled nodes, tells them its id in the train config, and, once
their replies are in, fetches the robust aggregate of their *updates* from server A and
returns ``global + aggregate`` as the new global ``ArrayRecord``. The clients'
:func:`secagg.flower.secagg_mod` sends the updates to the servers as secret shares, so
the replies the strategy receives carry empty ArrayRecords; a reply that carries arrays
is refused (the mod is missing on that node).

Secagg's rules are unweighted: every selected client counts once, whatever its
``num-examples`` (which still weights the train metrics).

Failures surface as Flower failures: a round that cannot be opened, that fails on the
servers (too few participants, input validation, a dead peer), or whose result does not
arrive in time raises :class:`flwr.serverapp.exception.AggregationError` with the
reason, which stops the ServerApp with it.

Importing this module imports flwr; ``secagg.flower`` itself does not.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

try:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.serverapp import Grid
    from flwr.serverapp.exception import AggregationError
    from flwr.serverapp.strategy import FedAvg
except ImportError as exc:  # pragma: no cover - exercised only without flwr
    raise ImportError(
        f"secagg.flower.strategy needs Flower ({exc}): pip install 'secagg[flower]'"
    ) from exc

from secagg.flower.arrays import add_update, layout_of, numpy_arrays, to_record
from secagg.flower.config import ServerSettings
from secagg.flower.mod import ROUND_ID_KEY

__all__ = ["ReplyView", "RoundOutcome", "SecAggFedAvg"]

log = logging.getLogger("secagg.flower")


@dataclass(frozen=True)
class ReplyView:
    """What one node's train reply brought the Flower server (sizes, never values)."""

    node_id: int
    has_error: bool
    arrays: int  # number of arrays in its ArrayRecords
    array_bytes: int  # their serialized size
    metric_keys: tuple[str, ...]


@dataclass(frozen=True)
class RoundOutcome:
    """One Flower round as secagg ran it."""

    server_round: int
    round_id: str
    sampled: int
    participants: tuple[str, ...]
    selected: tuple[str, ...]
    replies: tuple[ReplyView, ...]
    aggregate: Any  # numpy float64 vector: the secure aggregate of the updates


def reply_view(msg: Message) -> ReplyView:
    """Sizes of what ``msg`` carries (no values), for audits and tests."""
    if msg.has_error():
        return ReplyView(msg.metadata.src_node_id, True, 0, 0, ())
    content = msg.content
    n_arrays = sum(len(r) for r in content.array_records.values())
    n_bytes = sum(len(a.data) for r in content.array_records.values() for a in r.values())
    keys = tuple(sorted(k for r in content.metric_records.values() for k in r))
    return ReplyView(msg.metadata.src_node_id, False, n_arrays, n_bytes, keys)


class SecAggFedAvg(FedAvg):
    """FedAvg whose training aggregation is a secagg round (Krum, Multi-Krum, Bulyan, mean).

    Parameters
    ----------
    settings
        Server addresses, TLS material, tokens, rule, f, bounds
        (:meth:`ServerSettings.from_run_config` reads them from the run config).
    round_prefix
        Prefix of the secagg round ids (``<prefix>-r<server_round>``); a fresh random
        one if None, so that runs never collide on the servers.
    **kwargs
        Passed to ``FedAvg`` (``fraction_train``, ``min_train_nodes``,
        ``min_available_nodes``, ``fraction_evaluate``, ...).
    """

    def __init__(
        self, settings: ServerSettings, *, round_prefix: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.round_prefix = round_prefix or f"flwr-{uuid.uuid4().hex[:12]}"
        self.outcomes: dict[int, RoundOutcome] = {}
        self._pending: dict[int, tuple[str, dict[str, Any], int]] = {}

    @classmethod
    def from_run_config(cls, run_config: Any, **kwargs: Any) -> SecAggFedAvg:
        """Build the strategy from ``context.run_config`` (see :mod:`secagg.flower.config`)."""
        return cls(ServerSettings.from_run_config(run_config), **kwargs)

    def summary(self) -> None:
        super().summary()
        log.info("secagg: %r", self.settings)

    # ----------------------------------------------------------------- plumbing
    def _admin(self) -> Any:
        from clients.admin import AdminClient
        from secagg.transport import TlsConfig

        s = self.settings
        tls = (
            TlsConfig(ca_cert=s.ca_cert, cert=s.admin_cert, key=s.admin_key)
            if s.ca_cert is not None
            else None
        )
        return AdminClient(s.admin, tls, timeout_s=s.timeout_s, token=s.admin_token)

    def _open_round(self, round_id: str, n: int, dim: int) -> None:
        from clients.sdk import SecAggClientError
        from secagg.rounds import RoundConfig

        s, p = self.settings, self.settings.params
        config = RoundConfig(
            round_id=round_id,
            n_expected=n,
            f=s.f,
            rule=s.rule,
            m=s.m,
            dim=dim,
            scale=p.scale,
            coord_bound=p.coord_bound,
            norm_bound=p.norm_bound,
            deadline_unix_ms=int((time.time() + s.deadline_s) * 1000),
        )
        try:
            with self._admin() as admin:
                admin.open_round(config)
        except SecAggClientError as exc:
            raise AggregationError(f"secagg could not open round {round_id!r}: {exc}") from None

    # ------------------------------------------------------------------ training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes as FedAvg does, open their secagg round, name it in the config."""
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if not messages:
            return messages
        global_arrays = numpy_arrays(arrays)
        dim = layout_of(global_arrays).dim
        if dim == 0:
            raise AggregationError("the model has no floating-point arrays to aggregate")
        round_id = f"{self.round_prefix}-r{server_round}"
        self._open_round(round_id, len(messages), dim)
        for msg in messages:
            msg.content[self.configrecord_key][ROUND_ID_KEY] = round_id
        self._pending[server_round] = (round_id, global_arrays, len(messages))
        log.info(
            "secagg round %s open for %d nodes (rule %s, f=%d, dim %d)",
            round_id,
            len(messages),
            self.settings.rule,
            self.settings.f,
            dim,
        )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The secagg aggregate of the nodes' updates, added to the global model.

        Raises
        ------
        AggregationError
            If a reply carries arrays (a node without ``secagg_mod``), or the secagg
            round failed or did not finish within the deadline plus the timeout.
        """
        from clients.sdk import SecAggClientError

        replies = list(replies)
        if server_round not in self._pending:
            raise AggregationError(f"round {server_round} was not configured by this strategy")
        round_id, global_arrays, sampled = self._pending.pop(server_round)
        views = tuple(reply_view(m) for m in replies)
        leaked = [v.node_id for v in views if v.arrays]
        if leaked:
            raise AggregationError(
                f"nodes {leaked} sent their model arrays to the Flower server instead of "
                "secagg: register secagg.flower.secagg_mod on their ClientApp"
            )
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            raise AggregationError(
                f"no node of round {server_round} submitted an update (secagg round "
                f"{round_id!r}); see the nodes' error replies above"
            )
        try:
            # read as the operator (the ServerApp opened the round with the admin
            # identity): only a round's participants and the operator read its aggregate
            with self._admin() as admin:
                result = admin.wait_for_result(
                    round_id, timeout_s=self.settings.deadline_s + self.settings.timeout_s
                )
                status = admin.status(round_id)
        except SecAggClientError as exc:
            raise AggregationError(f"secagg round {round_id!r} gave no aggregate: {exc}") from None
        try:
            new_arrays = add_update(global_arrays, result.vector)
        except ValueError as exc:
            raise AggregationError(str(exc)) from None
        self.outcomes[server_round] = RoundOutcome(
            server_round=server_round,
            round_id=round_id,
            sampled=sampled,
            participants=tuple(status.participants),
            selected=tuple(result.selected),
            replies=views,
            aggregate=result.vector,
        )
        log.info(
            "secagg round %s: %d participants, %d selected",
            round_id,
            len(status.participants),
            len(result.selected),
        )
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return to_record(new_arrays), metrics
