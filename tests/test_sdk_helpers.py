"""Worker SDK: model flattening helpers, import hygiene, local error paths.

The SDK's calls against real servers are tested with the servers themselves.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_sdk_imports_without_torch_and_crypten() -> None:
    code = (
        "import sys\n"
        "sys.modules['crypten'] = None\n"
        "sys.modules['torch'] = None\n"
        "import clients, clients.sdk, clients.admin, secagg.transport, secagg.rounds\n"
        "bad = [m for m in ('torch', 'crypten') if sys.modules.get(m) is not None]\n"
        "assert not bad, bad\n"
        "assert 'grpc_health.v1.health' not in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


torch = pytest.importorskip("torch")

from clients.sdk import (  # noqa: E402 - after the torch skip on purpose
    FlatSpec,
    SecAggClient,
    SecAggClientError,
    flatten_grads,
    flatten_state,
    unflatten,
)
from secagg.encoding import EncodingParams  # noqa: E402


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(3, 4)
        self.bn = torch.nn.BatchNorm1d(4)
        self.fc2 = torch.nn.Linear(4, 2, bias=False)
        self.unused = torch.nn.Linear(2, 2)
        self.fc2.weight.data = self.fc2.weight.data.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))).double())


def test_flatten_state_round_trip() -> None:
    torch.manual_seed(0)
    model = Tiny()
    model(torch.randn(5, 3))  # updates BatchNorm's running stats and counter
    vec, spec = flatten_state(model)
    state = model.state_dict()
    assert vec.dtype == np.float64 and vec.shape == (spec.dim,)
    assert spec.skipped == ("bn.num_batches_tracked",)
    back = unflatten(vec, spec)
    assert list(back) == [k for k in state if k != "bn.num_batches_tracked"]
    for name, t in back.items():
        assert t.dtype == state[name].dtype and t.shape == state[name].shape
        assert torch.equal(t, state[name])
    other = Tiny()
    other.load_state_dict(back, strict=False)
    np.testing.assert_array_equal(flatten_state(other)[0], vec)
    # a plain state dict works too, and the spec survives JSON
    vec2, spec2 = flatten_state(state)
    np.testing.assert_array_equal(vec2, vec)
    assert FlatSpec.from_json(spec.to_json()) == spec == spec2


def test_flatten_grads_round_trip() -> None:
    torch.manual_seed(1)
    model = Tiny()
    model.fc1.bias.requires_grad_(False)
    model(torch.randn(6, 3)).square().sum().backward()
    vec, spec = flatten_grads(model)
    names = [e.name for e in spec.entries]
    assert "fc1.bias" not in names and "unused.weight" in names
    grads = unflatten(vec, spec)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        expected = p.grad if p.grad is not None else torch.zeros_like(p)
        assert torch.equal(grads[name], expected), name
    assert torch.count_nonzero(grads["unused.weight"]) == 0


def test_unflatten_checks_length() -> None:
    _, spec = flatten_state(Tiny())
    with pytest.raises(ValueError, match="spec describes"):
        unflatten(np.zeros(spec.dim + 1), spec)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_local_errors_and_retry_exhaustion() -> None:
    port = _closed_port()
    token = "secret-token-value"
    client = SecAggClient(
        f"127.0.0.1:{port}",
        f"127.0.0.1:{port}",
        "w1",
        token,
        timeout_s=2,
        retries=1,
        backoff_s=0.01,
    )
    assert token not in repr(client)
    params = EncodingParams(scale=1.0, coord_bound=1.0, norm_bound=10.0)
    with pytest.raises(SecAggClientError, match="coord_bound"):
        client.submit("r1", np.array([0.5, 2.0]), params)  # refused before any call
    with pytest.raises(SecAggClientError, match="after 2 attempts") as e:
        client.submit("r1", np.array([0.5, 0.25]), params)
    assert e.value.code is not None and e.value.code.name == "UNAVAILABLE"
    assert e.value.server == "server-a" and "check the address" in str(e.value)
    client.close()
    with pytest.raises(SecAggClientError, match="not a valid id"):
        SecAggClient("a:1", "b:1", "bad id", token)
