"""Data, model and attack shared by the ClientApp and the ServerApp.

Softmax regression 64 -> 10 in numpy (650 parameters), trained with a few local SGD
steps per round on each node's shard of scikit-learn's digits (shipped with the
package: no download). The data split is :func:`examples.train_digits.load_data`'s.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from examples.train_digits import Data, load_data
from secagg import attacks

N_FEATURES, N_CLASSES = 64, 10


@lru_cache(maxsize=2)
def data(n_nodes: int) -> Data:
    return load_data(n_nodes)


def initial_arrays() -> dict[str, np.ndarray]:
    return {
        "w": np.zeros((N_FEATURES, N_CLASSES), np.float32),
        "b": np.zeros(N_CLASSES, np.float32),
    }


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train(
    arrays: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    steps: int,
    lr: float,
    batch: int,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], float]:
    """``steps`` minibatch SGD steps on the cross-entropy; returns arrays and last loss."""
    w = arrays["w"].astype(np.float64)
    b = arrays["b"].astype(np.float64)
    loss = 0.0
    for _ in range(steps):
        idx = rng.choice(len(y), size=min(batch, len(y)), replace=False)
        p = _softmax(x[idx] @ w + b)
        loss = float(-np.mean(np.log(p[np.arange(len(idx)), y[idx]] + 1e-12)))
        p[np.arange(len(idx)), y[idx]] -= 1.0
        w -= lr * x[idx].T @ p / len(idx)
        b -= lr * p.mean(axis=0)
    return {"w": w.astype(np.float32), "b": b.astype(np.float32)}, loss


def accuracy(arrays: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    logits = x @ arrays["w"].astype(np.float64) + arrays["b"].astype(np.float64)
    return float((logits.argmax(axis=1) == y).mean())


def gaussian_attack(
    arrays: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """A Byzantine node's model: the global model plus N(0, 200^2) per coordinate."""
    dim = sum(a.size for a in arrays.values())
    noise = attacks.gaussian(1, dim, rng)[0]
    out, off = {}, 0
    for k, a in arrays.items():
        out[k] = (a + noise[off : off + a.size].reshape(a.shape)).astype(a.dtype)
        off += a.size
    return out
