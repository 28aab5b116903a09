"""How much the revealed distance matrix leaks: a curious server A that knows k vectors.

Server A learns the n×n matrix of squared distances between the workers' vectors (and
the aggregate). This script runs the best reconstruction attack we know from that
view: classical multidimensional scaling (MDS) turns the distances into a point
configuration, which is exact up to a rigid motion; the k vectors A knows (colluding
workers, or public gradients) pin that motion down by orthogonal Procrustes alignment,
and the aggregate (the mean of the selected vectors, also known to A) is one more
anchor. Directions that the known points do not span cannot be pinned down: there the
attacker's best estimate (mean squared error) is zero, i.e. the projection of each
unknown vector onto the affine hull of what it knows. This is multilateration.

The error is reported relative to the guess A can make without the distances, "every
unknown vector equals the aggregate", so 1.0 means the distances taught the attacker
nothing and 0.0 means exact recovery. (Here the aggregate is the mean of all n
vectors; with it, n - 1 known vectors always give the last one.)

What it means for users
-----------------------
* With k >= r + 1 known vectors in general position, where r is the dimension of the
  affine span of all n vectors (r <= min(n - 1, d)), every other vector is recovered
  *exactly*. Colluding with r + 1 workers breaks every honest worker's privacy against
  server A.
* With k much smaller than r the attacker learns each honest vector's component in
  the k-dimensional span of the known vectors (and its norm), and nothing about the
  rest: the relative error stays close to 1. This is the "high-dimensional
  leeway" the two-server design relies on (``shared/seeds/he-karimireddy-jaggi-secure-
  byzantine-robust-ml-poster.txt``: "such distances leak very little information
  because of the high-dimensional leeway").
* The leeway is the *intrinsic* dimension of the gradients, not the parameter count d.
  Real gradients concentrate in few directions (the low-rank rows below, and the
  digits gradients when scikit-learn and torch are installed): there a handful of
  known vectors already recovers a large part of every other one. Do not treat the distance
  matrix as harmless for low-rank updates; keep server A honest-but-curious and
  non-colluding, or add noise (differential privacy) before submission.

Run: ``python -m examples.distance_leakage`` (a few seconds).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

__all__ = ["classical_mds", "reconstruct", "relative_error", "experiment", "main"]


def classical_mds(D: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """A configuration Y (n × r) whose squared distances are D (Torgerson's MDS).

    ``B = -1/2 J D J`` with ``J = I - 11^T/n`` is the Gram matrix of the centred
    points; its positive eigenpairs give Y. Eigenvalues below ``tol`` times the largest
    are treated as zero (rounding), so r is the numerical rank of the configuration.
    """
    D = np.asarray(D, dtype=np.float64)
    n = D.shape[0]
    J = np.eye(n) - 1.0 / n
    B = -0.5 * J @ D @ J
    w, V = np.linalg.eigh((B + B.T) / 2)
    keep = w > tol * max(float(w.max()), 1e-300)
    return V[:, keep] * np.sqrt(w[keep])


def reconstruct(
    D: np.ndarray,
    known: Sequence[int],
    X_known: np.ndarray,
    anchors: Sequence[tuple[Sequence[int], np.ndarray]] = (),
    tol: float = 1e-9,
) -> np.ndarray:
    """The attacker's estimate of all n vectors from D and what it knows.

    Parameters
    ----------
    D : (n, n) squared distances.
    known : indices of the vectors the attacker knows.
    X_known : (len(known), d) those vectors.
    anchors : pairs (indices, point): the mean of those vectors is known to equal
        ``point`` (the aggregate of a round, with its selection).
    tol : relative threshold for rank decisions.

    Returns
    -------
    (n, d) estimate: exact on the span the known points (and anchors) determine, the
    MMSE guess (the projection onto their affine hull) elsewhere.
    """
    Y = classical_mds(D, tol)
    P = [Y[list(known)]]
    Q = [np.asarray(X_known, dtype=np.float64)]
    for idx, point in anchors:
        P.append(Y[list(idx)].mean(axis=0, keepdims=True))
        Q.append(np.asarray(point, dtype=np.float64).reshape(1, -1))
    Pm, Qm = np.vstack(P), np.vstack(Q)
    p0, q0 = Pm.mean(axis=0), Qm.mean(axis=0)
    M = (Pm - p0).T @ (Qm - q0)  # r × d
    U, s, Vt = np.linalg.svd(M, full_matrices=False)
    rank = int(np.sum(s > tol * max(float(s.max(initial=0.0)), 1e-300)))
    # Procrustes on the determined subspace only: U_s U_s^T projects onto the span of
    # the known points' differences, R_s maps it isometrically into the data space
    R = U[:, :rank] @ Vt[:rank]
    return (Y - p0) @ R + q0


def relative_error(
    X: np.ndarray, X_hat: np.ndarray, known: Sequence[int], baseline: np.ndarray
) -> float:
    """||X_hat - X|| over the unknown rows, relative to the guess ``baseline`` for every
    unknown row (what the attacker would guess without the distances: the aggregate)."""
    unknown = [i for i in range(len(X)) if i not in set(known)]
    if not unknown:
        return 0.0
    err = np.linalg.norm(X_hat[unknown] - X[unknown])
    return float(err / np.linalg.norm(X[unknown] - baseline))


def sq_distances(X: np.ndarray) -> np.ndarray:
    G = X @ X.T
    g = np.diag(G)
    return np.maximum(g[:, None] + g[None, :] - 2 * G, 0.0)


def experiment(
    n: int,
    d: int,
    k: int,
    rng: np.random.Generator,
    rank: int | None = None,
    with_aggregate: bool = True,
) -> float:
    """Relative reconstruction error for random gradients (isotropic, or of a given
    intrinsic rank around a common mean), k known, optionally the aggregate known."""
    mean = rng.normal(size=d)
    if rank is None:
        X = mean + rng.normal(size=(n, d))
    else:
        basis, _ = np.linalg.qr(rng.normal(size=(d, rank)))
        X = mean + rng.normal(size=(n, rank)) @ basis.T
    known = list(range(k))
    anchors = [(list(range(n)), X.mean(axis=0))] if with_aggregate else []
    X_hat = reconstruct(sq_distances(X), known, X[known], anchors)
    baseline = X.mean(axis=0) if with_aggregate else X[known].mean(axis=0)
    return relative_error(X, X_hat, known, baseline)


def digits_gradients(n: int = 19, seed: int = 0) -> np.ndarray | None:
    """n workers' gradients of the digits softmax model at initialisation (d = 650),
    or None without scikit-learn/torch."""
    try:
        from examples.train_digits import gradient, load_data, make_model
    except ImportError:
        return None
    try:
        data = load_data(n, seed)
        model = make_model("softmax", seed)
    except ImportError:
        return None
    rng = np.random.default_rng(seed)
    rows = []
    for shard in data.shards:
        idx = rng.choice(shard, size=16, replace=False)
        rows.append(gradient(model, data.x_train[idx], data.y_train[idx]))
    return np.stack(rows)


def _table(title: str, header: str, rows: list[tuple[str, list[float]]], ks: list[int]) -> str:
    lines = [title, "", f"| {header} | " + " | ".join(f"k={k}" for k in ks) + " |"]
    lines.append("|---|" + "---|" * len(ks))
    for label, errs in rows:
        cells = ["-" if np.isnan(e) else f"{e:.3f}" for e in errs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=40, help="workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trials", type=int, default=3)
    a = p.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    n = a.n
    ks = [k for k in (1, 2, 5, 9, 17, 33, n - 1) if k < n]

    def mean_err(d: int, k: int, rank: int | None = None) -> float:
        return float(np.mean([experiment(n, d, k, rng, rank) for _ in range(a.trials)]))

    iso = [(f"d={d}", [mean_err(d, k) for k in ks]) for d in (4, 16, 32, 128, 1024)]
    low = [(f"d=1024, r={r}", [mean_err(1024, k, r) for k in ks]) for r in (2, 8, 32)]
    print(
        _table(
            f"Relative reconstruction error of the unknown vectors from the distance matrix "
            f"(n={n}, k known, aggregate known; 0 = exact, 1 = nothing beyond the "
            "aggregate), isotropic:",
            "dimension",
            iso,
            ks,
        )
    )
    print()
    print(_table("Same, gradients of intrinsic rank r:", "dimension, rank", low, ks))
    G = digits_gradients()
    if G is None:
        print("\n(digits gradients skipped: needs scikit-learn and torch)")
    else:
        m = len(G)
        gks = [k for k in (1, 2, 3, 5, 9, 13, 17) if k < m]
        errs = []
        for k in gks:
            anchors = [(list(range(m)), G.mean(axis=0))]
            X_hat = reconstruct(sq_distances(G), list(range(k)), G[:k], anchors)
            errs.append(relative_error(G, X_hat, list(range(k)), G.mean(axis=0)))
        sv = np.linalg.svd(G - G.mean(axis=0), compute_uv=False) ** 2
        r90 = int(np.searchsorted(np.cumsum(sv) / sv.sum(), 0.9) + 1)
        print()
        print(
            _table(
                f"Real gradients: digits softmax regression, {m} workers, d={G.shape[1]} "
                f"(90% of the spread in {r90} directions):",
                "data",
                [("digits", errs)],
                gks,
            )
        )
    print(
        "\nWith k >= r+1 known vectors (r: the rank of the vectors' spread) the rest is exact; "
        "with k << r the error stays close to 1. The leeway is r, not d."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
