"""Plaintext selection rules: Krum, Multi-Krum and Bulyan on a squared-distance matrix.

Every selection function takes ``D``, the n×n matrix of squared Euclidean distances
between the workers' vectors (``D[i, j] = ||G_i - G_j||^2``), and returns worker indices.
The secure two-server protocol reveals exactly such a matrix (in fixed point, as int64)
and then applies these functions, so they are the single definition of what is selected.

Definitions follow the seeds in ``shared/seeds/`` and ``shared/golden/README.md``:

- Krum and Multi-Krum: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with
  Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017
  (``payberah-2020-robust-learning-slides.txt``); the bound ``1 <= m <= n-f-2`` on
  Multi-Krum's m is from Damaskinos et al., "AggregaThor: Byzantine Machine Learning via
  Robust Gradient Aggregation", SysML 2019 (``damaskinos-2019-aggregathor-poster.txt``).
- Bulyan: El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed
  Learning in Byzantium", ICML 2018 (``elmhamdi-2018-hidden-vulnerability-abstract.txt``
  and the Bulyan slides in ``payberah-2020-robust-learning-slides.txt``).

Ties are always broken towards the lowest worker index. Equal scores arise exactly (not
only up to rounding) when Krum uses one neighbour: two mutual nearest neighbours i, j
both score ``D[i, j]``. Reproducing that tie requires ``D`` to be exactly symmetric,
which is why asymmetric input is rejected instead of symmetrised here.

All functions validate their parameters first and raise :class:`RuleError` naming the
violated bound with the actual numbers. Nothing is clamped and no input is modified.
"""

from __future__ import annotations

from typing import Final

import numpy as np

__all__ = [
    "RULES",
    "RuleError",
    "bulyan_beta",
    "bulyan_coordinate",
    "bulyan_select",
    "bulyan_theta",
    "bulyan_window_sum",
    "krum",
    "krum_scores",
    "multi_krum",
    "select",
    "validate_params",
]

RULES: Final[tuple[str, ...]] = ("mean", "krum", "multi-krum", "bulyan")

_INT64_MAX: Final[int] = int(np.iinfo(np.int64).max)


class RuleError(ValueError):
    """A rule's precondition does not hold (bound on n, f, m; malformed input)."""


# --------------------------------------------------------------------------- validation


def _check_int(value: object, name: str, fn: str) -> int:
    # bool is an int subclass; f=True is almost certainly a bug, not f=1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise RuleError(
            f"{fn} needs {name} to be an integer, got {name}={value!r} ({type(value).__name__})"
        )
    return int(value)


def _check_f(f: object, fn: str) -> int:
    fi = _check_int(f, "f", fn)
    if fi < 0:
        raise RuleError(f"{fn} needs f >= 0, got f={fi}")
    return fi


def _as_numeric(a: np.ndarray, name: str, fn: str) -> np.ndarray:
    """``a`` as int64 (integer input) or float64 (floating input), without copying
    when it already is one; never written to."""
    arr = np.asarray(a)
    kind = arr.dtype.kind
    if kind == "f":
        return arr.astype(np.float64, copy=False)
    if kind == "i":
        return arr.astype(np.int64, copy=False)
    if kind == "u":
        if arr.size and int(arr.max()) > _INT64_MAX:
            # no value in the message: D is secret (SECURITY.md)
            raise RuleError(f"{fn} needs {name} values <= 2^63-1 (dtype {arr.dtype})")
        return arr.astype(np.int64)
    raise RuleError(f"{fn} needs a real integer or floating {name}, got dtype {arr.dtype}")


def _check_distances(D: np.ndarray, fn: str) -> np.ndarray:
    """Validate a squared-distance matrix and return it as int64 or float64."""
    arr = _as_numeric(D, "D", fn)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise RuleError(f"{fn} needs a square 2-D D, got shape {arr.shape}")
    n = arr.shape[0]
    if n < 1:
        raise RuleError(f"{fn} needs n >= 1 workers, got n={n}")
    # The messages name neither values nor positions: in the service D is what only
    # server A may see, and these errors travel to server B, logs and statuses
    # (SECURITY.md). A wrapped ring value shows up as a negative distance.
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise RuleError(f"{fn} needs a finite D: some entry is not finite")
    if not np.array_equal(arr, arr.T):
        raise RuleError(
            f"{fn} needs an exactly symmetric D: compute each pair once and mirror it "
            "(tie-breaking depends on exact symmetry)"
        )
    if np.any(np.diagonal(arr) != 0):
        raise RuleError(f"{fn} needs a zero diagonal in D")
    if np.any(arr < 0):
        raise RuleError(
            f"{fn} needs squared distances >= 0: some distance is negative (in the ring, "
            "a vector outside the encoding's headroom wrapped around 2^63)"
        )
    return arr


def _check_krum_bound(n: int, f: int, fn: str) -> None:
    if n < 2 * f + 3:
        raise RuleError(f"{fn} needs n >= 2f+3, got n={n}, f={f}: add workers or lower f")


def _check_bulyan_bound(n: int, f: int, fn: str) -> None:
    if n < 4 * f + 3:
        raise RuleError(f"{fn} needs n >= 4f+3, got n={n}, f={f}: add workers or lower f")


# ------------------------------------------------------------------------------- Krum


def _scores(D: np.ndarray, k: int) -> np.ndarray:
    """Sum of the k smallest off-diagonal entries of each row (D already validated)."""
    n = D.shape[0]
    # boolean indexing copies, so sorting in place never touches the caller's D
    off = D[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    off.sort(axis=1)
    nearest = off[:, :k]
    if D.dtype.kind == "i" and nearest.size:
        # D >= 0 was checked, so max * k bounds every score. Past int64, sum exact Python
        # integers instead of failing: a Byzantine vector at the norm bound must not be
        # able to abort the round by overflowing a score.
        top = int(nearest.max())
        if top * k > _INT64_MAX:
            return np.array([sum(int(v) for v in row) for row in nearest], dtype=object)
    return nearest.sum(axis=1)


def krum_scores(D: np.ndarray, f: int, *, neighbours: int | None = None) -> np.ndarray:
    """Krum scores of all workers.

    ``score(i) = sum of the k smallest D[i, j] over j != i``, with ``k = n - f - 2`` by
    default (Blanchard et al., NeurIPS 2017; ``payberah-2020-robust-learning-slides.txt``:
    "i -> j denotes that G_j belongs to the n-f-2 closest vectors to G_i").

    This function does not enforce Krum's ``n >= 2f+3`` (:func:`krum` and
    :func:`multi_krum` do), so that Bulyan's later picks can score a shrunken set.

    Parameters
    ----------
    D : np.ndarray
        n×n squared distances, int64 or float64, exactly symmetric, zero diagonal.
    f : int
        Assumed number of Byzantine workers, ``f >= 0``.
    neighbours : int, optional
        k, the number of nearest neighbours summed; ``1 <= k <= n - 1``.

    Returns
    -------
    np.ndarray
        Shape (n,), int64 for integer D (exact; Python ints in an object array when a
        score would exceed int64) and float64 for floating D.

    Raises
    ------
    RuleError
        If D is malformed, f is not an integer >= 0 or k is outside ``[1, n-1]``.
    """
    fn = "krum_scores"
    arr = _check_distances(D, fn)
    fi = _check_f(f, fn)
    n = arr.shape[0]
    if neighbours is None:
        k = n - fi - 2
        if not 1 <= k <= n - 1:
            raise RuleError(
                f"{fn} needs 1 <= neighbours <= n-1, got neighbours=n-f-2={k} "
                f"(n={n}, f={fi}): add workers, lower f or pass neighbours"
            )
    else:
        k = _check_int(neighbours, "neighbours", fn)
        if not 1 <= k <= n - 1:
            raise RuleError(f"{fn} needs 1 <= neighbours <= n-1, got neighbours={k}, n={n}")
    return _scores(arr, k)


def krum(D: np.ndarray, f: int) -> int:
    """Index of the Krum winner.

    ``argmin_i score(i)`` with ``k = n - f - 2`` neighbours, ties to the lowest index;
    requires ``n >= 2f + 3`` (Blanchard et al., NeurIPS 2017;
    ``payberah-2020-robust-learning-slides.txt``).

    Raises
    ------
    RuleError
        If D is malformed, f is not an integer >= 0 or ``n < 2f + 3``.
    """
    fn = "krum"
    arr = _check_distances(D, fn)
    fi = _check_f(f, fn)
    n = arr.shape[0]
    _check_krum_bound(n, fi, fn)
    # np.argmin returns the first minimum: the lowest index on ties
    return int(np.argmin(_scores(arr, n - fi - 2)))


def multi_krum(D: np.ndarray, f: int, m: int | None = None) -> list[int]:
    """Indices of the m workers with the lowest Krum scores, in pick order.

    Scores are computed once, as for :func:`krum` (``k = n - f - 2``; requires
    ``n >= 2f + 3``), then ordered by ``(score, index)`` so ties go to the lowest index;
    the result lists the picks in that order (lowest score first), which is the order
    the wire contract's ``selected`` fields carry. The aggregate, a sum, does not depend
    on it.
    Multi-Krum outputs the average of the selected vectors (Blanchard et al., NeurIPS
    2017; ``payberah-2020-robust-learning-slides.txt``).

    ``m = 1`` is Krum and ``m = n`` is plain averaging. The seeds bound m by
    ``1 <= m <= n - f - 2`` (Damaskinos et al., AggregaThor, SysML 2019,
    ``damaskinos-2019-aggregathor-poster.txt``); this function accepts any
    ``1 <= m <= n`` so the slides' two extreme cases remain expressible, but with
    ``m > n - f - 2`` the selection can include Byzantine vectors and the robustness
    guarantee no longer applies.

    Parameters
    ----------
    D : np.ndarray
        n×n squared distances, int64 or float64, exactly symmetric, zero diagonal.
    f : int
        Assumed number of Byzantine workers, ``f >= 0``.
    m : int, optional
        How many workers to select, ``1 <= m <= n``; default ``n - f - 2``.

    Raises
    ------
    RuleError
        If D is malformed, f is not an integer >= 0, ``n < 2f + 3`` or m is outside
        ``[1, n]``.
    """
    fn = "multi-krum"
    arr = _check_distances(D, fn)
    fi = _check_f(f, fn)
    n = arr.shape[0]
    _check_krum_bound(n, fi, fn)
    if m is None:
        mi = n - fi - 2
    else:
        mi = _check_int(m, "m", fn)
        if not 1 <= mi <= n:
            raise RuleError(f"{fn} needs 1 <= m <= n, got m={mi}, n={n}")
    scores = _scores(arr, n - fi - 2)
    # a stable sort on score keeps equal scores in index order
    order = np.argsort(scores, kind="stable")
    return [int(i) for i in order[:mi]]


# ----------------------------------------------------------------------------- Bulyan


def bulyan_theta(n: int, f: int) -> int:
    """θ = n - 2f, the number of vectors Bulyan's first stage picks (needs n >= 4f+3)."""
    fn = "bulyan"
    ni = _check_int(n, "n", fn)
    fi = _check_f(f, fn)
    _check_bulyan_bound(ni, fi, fn)
    return ni - 2 * fi


def bulyan_beta(n: int, f: int) -> int:
    """β = θ - 2f = n - 4f, the number of values averaged per coordinate (needs n >= 4f+3)."""
    return bulyan_theta(n, f) - 2 * _check_f(f, "bulyan")


def bulyan_select(D: np.ndarray, f: int) -> list[int]:
    """Bulyan's first stage: θ = n - 2f workers, in pick order.

    Each pick runs Krum on the workers not yet picked, with f unchanged and
    ``max(1, n' - f - 2)`` neighbours for n' remaining workers; the winner (lowest
    original index on ties) is removed and appended (El Mhamdi, Guerraoui, Rouault,
    ICML 2018; ``payberah-2020-robust-learning-slides.txt``, "Bulyan - Step One").
    The first pick is therefore :func:`krum`'s winner. For f >= 1 the last picks use
    one neighbour, where mutual nearest neighbours tie exactly (see the module notes).
    For f = 0 all n workers are picked and the last one is alone, so it is taken
    without scoring.

    Raises
    ------
    RuleError
        If D is malformed, f is not an integer >= 0 or ``n < 4f + 3``.
    """
    fn = "bulyan"
    arr = _check_distances(D, fn)
    fi = _check_f(f, fn)
    n = arr.shape[0]
    _check_bulyan_bound(n, fi, fn)
    remaining = list(range(n))
    picks: list[int] = []
    for _ in range(n - 2 * fi):
        n_rem = len(remaining)
        if n_rem == 1:
            picks.append(remaining.pop())
            continue
        # remaining stays ascending, so argmin's first minimum is the lowest original index
        sub = arr[np.ix_(remaining, remaining)]
        pos = int(np.argmin(_scores(sub, max(1, n_rem - fi - 2))))
        picks.append(remaining.pop(pos))
    return picks


def _window_sum(X_sel: np.ndarray, f: int, fn: str) -> tuple[np.ndarray, int]:
    arr = _as_numeric(X_sel, "X_sel", fn)
    if arr.ndim != 2:
        raise RuleError(f"{fn} needs a 2-D X_sel (theta × d), got shape {arr.shape}")
    fi = _check_f(f, fn)
    theta = arr.shape[0]
    if theta < 2 * fi + 3:
        raise RuleError(
            f"{fn} needs theta >= 2f+3 rows (i.e. n >= 4f+3), got theta={theta}, f={fi}"
        )
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise RuleError(f"{fn} needs finite X_sel, got a NaN or infinity")
    beta = theta - 2 * fi
    if arr.dtype.kind == "i" and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        # bounds both the window sums and the |x - median| costs
        if beta * max(hi - lo, abs(lo), abs(hi)) > _INT64_MAX:
            raise RuleError(
                f"{fn} needs beta * max(|x|, max-min) <= 2^63-1 for exact int64 sums, "
                f"got beta={beta}, min={lo}, max={hi}"
            )
    srt = np.sort(arr, axis=0)
    mid = (theta - 1) // 2
    med = srt[mid]
    starts = range(max(0, mid - beta + 1), min(mid, theta - beta) + 1)
    costs = np.stack([np.abs(srt[s : s + beta] - med).sum(axis=0) for s in starts])
    sums = np.stack([srt[s : s + beta].sum(axis=0) for s in starts])
    # argmin's first minimum is the lowest start: the window of smaller values wins ties
    best = np.argmin(costs, axis=0)
    return sums[best, np.arange(arr.shape[1])], beta


def bulyan_window_sum(X_sel: np.ndarray, f: int) -> np.ndarray:
    """Per coordinate, the sum of the β values closest to the median (not divided by β).

    This is what the secure path reveals: the sum of the encoded integers in the chosen
    window. For integer input the result is int64 and exact (an error is raised rather
    than letting int64 wrap); for floating input it is float64. See
    :func:`bulyan_coordinate` for the exact definition of the window.

    Raises
    ------
    RuleError
        If X_sel is not 2-D, not finite, f is not an integer >= 0, it has fewer than
        ``2f + 3`` rows, or an int64 sum could overflow.
    """
    return _window_sum(X_sel, f, "bulyan_window_sum")[0]


def bulyan_coordinate(X_sel: np.ndarray, f: int) -> np.ndarray:
    """Bulyan's second stage on the θ selected vectors: a coordinate-wise trimmed mean.

    With θ = number of rows and β = θ - 2f (El Mhamdi, Guerraoui, Rouault, ICML 2018;
    ``payberah-2020-robust-learning-slides.txt``, "Bulyan - Step Two"), for each
    coordinate:

    1. sort the θ values ascending: ``x_0 <= ... <= x_{θ-1}``;
    2. the median is ``x_mid`` with ``mid = (θ - 1) // 2``: the *lower* middle value
       when θ is even (the seed's median is any minimiser of ``sum |x - m|`` over the
       values, which for even θ is either middle value; this fixes the lower one);
    3. the result is the mean of the β values closest to the median,
       ``argmin_{R ⊆ S, |R| = β} sum_{x in R} |x - median|``.

    Step 3 is computed by the window rule, which the secure two-party implementation
    reproduces: among the windows ``x_s, ..., x_{s+β-1}`` that contain position mid
    (``max(0, mid-β+1) <= s <= min(mid, θ-β)``), take the one minimising
    ``sum |x - median|`` over the window, ties to the lowest s. This finds a set of β
    closest values because ``|x_i - median|`` is non-increasing in i up to mid and
    non-decreasing after it, so the β smallest distances always occupy consecutive
    sorted positions around mid. When distances tie (two values equally far on either
    side), the lowest window, i.e. the smaller values, is preferred. For floating input
    the comparison uses the float64 window costs; for integer input it is exact.

    Parameters
    ----------
    X_sel : np.ndarray
        θ×d, any real numeric dtype; θ >= 2f + 3 (equivalent to n >= 4f + 3).
    f : int
        Assumed number of Byzantine workers, ``f >= 0``.

    Returns
    -------
    np.ndarray
        float64, shape (d,).
    """
    total, beta = _window_sum(X_sel, f, "bulyan_coordinate")
    return total.astype(np.float64) / beta


# ---------------------------------------------------------------------------- dispatch


def validate_params(rule: str, n: int, f: int, m: int | None = None) -> None:
    """Check a rule's public parameters before any distance is computed.

    The secure protocol calls this on both servers before the first 2PC step, so a
    round that cannot run fails without revealing anything. It enforces the same
    bounds as the selection functions: a known rule, ``n >= 1``, an integer
    ``f >= 0``, ``n >= 2f+3`` for Krum and Multi-Krum, ``n >= 4f+3`` for Bulyan, and
    ``1 <= m <= n`` where m is given, which only Multi-Krum accepts.

    Raises
    ------
    RuleError
        Naming the violated bound and the actual numbers.
    """
    if rule not in RULES:
        raise RuleError(f"unknown rule {rule!r}, expected one of {RULES}")
    ni = _check_int(n, "n", rule)
    if ni < 1:
        raise RuleError(f"{rule} needs n >= 1 workers, got n={ni}")
    fi = _check_f(f, rule)
    if m is not None and rule != "multi-krum":
        raise RuleError(f"{rule} takes no m (only multi-krum does), got m={m!r}")
    if rule in ("krum", "multi-krum"):
        _check_krum_bound(ni, fi, rule)
    elif rule == "bulyan":
        _check_bulyan_bound(ni, fi, rule)
    if m is not None:
        mi = _check_int(m, "m", rule)
        if not 1 <= mi <= ni:
            raise RuleError(f"{rule} needs 1 <= m <= n, got m={mi}, n={ni}")


def select(rule: str, D: np.ndarray, f: int, m: int | None = None) -> list[int]:
    """Workers selected by ``rule`` (one of :data:`RULES`).

    - ``"mean"``: every worker, ``list(range(n))``; f is validated (integer >= 0) but
      otherwise ignored, since plain averaging tolerates no Byzantine worker at all.
    - ``"krum"``: ``[krum(D, f)]``.
    - ``"multi-krum"``: :func:`multi_krum`, in pick order (lowest score first).
    - ``"bulyan"``: :func:`bulyan_select`, in pick order.

    m applies to Multi-Krum only; passing it with another rule is an error rather than
    being ignored. Parameters are checked by :func:`validate_params`.
    """
    if rule not in RULES:
        raise RuleError(f"unknown rule {rule!r}, expected one of {RULES}")
    arr = _check_distances(D, rule)
    validate_params(rule, arr.shape[0], f, m)
    if rule == "mean":
        return list(range(arr.shape[0]))
    if rule == "krum":
        return [krum(arr, f)]
    if rule == "multi-krum":
        return multi_krum(arr, f, m)
    return bulyan_select(arr, f)
