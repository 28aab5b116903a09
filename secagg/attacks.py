"""Byzantine attacks from the literature, as pure functions (evaluation and tests only).

Every attack returns what the Byzantine workers submit. Float attacks return real
vectors that the worker then encodes and shares like an honest one; the ring
wrap-around attack works on the *encoded* int64 vector and returns shares directly,
because it exploits the encoding itself. "Omniscient" attacks (ALIE, IPM, mimic, the
coordinate attack) see every honest gradient of the round, the strongest threat model
in the literature (AggregaThor's "omniscient workers", ``damaskinos-2019-aggregathor-
poster.txt``).

Sources (the short versions are in ``shared/NOTES.md``, "Attacks used in the
literature"):

- sign flip ``-g`` and Gaussian ``N(0, 200^2)``: the standard baselines (NOTES);
- label flip ``y -> 9 - y`` on 10 classes: a data-level attack (NOTES);
- ALIE: Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses For
  Distributed Learning", NeurIPS 2019;
- IPM: Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner
  Product Manipulation", UAI 2019;
- mimic: Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets
  via Bucketing", ICLR 2022;
- coordinate attack: El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of
  Distributed Learning in Byzantium", ICML 2018
  (``shared/seeds/elmhamdi-2018-hidden-vulnerability-abstract.txt``): distance-based
  rules leave the attacker a leeway growing like sqrt(d) on single coordinates;
- ring wrap-around: adding 2^63 to one coordinate of an encoded vector leaves every
  squared distance computed in Z_2^64 unchanged while the coordinate decodes to about
  ±1.4e14 (NOTES, "The ring is a trap for robust rules"). Without input validation in
  2PC (``secagg.validation``, issue #5) it passes the distance-based rules and destroys
  the aggregate; f attackers must wrap distinct coordinates, since an even number of
  2^63 offsets on one coordinate cancels in a sum.

Conventions: ``honest`` is an (h, d) float array with one honest gradient per row;
functions never modify their inputs and return new arrays.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Final

import numpy as np
from numpy.typing import ArrayLike

from secagg import sharing
from secagg.reference import sq_distances
from secagg.rules import RULES, select

__all__ = [
    "ATTACKS",
    "GAUSSIAN_SIGMA",
    "IPM_LARGE_EPS",
    "IPM_SMALL_EPS",
    "alie",
    "alie_z",
    "coordinate_attack",
    "craft",
    "flip_labels",
    "gaussian",
    "ipm",
    "mimic",
    "mimic_index",
    "ring_sq_distances",
    "sign_flip",
    "wraparound_encoded",
    "wraparound_shares",
]

#: Attack names understood by :func:`craft` (float attacks) plus the two that are not
#: vector functions of the honest gradients: "label-flip" (data level, see
#: :func:`flip_labels`) and "wraparound" (encoded level, see :func:`wraparound_shares`).
ATTACKS: Final[tuple[str, ...]] = (
    "none",
    "sign-flip",
    "gaussian",
    "label-flip",
    "alie",
    "ipm",
    "ipm-large",
    "mimic",
    "coordinate",
    "wraparound",
)

#: Standard deviation of the Gaussian attack (NOTES: N(0, 200^2)).
GAUSSIAN_SIGMA: Final[float] = 200.0
#: Xie et al.'s small epsilon, which slips past Krum-like rules by staying close to the mean.
IPM_SMALL_EPS: Final[float] = 0.1
#: A large epsilon, which overwhelms plain averaging (Xie et al. use large values too).
IPM_LARGE_EPS: Final[float] = 100.0

_SIGN_BIT: Final[np.uint64] = np.uint64(1 << 63)


def _honest(honest: ArrayLike) -> np.ndarray:
    arr = np.asarray(honest, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"honest must be a non-empty (h, d) matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("honest gradients must be finite")
    return arr


def _count(f: int) -> int:
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 0:
        raise ValueError(f"the number of Byzantine vectors must be an integer >= 0, got {f!r}")
    return int(f)


# ----------------------------------------------------------------- simple attacks


def sign_flip(g: ArrayLike) -> np.ndarray:
    """The sign-flip attack: the worker sends ``-g`` instead of its gradient ``g``.

    Parameters
    ----------
    g : array_like
        The Byzantine worker's own honestly computed gradient (any shape).

    Returns
    -------
    numpy.ndarray
        float64 ``-g``.
    """
    return -np.asarray(g, dtype=np.float64)


def gaussian(f: int, d: int, rng: np.random.Generator, sigma: float = GAUSSIAN_SIGMA) -> np.ndarray:
    """The Gaussian attack: each Byzantine worker sends an independent ``N(0, sigma^2 I)``.

    Parameters
    ----------
    f : int
        Number of Byzantine vectors.
    d : int
        Dimension.
    rng : numpy.random.Generator
        Source of the noise (the caller controls reproducibility).
    sigma : float, default 200
        Standard deviation per coordinate (NOTES).

    Returns
    -------
    numpy.ndarray
        float64, shape (f, d).
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    return rng.normal(0.0, sigma, size=(_count(f), int(d)))


def flip_labels(y: ArrayLike, num_classes: int = 10) -> np.ndarray:
    """The label-flip attack (data level): train on ``num_classes - 1 - y`` (``9 - y``).

    A Byzantine worker computes an honest-looking gradient on wrong labels, so its
    vector has the scale of a real gradient; distance-based rules see it only through
    its direction.

    Parameters
    ----------
    y : array_like of int
        Labels in ``[0, num_classes)``.
    num_classes : int, default 10

    Returns
    -------
    numpy.ndarray
        The flipped labels, same shape and integer dtype as ``y``.
    """
    arr = np.asarray(y)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{arr.min()}, {arr.max()}]")
    return (num_classes - 1 - arr).astype(arr.dtype)


# ------------------------------------------------------------ omniscient attacks


def alie_z(n: int, f: int) -> float:
    """ALIE's z: ``s = floor(n/2 + 1) - f`` and ``z = Phi^{-1}((n - s) / n)``.

    Baruch et al. (NeurIPS 2019): s is the number of honest workers the attacker needs
    "on its side" to have a majority; ``z`` is the largest shift, in standard
    deviations, such that s honest workers are still expected to be farther from the
    mean than the Byzantine value. ``Phi^{-1}`` is the standard normal quantile
    (``statistics.NormalDist().inv_cdf``: scipy is only a dev dependency).

    Examples
    --------
    >>> round(alie_z(19, 4), 4)   # AggregaThor's n = 19, f = 4: s = 6, Phi^-1(13/19)
    0.4795

    Raises
    ------
    ValueError
        If ``n < 1``, ``f < 0`` or the quantile level ``(n - s)/n`` is not in (0, 1)
        (i.e. s <= 0: so many Byzantine workers that no honest support is needed).
    """
    ni, fi = _count(n), _count(f)
    if ni < 1:
        raise ValueError(f"ALIE needs n >= 1, got n={ni}")
    s = (ni // 2 + 1) - fi  # floor(n/2 + 1) for integer n
    level = (ni - s) / ni
    if not 0.0 < level < 1.0:
        raise ValueError(
            f"ALIE's quantile level (n - s)/n = {level:.4f} is outside (0, 1) for n={ni}, "
            f"f={fi} (s={s}): the formula needs 0 < s < n"
        )
    return NormalDist().inv_cdf(level)


def alie(honest: ArrayLike, n: int, f: int, *, ddof: int = 1) -> np.ndarray:
    """ALIE ("A Little Is Enough"): ``mu - z * sigma`` per coordinate.

    ``mu`` and ``sigma`` are the per-coordinate mean and standard deviation of the
    honest gradients, ``z = alie_z(n, f)``. The vector stays within the honest spread
    on every coordinate (so distance- and median-based rules accept it) while all f
    Byzantine workers push the same way.

    Parameters
    ----------
    honest : array_like
        (h, d) honest gradients of the round (omniscient attacker).
    n, f : int
        Total number of workers and of Byzantine workers.
    ddof : int, default 1
        Delta degrees of freedom of sigma; 1 (the sample standard deviation) is what
        the authors' and Karimireddy et al.'s PyTorch code compute (``torch.std``).

    Returns
    -------
    numpy.ndarray
        float64 (d,): the vector every Byzantine worker sends.
    """
    H = _honest(honest)
    if H.shape[0] <= ddof:
        raise ValueError(f"ALIE needs more than ddof={ddof} honest gradients, got {H.shape[0]}")
    return H.mean(axis=0) - alie_z(n, f) * H.std(axis=0, ddof=ddof)


def ipm(honest: ArrayLike, eps: float = IPM_SMALL_EPS) -> np.ndarray:
    """Inner product manipulation (Xie et al., UAI 2019): ``-eps * mean(honest)``.

    The inner product of the aggregate with the true gradient turns negative once the
    Byzantine vectors outweigh the honest mean. Small eps (0.1) keeps the vector close
    to the honest cluster, which is what lets it be selected by Krum-like rules; large
    eps defeats plain averaging.

    Returns
    -------
    numpy.ndarray
        float64 (d,): the vector every Byzantine worker sends.
    """
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    return -float(eps) * _honest(honest).mean(axis=0)


def mimic_index(honest: ArrayLike) -> int:
    """The honest worker that the mimic attack copies.

    Karimireddy, He, Jaggi (ICLR 2022): the worker whose gradient is most extreme along
    the top principal direction of the honest gradients, ``argmax_i |<v, g_i - mu>|``
    with v the leading right singular vector of the centred matrix. Copying it inflates
    the weight of one (possibly atypical) worker without ever leaving the honest set.
    """
    H = _honest(honest)
    C = H - H.mean(axis=0)
    if not np.any(C):
        return 0  # all honest gradients equal: any of them is "most extreme"
    # full_matrices=False: only the leading direction is needed, keep it O(h·d)
    _, _, vt = np.linalg.svd(C, full_matrices=False)
    return int(np.argmax(np.abs(C @ vt[0])))


def mimic(honest: ArrayLike) -> np.ndarray:
    """The mimic attack: every Byzantine worker sends a copy of :func:`mimic_index`'s gradient."""
    H = _honest(honest)
    return H[mimic_index(H)].copy()


def _selects_byzantine(rule: str, H: np.ndarray, v: np.ndarray, f: int, m: int | None) -> bool:
    X = np.vstack([H, np.broadcast_to(v, (f, H.shape[1]))])
    sel = select(rule, sq_distances(X), f, m)
    return any(i >= H.shape[0] for i in sel)


def coordinate_attack(
    honest: ArrayLike,
    f: int,
    rule: str = "krum",
    *,
    coord: int | None = None,
    m: int | None = None,
    max_shift: float = 1e6,
    iters: int = 50,
) -> np.ndarray:
    """El Mhamdi et al. (ICML 2018): the honest mean with one coordinate pushed away.

    All f Byzantine workers send ``mu + delta * e_k`` where ``mu`` is the honest mean;
    the shift ``delta`` is line-searched (doubling, then bisection) for the largest
    value at which ``rule`` still selects at least one Byzantine vector. Distance-based
    rules see only ``||x - y||``, and the honest vectors are already about
    ``sigma * sqrt(2d)`` apart, so a single coordinate can be moved by an amount that
    grows like sqrt(d): the "hidden vulnerability" that Bulyan's coordinate-wise stage
    closes.

    Parameters
    ----------
    honest : array_like
        (h, d) honest gradients (omniscient attacker).
    f : int
        Number of Byzantine workers (copies of the attack vector), >= 1.
    rule : str, default "krum"
        The rule the attacker targets (one of :data:`secagg.rules.RULES`); "mean"
        selects everybody, so the shift is ``max_shift``.
    coord : int, optional
        The coordinate to push; default the one with the largest ``|mu_k|``.
    m : int, optional
        Multi-Krum's m.
    max_shift : float, default 1e6
        Upper end of the search, in gradient units.
    iters : int, default 50
        Bisection steps.

    Returns
    -------
    numpy.ndarray
        float64 (d,): the attack vector. The pushed coordinate moves against the sign
        of ``mu_k`` (towards increasing the loss along it).
    """
    H = _honest(honest)
    fi = _count(f)
    if fi < 1:
        raise ValueError("the coordinate attack needs f >= 1 Byzantine workers")
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}, expected one of {RULES}")
    mu = H.mean(axis=0)
    k = int(np.argmax(np.abs(mu))) if coord is None else int(coord)
    if not 0 <= k < H.shape[1]:
        raise ValueError(f"coord must be in [0, {H.shape[1]}), got {k}")
    direction = -1.0 if mu[k] > 0 else 1.0

    def vec(delta: float) -> np.ndarray:
        v = mu.copy()
        v[k] += direction * delta
        return v

    def ok(delta: float) -> bool:
        return _selects_byzantine(rule, H, vec(delta), fi, m)

    if not ok(0.0):
        return vec(0.0)  # not even the honest mean is selected: nothing to gain
    # the scale of the honest spread, so the search starts at a meaningful step
    spread = float(np.sqrt(np.mean(sq_distances(H)))) or 1.0
    lo, hi = 0.0, min(spread, max_shift)
    while ok(hi):
        lo = hi
        if hi >= max_shift:
            return vec(max_shift)
        hi = min(2.0 * hi, max_shift)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return vec(lo)


def craft(
    attack: str,
    honest: ArrayLike,
    own: ArrayLike,
    n: int,
    f: int,
    rng: np.random.Generator,
    *,
    rule: str = "krum",
) -> np.ndarray:
    """The f Byzantine vectors of a float attack, one per row.

    Parameters
    ----------
    attack : str
        One of "none", "sign-flip", "gaussian", "alie", "ipm", "ipm-large", "mimic",
        "coordinate". ("label-flip" is applied to the data, and "wraparound" to the
        encoded vector: see :func:`flip_labels` and :func:`wraparound_shares`.)
    honest : array_like
        (h, d) honest gradients of the round (for the omniscient attacks).
    own : array_like
        (f, d) the Byzantine workers' own honestly computed gradients ("none" returns
        them unchanged, "sign-flip" negates them).
    n, f : int
        Total workers and Byzantine workers.
    rng : numpy.random.Generator
        For the Gaussian attack.
    rule : str, default "krum"
        The rule the coordinate attack targets.

    Returns
    -------
    numpy.ndarray
        float64 (f, d).
    """
    H = _honest(honest)
    O = np.asarray(own, dtype=np.float64)  # noqa: E741 - O for "own", as in the papers
    fi = _count(f)
    if O.shape != (fi, H.shape[1]):
        raise ValueError(f"own must have shape (f, d) = {(fi, H.shape[1])}, got {O.shape}")

    def rows(v: np.ndarray) -> np.ndarray:
        return np.tile(v, (fi, 1))

    if attack == "none":
        return O.copy()
    if attack == "sign-flip":
        return sign_flip(O)
    if attack == "gaussian":
        return gaussian(fi, H.shape[1], rng)
    if attack == "alie":
        return rows(alie(H, n, fi))
    if attack == "ipm":
        return rows(ipm(H, IPM_SMALL_EPS))
    if attack == "ipm-large":
        return rows(ipm(H, IPM_LARGE_EPS))
    if attack == "mimic":
        return rows(mimic(H))
    if attack == "coordinate":
        return rows(coordinate_attack(H, fi, rule if rule in RULES else "krum"))
    raise ValueError(
        f"{attack!r} is not a float attack; expected one of none, sign-flip, gaussian, alie, "
        "ipm, ipm-large, mimic, coordinate (label-flip and wraparound act on data and shares)"
    )


# ------------------------------------------------------------ ring wrap-around


def wraparound_encoded(x_enc: ArrayLike, coord: int = 0) -> np.ndarray:
    """``x_enc`` with ``2^63`` added to coordinate ``coord`` in Z_2^64.

    In the ring, ``(x + 2^63 - y)^2 = (x - y)^2 + 2^64 (x - y) + 2^126 = (x - y)^2``,
    so every squared distance the servers compute is unchanged, while the coordinate
    now decodes to about ``-sign(x) * 2^47 / scale`` (±1.4e14 at scale 1).

    Parameters
    ----------
    x_enc : array_like
        1-D int64 encoded vector (:func:`secagg.encoding.encode`), e.g. the encoding of
        an honest-looking gradient so that the robust rules select it.
    coord : int, default 0

    Returns
    -------
    numpy.ndarray
        New int64 vector.
    """
    x = np.asarray(x_enc)
    if x.dtype != np.int64 or x.ndim != 1:
        raise ValueError(f"x_enc must be a 1-D int64 ring vector, got {x.dtype} {x.shape}")
    if not 0 <= coord < x.shape[0]:
        raise ValueError(f"coord must be in [0, {x.shape[0]}), got {coord}")
    out = x.copy()
    u = out.view(np.uint64)
    u[coord] ^= _SIGN_BIT  # + 2^63 mod 2^64 flips exactly the top bit
    return out


def wraparound_shares(x_enc: ArrayLike, coord: int = 0) -> sharing.WorkerShares:
    """Fresh shares (seed for A, ``s_B`` for B) of :func:`wraparound_encoded`.

    What a Byzantine worker that bypasses the SDK's bounds check uploads: its seed and
    share are individually uniform, like every worker's, so neither server can notice
    anything by looking; only a check in 2PC (``secagg.validation``) catches it.
    """
    return sharing.split(wraparound_encoded(x_enc, coord))


def ring_sq_distances(Xint: ArrayLike) -> np.ndarray:
    """Pairwise squared distances computed in Z_2^64 (wrapping), as the servers do.

    ``D[i, j] = (sum_k (x_ik - x_jk)^2) mod 2^64`` as int64. Equal to
    :func:`secagg.reference.sq_distances_int` whenever no true distance reaches 2^63;
    unlike it, it never raises, which is what makes the ring a trap.
    """
    X = np.asarray(Xint)
    if X.dtype != np.int64 or X.ndim != 2:
        raise ValueError(f"Xint must be a 2-D int64 matrix, got {X.dtype} {X.shape}")
    U = X.view(np.uint64)
    n = U.shape[0]
    D = np.zeros((n, n), dtype=np.uint64)
    for i in range(n):
        diff = U - U[i]  # uint64 arithmetic wraps mod 2^64 by definition
        D[i] = (diff * diff).sum(axis=1, dtype=np.uint64)
    return D.view(np.int64)
