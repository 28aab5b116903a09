"""A Flower ``ArrayRecord`` as one flat float64 vector, and back.

Only floating-point arrays are aggregated; integer or boolean arrays (e.g. BatchNorm's
``num_batches_tracked``) keep the global model's value, as in
:func:`clients.sdk.flatten_state`. The layout (keys, shapes, dtypes, in the record's
order) is taken from the global model the server sent, so every client's vector has
the same coordinates.

flwr is imported only inside :func:`to_record`, which builds Flower objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Layout", "add_update", "layout_of", "numpy_arrays", "to_record", "update_vector"]


@dataclass(frozen=True)
class Layout:
    """Where each floating-point array of a record sits in the flat vector."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    floating: tuple[bool, ...]

    @property
    def dim(self) -> int:
        pairs = zip(self.shapes, self.floating, strict=True)
        return sum(int(np.prod(s, dtype=np.int64)) for s, fl in pairs if fl)


def numpy_arrays(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The record's arrays as numpy, in its order (``Array.numpy()`` for Flower's)."""
    return {k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in record.items()}


def layout_of(arrays: Mapping[str, np.ndarray]) -> Layout:
    """The layout of a record's arrays (see :class:`Layout`)."""
    return Layout(
        keys=tuple(arrays),
        shapes=tuple(tuple(int(n) for n in a.shape) for a in arrays.values()),
        dtypes=tuple(a.dtype.str for a in arrays.values()),
        floating=tuple(bool(np.issubdtype(a.dtype, np.floating)) for a in arrays.values()),
    )


def _check_same_layout(layout: Layout, arrays: Mapping[str, np.ndarray], what: str) -> None:
    got = layout_of(arrays)
    if got.keys != layout.keys or got.shapes != layout.shapes:
        raise ValueError(
            f"{what} does not have the global model's arrays (keys {list(got.keys)[:5]}, "
            f"shapes {list(got.shapes)[:5]}; expected keys {list(layout.keys)[:5]}, shapes "
            f"{list(layout.shapes)[:5]}): return arrays with the same keys and shapes as "
            "the ones received"
        )


def update_vector(local: Mapping[str, np.ndarray], global_: Mapping[str, np.ndarray]) -> np.ndarray:
    """``local - global`` over the floating-point arrays, flattened (float64).

    Raises
    ------
    ValueError
        If ``local`` does not have ``global_``'s keys and shapes.
    """
    layout = layout_of(global_)
    _check_same_layout(layout, local, "the trained model")
    parts = [
        (np.asarray(local[k], dtype=np.float64) - np.asarray(global_[k], dtype=np.float64)).reshape(
            -1
        )
        for k, fl in zip(layout.keys, layout.floating, strict=True)
        if fl
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


def add_update(global_: Mapping[str, np.ndarray], vector: np.ndarray) -> dict[str, np.ndarray]:
    """``global + vector`` in float64, cast back to each array's dtype.

    Non-floating arrays are returned unchanged.

    Raises
    ------
    ValueError
        If the vector's length is not the layout's dim.
    """
    layout = layout_of(global_)
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    if v.shape[0] != layout.dim:
        raise ValueError(
            f"the aggregate has {v.shape[0]} coordinates but the model has {layout.dim} "
            "floating-point parameters: the round was opened for another model"
        )
    out: dict[str, np.ndarray] = {}
    start = 0
    for k, shape, fl in zip(layout.keys, layout.shapes, layout.floating, strict=True):
        g = np.asarray(global_[k])
        if not fl:
            out[k] = g.copy()
            continue
        n = int(np.prod(shape, dtype=np.int64))
        piece = v[start : start + n].reshape(shape)
        start += n
        out[k] = (g.astype(np.float64) + piece).astype(g.dtype)
    return out


def to_record(arrays: Mapping[str, np.ndarray]) -> Any:
    """A Flower ``ArrayRecord`` holding ``arrays`` under the same keys, in order."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord(
        {k: Array.from_numpy_ndarray(np.ascontiguousarray(a)) for k, a in arrays.items()}
    )
