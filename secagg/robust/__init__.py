"""Robust aggregation rules beyond Krum, Multi-Krum and Bulyan (:mod:`secagg.rules`).

One module per rule, each a set of small pure functions with the formula and its source
in the docstring:

- :mod:`~secagg.robust.median`: coordinate-wise median (lower middle for even n);
- :mod:`~secagg.robust.trimmed_mean`: coordinate-wise trimmed mean;
- :mod:`~secagg.robust.meamed`: mean of the n - f values closest to the median;
- :mod:`~secagg.robust.geometric_median`: smoothed Weiszfeld, as weights from D;
- :mod:`~secagg.robust.mda`: minimum-diameter averaging (the seeds' "Brute");
- :mod:`~secagg.robust.centered_clipping`: centered clipping, as weights from D;
- :mod:`~secagg.robust.nnm`: nearest-neighbour mixing pre-aggregation.

Coordinate rules have a float version and an exact ``*_encoded`` version on int64
fixed-point vectors returning :class:`EncodedSum` (the exact integer sum and its
divisor), like :func:`secagg.reference.aggregate_encoded`. Distance rules are functions
of the squared-distance matrix D (and, for weighted rules, return the weights of the one
weighted sum a secure implementation opens). Parameter violations raise
:class:`secagg.rules.RuleError` naming the bound.
"""

from __future__ import annotations

from secagg.robust._common import EncodedSum, RuleError
from secagg.robust.centered_clipping import (
    CenteredClippingWeights,
    centered_clipping,
    centered_clipping_weights,
)
from secagg.robust.geometric_median import (
    WeiszfeldResult,
    geometric_median,
    geometric_median_weights,
)
from secagg.robust.mda import (
    MDA_MAX_SUBSETS,
    brute,
    brute_select,
    mda,
    mda_encoded,
    mda_select,
)
from secagg.robust.meamed import meamed, meamed_encoded
from secagg.robust.median import median, median_encoded
from secagg.robust.nnm import (
    mixed_distances,
    mixed_distances_int,
    mixed_gram,
    nnm,
    nnm_encoded,
    nnm_matrix,
    nnm_neighbours,
)
from secagg.robust.trimmed_mean import trimmed_mean, trimmed_mean_encoded

__all__ = [
    "MDA_MAX_SUBSETS",
    "CenteredClippingWeights",
    "EncodedSum",
    "RuleError",
    "WeiszfeldResult",
    "brute",
    "brute_select",
    "centered_clipping",
    "centered_clipping_weights",
    "geometric_median",
    "geometric_median_weights",
    "mda",
    "mda_encoded",
    "mda_select",
    "meamed",
    "meamed_encoded",
    "median",
    "median_encoded",
    "mixed_distances",
    "mixed_distances_int",
    "mixed_gram",
    "nnm",
    "nnm_encoded",
    "nnm_matrix",
    "nnm_neighbours",
    "trimmed_mean",
    "trimmed_mean_encoded",
]
