"""The client mod: a Flower ClientApp's update goes to the secagg servers, not to Flower.

Register it on the ClientApp (``ClientApp(mods=[secagg_mod])``) or on the train handler
(``@app.train(mods=[secagg_mod])``). For a train message it

1. runs the train handler (``call_next``);
2. takes the reply's single ``ArrayRecord`` minus the global model the message carried
   (the client's *update*: the public norm bound then bounds updates, not weights, and
   every rule secagg runs commutes with adding the common global model);
3. submits the update through the worker SDK to the secagg round named in the message's
   config (``secagg-round-id``, set by :class:`secagg.flower.SecAggFedAvg`): a 32-byte
   seed to server A, the other additive share to server B;
4. returns the reply with every ``ArrayRecord`` emptied, keeping the metrics (Flower's
   reply validation wants one ArrayRecord and one MetricRecord per reply).

Other messages (evaluate, query) pass through untouched. Any failure (no round id, a
refused submission, unreachable servers) raises, so Flower reports the node's reply as
an error with the reason; the servers then leave this client out of the round.
"""

from __future__ import annotations

import logging
from typing import Any

from secagg.flower.arrays import numpy_arrays, update_vector
from secagg.flower.config import ClientSettings

__all__ = ["ROUND_ID_KEY", "SecAggModError", "find_round_id", "secagg_mod"]

log = logging.getLogger("secagg.flower")

#: The config key through which the strategy names the secagg round of a Flower round.
ROUND_ID_KEY = "secagg-round-id"


class SecAggModError(RuntimeError):
    """The mod could not hand the update to secagg; the message says what to fix."""


def find_round_id(content: Any) -> str:
    """The secagg round id from the message's ConfigRecords.

    Raises
    ------
    SecAggModError
        If no ConfigRecord carries :data:`ROUND_ID_KEY`.
    """
    for record in content.config_records.values():
        value = record.get(ROUND_ID_KEY)
        if isinstance(value, str) and value:
            return value
    raise SecAggModError(
        f"the train message has no {ROUND_ID_KEY!r} in its config: the ServerApp must use "
        "secagg.flower.SecAggFedAvg (or set the key to a round opened on the secagg servers)"
    )


def _single_arrays(content: Any, what: str) -> tuple[str, Any]:
    records = list(content.array_records.items())
    if len(records) != 1:
        raise SecAggModError(
            f"{what} has {len(records)} ArrayRecords; secagg_mod needs exactly one (the model)"
        )
    return records[0]


def secagg_mod(msg: Any, context: Any, call_next: Any) -> Any:
    """Flower ``Mod``: submit the train reply's update to secagg, send Flower no arrays.

    Parameters
    ----------
    msg : flwr.app.Message
        The incoming message.
    context : flwr.app.Context
        Its ``run_config`` and ``node_config`` hold the settings
        (:class:`secagg.flower.config.ClientSettings`).
    call_next : ClientAppCallable
        The rest of the ClientApp.

    Returns
    -------
    flwr.app.Message
        The train handler's reply with its arrays removed (other messages: untouched).

    Raises
    ------
    SecAggModError, secagg.flower.config.ConfigError, clients.sdk.SecAggClientError
        With the reason; Flower turns it into an error reply for this node.
    """
    from flwr.app import Message, MessageType

    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    settings = ClientSettings.from_configs(context.run_config, context.node_config)
    round_id = find_round_id(msg.content)
    _, global_record = _single_arrays(msg.content, "the train message")
    global_arrays = numpy_arrays(global_record)

    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    _, local_record = _single_arrays(reply.content, "the train handler's reply")
    try:
        update = update_vector(numpy_arrays(local_record), global_arrays)
    except ValueError as exc:
        raise SecAggModError(str(exc)) from None

    # the SDK's own imports (grpc, cryptography) are paid only by train messages
    from clients.sdk import SecAggClient
    from secagg.transport import TlsConfig

    tls = TlsConfig(ca_cert=settings.ca_cert) if settings.ca_cert is not None else None
    with SecAggClient(
        settings.server_a,
        settings.server_b,
        settings.worker_id,
        settings.token,
        tls=tls,
        timeout_s=settings.timeout_s,
    ) as client:
        receipt = client.submit(round_id, update, clip=settings.clip)
    log.info("submitted update to %s as %s", round_id, receipt.submission_id)

    content = reply.content
    for record in content.array_records.values():
        record.clear()  # Flower sees an empty ArrayRecord: no individual update
    return Message(content, reply_to=msg)
