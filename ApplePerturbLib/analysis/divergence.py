"""Jensen-Shannon divergence between the error distributions of attribute groups.

The two samples are binned on common bin edges and the histograms are
normalised to probability vectors P and Q. With M = (P + Q) / 2 the
divergence is

    JSD(P, Q) = KL(P || M) / 2 + KL(Q || M) / 2

with the natural logarithm, so it is 0 for identical histograms and ln 2
(about 0.693) for histograms with no bin in common. SciPy's
``scipy.spatial.distance.jensenshannon`` returns the Jensen-Shannon
*distance*, the square root of this divergence, so its result is squared
here.

For K groups the summary is the mean of the JSDs of all K(K-1)/2 pairs. The
value depends on the binning: compare two divergences (base vs APPLE) only
when they use the same ``bin_edges``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ApplePerturbLib.errors import InvalidInputError

DEFAULT_BINS = 20


@dataclass
class GroupDivergence:
    """Pairwise JSDs ``{(group_a, group_b): jsd}`` and their mean (None with fewer than 2 groups)."""

    pairs: dict[tuple[str, str], float]
    mean: float | None


def common_bin_edges(samples: Sequence[Sequence[float]], bins: int = DEFAULT_BINS) -> np.ndarray:
    """Return ``bins + 1`` equal-width bin edges spanning the pooled values of all samples.

    When every value is the same, NumPy centres a bin of width 1 on it.
    """
    if bins < 1:
        raise InvalidInputError(f"invalid number of bins {bins}; expected 1 or more.")
    pooled = np.concatenate([_checked_values(sample, "a sample") for sample in samples])
    return np.histogram_bin_edges(pooled, bins=bins)


def jensen_shannon_divergence(sample_a: Sequence[float], sample_b: Sequence[float],
                              bins: int = DEFAULT_BINS, bin_edges: np.ndarray | None = None) -> float:
    """Return the Jensen-Shannon divergence (natural log, in [0, ln 2]) of two samples' histograms.

    Args:
        sample_a, sample_b: values of the two groups, for example area errors in mm^2.
        bins: number of equal-width bins over the pooled values, used when
            ``bin_edges`` is None.
        bin_edges: explicit bin edges; every value must lie within them.

    Raises:
        InvalidInputError: a sample is empty or not finite, or a value lies outside ``bin_edges``.
    """
    from scipy.spatial.distance import jensenshannon

    values_a = _checked_values(sample_a, "the first sample")
    values_b = _checked_values(sample_b, "the second sample")
    edges = common_bin_edges([values_a, values_b], bins) if bin_edges is None else np.asarray(bin_edges, float)
    histogram_a = _histogram(values_a, edges)
    histogram_b = _histogram(values_b, edges)

    distance = float(jensenshannon(histogram_a, histogram_b))
    return distance * distance


def group_divergence(values: Sequence[float], groups: Sequence[str | None], bins: int = DEFAULT_BINS,
                     bin_edges: np.ndarray | None = None, group_names: Sequence[str] | None = None) -> GroupDivergence:
    """Return the JSD of every pair of groups and their mean.

    Args:
        values: per-image values, length N.
        groups: per-image group name, or None for unknown (left out), length N.
        bins, bin_edges: as in :func:`jensen_shannon_divergence`. Without
            ``bin_edges`` the edges span the values of all known-group images,
            so every pair uses the same bins.
        group_names: groups to compare, in this order; default the sorted
            names found. A listed group without images is left out.
    """
    values = np.asarray(values, dtype=float)
    if len(groups) != len(values):
        raise InvalidInputError(f"group_divergence got {len(values)} values but {len(groups)} group labels.")
    names = sorted({g for g in groups if g is not None}) if group_names is None else list(group_names)
    per_group = {name: values[[g == name for g in groups]] for name in names}
    per_group = {name: sample for name, sample in per_group.items() if sample.size > 0}

    if len(per_group) < 2:
        return GroupDivergence(pairs={}, mean=None)
    if bin_edges is None:
        bin_edges = common_bin_edges(list(per_group.values()), bins)
    pairs = {
        (name_a, name_b): jensen_shannon_divergence(per_group[name_a], per_group[name_b], bin_edges=bin_edges)
        for name_a, name_b in itertools.combinations(per_group, 2)
    }
    return GroupDivergence(pairs=pairs, mean=float(np.mean(list(pairs.values()))))


def _checked_values(sample: Sequence[float], role: str) -> np.ndarray:
    values = np.asarray(sample, dtype=float).ravel()
    if values.size == 0:
        raise InvalidInputError(f"{role} is empty; the Jensen-Shannon divergence needs values in both samples.")
    if not np.all(np.isfinite(values)):
        raise InvalidInputError(f"{role} contains a value that is not finite (nan or inf).")
    return values


def _histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    if values.min() < edges[0] or values.max() > edges[-1]:
        raise InvalidInputError(
            f"values from {values.min():g} to {values.max():g} lie outside the bin edges "
            f"{edges[0]:g} to {edges[-1]:g}; widen the edges to cover every value."
        )
    counts, _ = np.histogram(values, bins=edges)
    return counts.astype(float)
