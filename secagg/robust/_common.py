"""Shared validation and result types for the robust rules in :mod:`secagg.robust`.

The distance and parameter checks are :mod:`secagg.rules`' own (one implementation of
each check), so every rule rejects the same malformed D with the same messages, none of
which names a value or a position (D is what only server A may see; SECURITY.md).
"""

from __future__ import annotations

from typing import Final, NamedTuple

import numpy as np

# One implementation of each check: the helpers are private to secagg.rules but are its
# contract for malformed D, so the robust rules reuse them rather than copy them.
from secagg.rules import RuleError, _as_numeric, _check_distances, _check_f, _check_int

__all__ = [
    "INT64_MAX",
    "EncodedSum",
    "RuleError",
    "check_distances",
    "check_encoded",
    "check_f",
    "check_int",
    "check_int_headroom",
    "check_majority",
    "check_positive",
    "check_vectors",
]

INT64_MAX: Final[int] = int(np.iinfo(np.int64).max)

check_distances = _check_distances
check_f = _check_f
check_int = _check_int


class EncodedSum(NamedTuple):
    """An exact aggregate of encoded int64 vectors: ``total / divisor``.

    Like :func:`secagg.reference.aggregate_encoded`'s ``encoded_sum`` and ``divisor``:
    a secure implementation reveals ``total`` and is compared with it bit for bit.
    """

    total: np.ndarray
    divisor: int


def check_majority(n: int, f: object, fn: str) -> int:
    """``f`` checked (:func:`check_f`), then ``n >= 2f + 1`` (an honest majority);
    returns f as an int. The one guard every rule with that bound starts with."""
    fi = check_f(f, fn)
    if n < 2 * fi + 1:
        raise RuleError(f"{fn} needs n >= 2f+1, got n={n}, f={fi}: add workers or lower f")
    return fi


def check_vectors(X: np.ndarray, fn: str) -> np.ndarray:
    """X as a finite float64 (n, d) array with n >= 1."""
    arr = _as_numeric(X, "X", fn).astype(np.float64, copy=False)
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise RuleError(f"{fn} needs a 2-D X (n workers × d) with n >= 1, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise RuleError(f"{fn} needs a finite X: some entry is NaN or infinite")
    return arr


def check_encoded(Xint: np.ndarray, fn: str) -> np.ndarray:
    """Xint as an int64 (n, d) array with n >= 1."""
    arr = np.asarray(Xint)
    if arr.dtype.kind != "i":
        raise RuleError(f"{fn} needs a signed integer (int64) Xint, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise RuleError(
            f"{fn} needs a 2-D Xint (n workers × d) with n >= 1, got shape {arr.shape}"
        )
    return arr.astype(np.int64, copy=False)


def check_int_headroom(arr: np.ndarray, factor: int, fn: str) -> None:
    """Raise unless ``factor * max(|x|, max - min) <= 2^63 - 1`` for the int64 ``arr``.

    This bounds every sum of at most ``factor`` values and every sum of at most ``factor``
    absolute differences, so the exact int64 paths cannot wrap. The message names the
    bound only: the values are secret.
    """
    if arr.size == 0:
        return
    lo, hi = int(arr.min()), int(arr.max())
    if factor * max(hi - lo, abs(lo), abs(hi)) > INT64_MAX:
        raise RuleError(
            f"{fn} needs {factor} * max(|x|, max-min) <= 2^63-1 for exact int64 sums: "
            "use a smaller fixed-point scale or clip the inputs"
        )


def check_positive(value: object, name: str, fn: str) -> float:
    """``value`` as a float, raising unless it is a real, finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise RuleError(f"{fn} needs a real {name}, got {type(value).__name__}")
    v = float(value)
    if not (np.isfinite(v) and v > 0):
        raise RuleError(f"{fn} needs {name} > 0 and finite, got {name}={v}")
    return v
