"""Case-level bootstrap confidence intervals of the fairness metrics, and mean (std) over seeds.

Resampling unit: the case (patient), not the image. Images of one patient
are correlated, so resampling images would understate the uncertainty. Each
resample draws as many cases as the evaluation has, with replacement, keeps
all images of every drawn case (twice when the case is drawn twice), and
recomputes :func:`ApplePerturbLib.metrics.fairness_metrics` on them. The
base and APPLE metrics are computed on the same resampled cases, so the
interval of their difference is paired.

Intervals are percentile intervals: the (1 - confidence) / 2 and
(1 + confidence) / 2 empirical quantiles of the resampled values (NumPy's
``inverted_cdf`` method, which picks resampled values and so also works
when DSC_skew is infinite in some resamples). A resample that lacks a group
present in the evaluation is redrawn, up to ``max_redraws`` times, and then
skipped. Such a resample would leave DSC_delta and the other group
statistics undefined. The counts of redrawn and skipped resamples are
returned.

Why not a library: fairlearn's ``MetricFrame`` (0.10 and later) bootstraps
by resampling rows, that is images, and only aggregates per-group values by
difference or ratio, so it has no case-level resampling and no DSC_skew or
ES-Dice. ``scipy.stats.bootstrap`` can resample case indices, but it cannot
redraw a resample that misses a group. The resampling here is therefore
written by hand on top of ``fairness_metrics``, so the intervals use exactly
the definitions of the reported point values.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ApplePerturbLib.errors import InvalidInputError

logger = logging.getLogger(__name__)

SUMMARY_KEYS = ("dsc_overall", "dsc_mean", "dsc_delta", "dsc_std", "dsc_skew", "es_dice")
DEFAULT_RESAMPLES = 1000


@dataclass
class Interval:
    """A statistic on the full data with its bootstrap interval [low, high].

    ``value`` and the bounds are None where the statistic is undefined;
    ``n_defined`` counts the resamples in which it was defined.
    """

    value: float | None
    low: float | None
    high: float | None
    n_defined: int

    def excludes_zero(self) -> bool:
        """Return True when the whole interval lies above or below zero."""
        if self.low is None or self.high is None:
            return False
        return self.low > 0.0 or self.high < 0.0


@dataclass
class BootstrapResult:
    """Intervals per metric key: ``metrics[key] = {"base": ..., "apple": ..., "difference": ...}``.

    "apple" and "difference" (APPLE minus base) are None without APPLE Dice.
    """

    metrics: dict[str, dict[str, Interval | None]]
    confidence: float
    n_resamples: int
    n_used: int
    n_redrawn: int
    n_skipped: int
    n_cases: int
    seed: int


@dataclass
class SeedSummary:
    """Mean and sample standard deviation (ddof=1; None for one seed) of a metric over ``n`` seeds."""

    mean: float | None
    std: float | None
    n: int


def metric_values(result: Mapping[str, Any]) -> dict[str, float | None]:
    """Flatten a ``fairness_metrics`` result into ``{key: value}``.

    Keys: "dsc_overall", "dsc[<group>]" for each group, "dsc_mean",
    "dsc_delta", "dsc_std", "dsc_skew", "es_dice". Undefined values are None.
    """
    values: dict[str, float | None] = {"dsc_overall": result.get("dsc_overall")}
    for name, entry in result.get("groups", {}).items():
        values[f"dsc[{name}]"] = entry.get("dsc")
    for key in SUMMARY_KEYS[1:]:
        values[key] = result.get(key)
    return {key: None if value is None else float(value) for key, value in values.items()}


def bootstrap_fairness(dice_base: Sequence[float], groups: Sequence[str | None], case_ids: Sequence[str],
                       group_names: Sequence[str] | None = None, dice_apple: Sequence[float] | None = None,
                       n_resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95, seed: int = 0,
                       max_redraws: int = 100) -> BootstrapResult:
    """Bootstrap every fairness metric, and the APPLE-minus-base difference, by resampling cases.

    Args:
        dice_base: per-image Dice of the base model, length N.
        groups: per-image group name or None (unknown), length N.
        case_ids: per-image case (patient) id, length N.
        group_names: as in ``fairness_metrics``; default the sorted names found.
        dice_apple: per-image Dice with the perturber, length N, or None.
        n_resamples: number of resamples, 1 or more.
        confidence: interval coverage in (0, 1), default 0.95.
        seed: seed of ``numpy.random.default_rng``.
        max_redraws: how often a resample lacking a group is drawn again before it is skipped.

    Raises:
        InvalidInputError: lengths differ, ``n_resamples`` < 1, ``confidence``
            is not in (0, 1), or every resample had to be skipped.
    """
    from ApplePerturbLib.metrics import fairness_metrics

    _check_inputs(dice_base, groups, case_ids, dice_apple, n_resamples, confidence)
    base = np.asarray(dice_base, dtype=float)
    apple = None if dice_apple is None else np.asarray(dice_apple, dtype=float)
    labels = list(groups)
    names = sorted({g for g in labels if g is not None}) if group_names is None else list(group_names)
    present = {g for g in labels if g is not None}

    def compute(indices: np.ndarray) -> tuple[dict, dict | None]:
        sample_groups = [labels[i] for i in indices]
        base_values = metric_values(fairness_metrics(base[indices], sample_groups, names))
        apple_values = None if apple is None else metric_values(fairness_metrics(apple[indices], sample_groups, names))
        return base_values, apple_values

    cases = _images_per_case(case_ids)
    rng = np.random.default_rng(seed)
    resampled: list[tuple[dict, dict | None]] = []
    redrawn = skipped = 0
    with _quiet_metrics_logger():
        full_base, full_apple = compute(np.arange(len(base)))
        for _ in range(n_resamples):
            indices, attempts = _draw_with_all_groups(rng, cases, labels, present, max_redraws)
            redrawn += attempts
            if indices is None:
                skipped += 1
                continue
            resampled.append(compute(indices))

    if not resampled:
        raise InvalidInputError(
            f"all {n_resamples} bootstrap resamples lacked a group; the evaluation has too few cases "
            "in some group for a case-level bootstrap."
        )
    if skipped:
        logger.warning("Bootstrap: skipped %d of %d resamples that lacked a group.", skipped, n_resamples)

    metrics = {
        key: _intervals_of(key, full_base, full_apple, resampled, confidence)
        for key in full_base
    }
    return BootstrapResult(metrics=metrics, confidence=confidence, n_resamples=n_resamples,
                           n_used=len(resampled), n_redrawn=redrawn, n_skipped=skipped,
                           n_cases=len(cases), seed=seed)


def aggregate_seeds(results: Sequence[Mapping[str, Any]]) -> dict[str, SeedSummary]:
    """Summarise ``fairness_metrics`` results of repeated seeds as mean and std per metric key.

    Keys are those of :func:`metric_values`, in order of first appearance.
    A value that is None (undefined, or infinite and written as null to
    JSON) or infinite is left out of its metric, and ``n`` counts the seeds used.
    """
    if not results:
        raise InvalidInputError("aggregate_seeds got no results; pass one metrics dict per seed.")
    collected: dict[str, list[float]] = {}
    for result in results:
        for key, value in metric_values(result).items():
            collected.setdefault(key, [])
            if value is not None and math.isfinite(value):
                collected[key].append(value)

    summary = {}
    for key, values in collected.items():
        array = np.asarray(values, dtype=float)
        summary[key] = SeedSummary(
            mean=float(array.mean()) if array.size else None,
            std=float(array.std(ddof=1)) if array.size >= 2 else None,
            n=int(array.size),
        )
    return summary


def format_mean_std(summary: SeedSummary, digits: int = 3) -> str:
    """Format a seed summary as "mean (std)", "mean" for one seed, or "n/a"."""
    if summary.mean is None:
        return "n/a"
    if summary.std is None:
        return f"{summary.mean:.{digits}f}"
    return f"{summary.mean:.{digits}f} ({summary.std:.{digits}f})"


def _check_inputs(dice_base, groups, case_ids, dice_apple, n_resamples: int, confidence: float) -> None:
    lengths = {"dice_base": len(dice_base), "groups": len(groups), "case_ids": len(case_ids)}
    if dice_apple is not None:
        lengths["dice_apple"] = len(dice_apple)
    if len(set(lengths.values())) != 1:
        raise InvalidInputError(f"bootstrap inputs differ in length: {lengths}; pass one value per image.")
    if lengths["dice_base"] == 0:
        raise InvalidInputError("bootstrap got no images.")
    if n_resamples < 1:
        raise InvalidInputError(f"invalid number of bootstrap resamples {n_resamples}; expected 1 or more.")
    if not 0.0 < confidence < 1.0:
        raise InvalidInputError(f"invalid confidence {confidence}; expected a number between 0 and 1, e.g. 0.95.")


def _images_per_case(case_ids: Sequence[str]) -> list[np.ndarray]:
    """Return the image indices of each case, cases in sorted id order."""
    indices: dict[str, list[int]] = defaultdict(list)
    for index, case_id in enumerate(case_ids):
        indices[str(case_id)].append(index)
    return [np.asarray(indices[case_id]) for case_id in sorted(indices)]


def _draw_with_all_groups(rng: np.random.Generator, cases: list[np.ndarray], labels: list[str | None],
                          present: set[str], max_redraws: int) -> tuple[np.ndarray | None, int]:
    """Draw len(cases) cases with replacement until every group in ``present`` has an image.

    Returns (image indices or None when every attempt lacked a group, number of redraws).
    """
    for attempt in range(max_redraws + 1):
        chosen = rng.integers(0, len(cases), size=len(cases))
        indices = np.concatenate([cases[i] for i in chosen])
        if present <= {labels[i] for i in indices}:
            return indices, attempt
    return None, max_redraws


def _intervals_of(key: str, full_base: dict, full_apple: dict | None,
                  resampled: list[tuple[dict, dict | None]], confidence: float) -> dict[str, Interval | None]:
    base_values = [base[key] for base, _ in resampled]
    intervals: dict[str, Interval | None] = {
        "base": _interval(full_base[key], base_values, confidence), "apple": None, "difference": None,
    }
    if full_apple is None:
        return intervals
    apple_values = [apple[key] for _, apple in resampled]
    differences = [_difference(a, b) for a, b in zip(apple_values, base_values)]
    intervals["apple"] = _interval(full_apple.get(key), apple_values, confidence)
    intervals["difference"] = _interval(_difference(full_apple.get(key), full_base[key]), differences, confidence)
    return intervals


def _difference(apple: float | None, base: float | None) -> float | None:
    if apple is None or base is None:
        return None
    difference = apple - base
    return None if math.isnan(difference) else difference


def _interval(value: float | None, resampled: list[float | None], confidence: float) -> Interval:
    """Return the percentile interval of the defined resampled values (inf counts as defined)."""
    defined = np.asarray([v for v in resampled if v is not None and not math.isnan(v)], dtype=float)
    if defined.size == 0:
        return Interval(value, None, None, 0)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(defined, [tail, 1.0 - tail], method="inverted_cdf")
    return Interval(value, float(low), float(high), int(defined.size))


@contextlib.contextmanager
def _quiet_metrics_logger() -> Iterator[None]:
    """Keep ``fairness_metrics`` from logging a warning for each of the resamples.

    An infinite DSC_skew in a resample would otherwise log once per resample.
    """
    metrics_logger = logging.getLogger("ApplePerturbLib.metrics")
    previous = metrics_logger.level
    metrics_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        metrics_logger.setLevel(previous)
