"""Code that runs *inside* a server process of an MpcCluster to record its full view.

:class:`secagg.mpc.MpcSession` records what secagg's own openings deliver (``E``, the
distance share, the opened sum) and the party's own Gram mask share when
``session.transcript`` is a list. CrypTen's protocols (the secure comparisons of input
validation and Bulyan) talk through CrypTen's communicator instead, so this module
also wraps that communicator for the duration of one round and records what the other
party contributed to every opening: ``result - mine`` for an arithmetic sum,
``result ^ mine`` for a binary XOR, and every tensor received from the peer. On server
A it also records every request header sent to the dealer, which is everything the
dealer ever learns about a round, and every response the dealer sends back ("dealer");
on both servers the party's share of the Gram pair's ``Z = R R^T``
("dealer.gram_share", the dealer's response on A, drawn from B's dealer key on B).

The functions are module-level so that :meth:`secagg.cluster.MpcCluster.run` can pickle
them by reference; the spawned server processes import this module through the
``sys.path`` they inherit from pytest (this directory is on it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _install_comm_recorder(transcript: list[tuple[str, np.ndarray]]) -> Callable[[], None]:
    """Wrap the CrypTen communicator's receiving methods; returns the undo function."""
    import crypten.communicator as comm
    import torch
    import torch.distributed as dist

    inst = comm.get()
    rank = inst.get_rank()
    orig: dict[str, Any] = {
        name: getattr(inst, name)
        for name in ("all_reduce", "reduce", "broadcast", "recv", "gather", "all_gather")
    }

    def rec(label: str, t: torch.Tensor) -> None:
        transcript.append((label, t.detach().cpu().numpy().copy()))

    def others(out: torch.Tensor, mine: torch.Tensor, op: Any) -> torch.Tensor:
        # what the other party contributed to a 2-party reduction
        if op == dist.ReduceOp.BXOR:
            return out ^ mine
        if op == dist.ReduceOp.SUM:
            return out - mine  # int64 wraps like the ring
        return out

    def all_reduce(input, op=dist.ReduceOp.SUM, batched=False):  # noqa: A002, ANN001, ANN202
        out = orig["all_reduce"](input, op=op, batched=batched)
        pairs = zip(input, out, strict=True) if batched else [(input, out)]
        for mine, res in pairs:
            rec("crypten.all_reduce", others(res, mine, op))
        return out

    def reduce(input, dst, op=dist.ReduceOp.SUM, batched=False):  # noqa: A002, ANN001, ANN202
        out = orig["reduce"](input, dst, op=op, batched=batched)
        if dst == rank:
            pairs = zip(input, out, strict=True) if batched else [(input, out)]
            for mine, res in pairs:
                rec("crypten.reduce", others(res, mine, op))
        return out

    def broadcast(input, src, group=None, batched=False):  # noqa: A002, ANN001, ANN202
        out = orig["broadcast"](input, src, group=group, batched=batched)
        if src != rank:
            for t in out if batched else [out]:
                rec("crypten.broadcast", t)
        return out

    def recv(tensor, src=None):  # noqa: ANN001, ANN202
        out = orig["recv"](tensor, src=src)
        rec("crypten.recv", out)
        return out

    def gather(tensor, dst):  # noqa: ANN001, ANN202
        out = orig["gather"](tensor, dst)
        if dst == rank:
            for r, t in enumerate(out):
                if r != rank:
                    rec("crypten.gather", t)
        return out

    def all_gather(tensor):  # noqa: ANN001, ANN202
        out = orig["all_gather"](tensor)
        for r, t in enumerate(out):
            if r != rank:
                rec("crypten.all_gather", t)
        return out

    wrappers = {
        "all_reduce": all_reduce,
        "reduce": reduce,
        "broadcast": broadcast,
        "recv": recv,
        "gather": gather,
        "all_gather": all_gather,
    }
    for name, fn in wrappers.items():
        setattr(inst, name, fn)  # an instance attribute shadows the class's method

    def undo() -> None:
        for name in wrappers:
            inst.__dict__.pop(name, None)

    return undo


def recorded_round(session: Any, share: np.ndarray, plan: Any) -> tuple[Any, list, list]:
    """Run :func:`secagg.protocol.run_round` recording this party's complete view.

    Returns
    -------
    (PartyOutcome, transcript, dealer_headers)
        ``transcript``: (label, array) for every value received in the round, in order,
        plus the own Gram mask share. ``dealer_headers``: the int64 request headers this
        party sent to the dealer (server A only; B never talks to the dealer).
    """
    from secagg import mpc, protocol

    transcript: list[tuple[str, np.ndarray]] = []
    headers: list[np.ndarray] = []
    client = mpc._client()
    # every request goes through send_request where the client has it (request() calls
    # it), else through request itself
    hook = "send_request" if hasattr(client, "send_request") else "request"
    plain = getattr(client, hook)

    def recording(hdr, *rest):  # noqa: ANN001, ANN002, ANN202
        headers.append(hdr.numpy().copy())
        return plain(hdr, *rest)

    plain_result = client.recv_result

    def recording_result(size):  # noqa: ANN001, ANN202
        out = plain_result(size)
        transcript.append(("dealer", out.numpy().copy()))
        return out

    import crypten

    provider = crypten.mpc.get_default_provider()
    plain_finish = provider.gram_finish

    def recording_finish(gram_plan):  # noqa: ANN001, ANN202
        z = plain_finish(gram_plan)
        transcript.append(("dealer.gram_share", z.numpy().copy()))
        return z

    session.transcript = transcript
    undo = _install_comm_recorder(transcript)
    setattr(client, hook, recording)
    client.recv_result = recording_result
    provider.gram_finish = recording_finish
    try:
        out = protocol.run_round(session, share, plan)
    finally:
        session.transcript = None
        undo()
        client.__dict__.pop(hook, None)
        client.__dict__.pop("recv_result", None)
        provider.__dict__.pop("gram_finish", None)
    return out, transcript, headers
