"""Dice and subgroup fairness metrics for lesion segmentation.

Dice is computed per image first. The images are then grouped by a sensitive
attribute (sex, age group). Every fairness statistic is computed from the
group means ``DSC_k``, the mean per-image Dice of the images in group k, so a
group with many images weighs no more than a small one.

Sources of the definitions:

- ``DSC_mean``, ``DSC_delta``, ``DSC_std`` and ``DSC_skew`` as in APPLE (Xu et
  al., "Fair ultrasound diagnosis via adversarial protected attribute aware
  perturbations on latent embeddings", npj Digital Medicine 8, 2025,
  doi:10.1038/s41746-025-01641-y). ``DSC_std`` is the sample standard
  deviation (ddof=1) of the group means, as the paper's Eq. 9 writes it.
- ``ES-Dice``, the equity-scaled Dice of FairSeg (Tian et al., ICLR 2024), as
  the function ``equity_scaled_perf`` in FairSeg's ``TransUNet/utils.py``
  computes it: the overall Dice divided by one plus the sum of the absolute
  differences between each group mean and the overall Dice.

Example::

    dice = [dice_score(pred, target) for pred, target in pairs]
    result = fairness_metrics(dice, ["female", "male", None], ["female", "male"])
    json.dump(to_json_safe(result), file, allow_nan=False)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def dice_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Compute the Dice similarity coefficient 2|P∩T| / (|P| + |T|) of two masks.

    Args:
        pred: predicted mask, any shape, dtype bool or numbers that are all 0 or 1.
        target: ground-truth mask of the same shape and kind.

    Returns:
        Dice in [0, 1]. When both masks are empty the result is 1.0, because
        the prediction agrees with the ground truth that there is no lesion.
        NOTE: FairSeg's ``calculate_metric_percase`` returns 0 in that case.

    Raises:
        ValueError: if the shapes differ or a mask contains values other than
            0 and 1 (threshold probability maps or 0/255 masks first).
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(
            f"Dice needs masks of the same shape, but the prediction has shape {pred.shape} "
            f"and the target has shape {target.shape}; resample the prediction to the target's grid."
        )

    pred = _as_binary_mask(pred, "prediction")
    target = _as_binary_mask(target, "target")

    size_sum = int(pred.sum()) + int(target.sum())
    if size_sum == 0:
        return 1.0
    intersection = int(np.logical_and(pred, target).sum())
    return 2.0 * intersection / size_sum


def _as_binary_mask(mask: np.ndarray, role: str) -> np.ndarray:
    """Return ``mask`` as a bool array, raising ValueError unless it contains only 0 and 1."""
    if mask.dtype == bool:
        return mask
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise ValueError(f"The {role} mask has dtype {mask.dtype}; expected bool or numbers 0 and 1.")

    invalid = (mask != 0) & (mask != 1)
    if invalid.any():
        example = mask[invalid].flat[0]
        raise ValueError(
            f"The {role} mask contains the value {example!r}, but a mask must contain only 0 and 1; "
            "threshold it first (for example mask > 0 for a 0/255 mask, or prob >= 0.5 for probabilities)."
        )
    return mask != 0


def fairness_metrics(
    dice: Sequence[float],
    groups: Sequence[str | None],
    group_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Summarise per-image Dice overall and per attribute group.

    Args:
        dice: per-image Dice values in [0, 1], length N.
        groups: per-image group name (for example "female"), or None where the
            attribute is unknown, length N.
        group_names: the groups to report, in this order. Groups listed here
            that have no image are reported with n=0 and dsc=None and are left
            out of every group statistic. Defaults to the sorted names found
            in ``groups``.

    Returns:
        A dict with these keys (floats are Python floats):

        - ``n_images``: N, unknown-group images included.
        - ``n_unknown``: images whose group is None.
        - ``dsc_overall``: mean Dice over all N images.
        - ``dsc_overall_known``: mean Dice over the images with a known group.
          This is the overall Dice that ES-Dice uses.
        - ``groups``: ``{name: {"n": int, "dsc": float | None}}`` in the order
          of ``group_names``.
        - ``missing_groups``: names from ``group_names`` without images.
        - ``dsc_mean``: mean of the group means (the paper's DSC_mean).
        - ``dsc_delta``: max minus min of the group means.
        - ``dsc_std``: sample standard deviation of the group means, ddof=1.
          NOTE: FairMedFM's ``evaluate_seg`` uses ``np.std`` (ddof=0), which is
          smaller by a factor sqrt(2) for two groups.
        - ``dsc_skew``: max_k(1 - DSC_k) / min_k(1 - DSC_k). It is
          ``math.inf`` when some group has Dice 1.0 and another has not, and
          1.0 when all groups have Dice 1.0.
        - ``es_dice``: dsc_overall_known / (1 + sum_k |DSC_k - dsc_overall_known|).
        - ``warning`` (only when needed): a sentence on statistics that are
          undefined or infinite.

        With one group present, ``dsc_delta`` is 0.0 and ``dsc_std`` is None.
        With no group present (all groups unknown), every group statistic is
        None. The dict may contain ``math.inf``, so pass it through
        :func:`to_json_safe` before writing strict JSON.

    Raises:
        ValueError: for empty input, different lengths, Dice values that are
            not finite numbers in [0, 1], or a group not in ``group_names``.
    """
    dice_values = _validate_dice(dice)
    group_labels = list(groups)
    if len(group_labels) != len(dice_values):
        raise ValueError(
            f"fairness_metrics got {len(dice_values)} Dice values but {len(group_labels)} group labels; "
            "pass one group label (or None) per image."
        )

    names = _resolve_group_names(group_labels, group_names)

    known = [(value, label) for value, label in zip(dice_values, group_labels) if label is not None]
    per_group = {name: [value for value, label in known if label == name] for name in names}

    result: dict[str, Any] = {
        "n_images": len(dice_values),
        "n_unknown": len(dice_values) - len(known),
        "dsc_overall": float(np.mean(dice_values)),
        "dsc_overall_known": float(np.mean([value for value, _ in known])) if known else None,
        "groups": {
            name: {"n": len(values), "dsc": float(np.mean(values)) if values else None}
            for name, values in per_group.items()
        },
        "missing_groups": [name for name, values in per_group.items() if not values],
    }

    group_means = {name: entry["dsc"] for name, entry in result["groups"].items() if entry["n"] > 0}
    warnings = _group_statistics(result, group_means)
    if result["missing_groups"]:
        warnings.insert(0, f"Groups without images, left out of the group statistics: {result['missing_groups']}.")
    if warnings:
        result["warning"] = " ".join(warnings)
        logger.warning("Fairness metrics: %s", result["warning"])
    return result


def _validate_dice(dice: Sequence[float]) -> list[float]:
    """Return the Dice values as Python floats, raising ValueError for empty or invalid input."""
    values = [float(value) for value in dice]
    if not values:
        raise ValueError("fairness_metrics got no Dice values; evaluate at least one image.")

    for index, value in enumerate(values):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"Dice value {value!r} of image {index} is not a number in [0, 1].")
    return values


def _resolve_group_names(
    group_labels: list[str | None], group_names: Sequence[str] | None
) -> list[str]:
    """Return the report order of groups, checking that every known label is listed."""
    found = {label for label in group_labels if label is not None}
    if group_names is None:
        return sorted(found)

    names = list(group_names)
    if len(set(names)) != len(names):
        raise ValueError(f"group_names {names} lists a group twice.")
    unlisted = sorted(found - set(names))
    if unlisted:
        raise ValueError(
            f"Images have groups {unlisted} that are not in group_names {names}; "
            "add them to group_names or relabel those images as unknown (None)."
        )
    return names


def _group_statistics(result: dict[str, Any], group_means: dict[str, float]) -> list[str]:
    """Add dsc_mean, dsc_delta, dsc_std, dsc_skew and es_dice to ``result``; return warnings."""
    warnings: list[str] = []
    means = np.array(list(group_means.values()), dtype=float)

    if means.size == 0:
        for key in ("dsc_mean", "dsc_delta", "dsc_std", "dsc_skew", "es_dice"):
            result[key] = None
        warnings.append("No image has a known group, so no group statistic is defined.")
        return warnings

    overall_known = result["dsc_overall_known"]
    result["dsc_mean"] = float(means.mean())
    result["dsc_delta"] = float(means.max() - means.min())
    result["dsc_std"] = float(means.std(ddof=1)) if means.size >= 2 else None
    result["dsc_skew"] = _dice_skew(means)
    result["es_dice"] = float(overall_known / (1.0 + np.abs(means - overall_known).sum()))

    if means.size < 2:
        warnings.append(
            f"Only one group has images ({next(iter(group_means))}), so DSC_delta is 0 "
            "and DSC_std is undefined; the fairness statistics compare nothing."
        )
    if math.isinf(result["dsc_skew"]):
        perfect = [name for name, value in group_means.items() if value == 1.0]
        warnings.append(f"DSC_skew is infinite because group(s) {perfect} have Dice 1.0 and another group has not.")
    return warnings


def _dice_skew(means: np.ndarray) -> float:
    """Return max_k(1 - DSC_k) / min_k(1 - DSC_k), with inf for a perfect group beside an imperfect one."""
    errors = 1.0 - means
    largest = float(errors.max())
    smallest = float(errors.min())
    if smallest > 0.0:
        return largest / smallest
    return math.inf if largest > 0.0 else 1.0


def to_json_safe(obj: Any) -> Any:
    """Return a copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts.

    Floats that are nan or infinite become None (so an infinite DSC_skew is
    written as null, and the ``warning`` entry explains why). NumPy scalars and arrays
    become Python numbers and lists, tuples become lists, and dict keys become
    strings. Other objects are returned unchanged.
    """
    if isinstance(obj, Mapping):
        return {str(key): to_json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return [to_json_safe(value) for value in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# Direction of improvement per table row: +1 means higher is better,
# -1 means lower is fairer.
_HIGHER_IS_BETTER = 1
_LOWER_IS_FAIRER = -1

# Changes smaller than this print as 0.000 at three decimals and count as no change.
_CHANGE_TOLERANCE = 5e-4


def format_comparison_table(
    base: Mapping[str, Any],
    apple: Mapping[str, Any] | None = None,
    labels: tuple[str, str] = ("base", "APPLE"),
) -> str:
    """Format one or two :func:`fairness_metrics` results as a plain-text table.

    Rows: overall Dice, Dice per group with its image count, DSC_mean,
    DSC_delta, DSC_std, DSC_skew and ES-Dice, at three decimals. With
    ``apple`` given, the columns are ``labels[0]``, ``labels[1]``, the change
    (apple minus base) and a word that rates the change: "better"/"worse" for
    Dice and ES-Dice (higher is better), "fairer"/"less fair" for DSC_delta,
    DSC_std and DSC_skew (lower is fairer), "same" below 0.0005. Undefined
    values print as "n/a". Warnings of either result follow the table.

    Both inputs may also be results after :func:`to_json_safe`, for example
    read back from metrics.json.
    """
    rows = _table_rows(base, apple)
    columns = ["metric", labels[0]]
    if apple is not None:
        columns += [labels[1], "change", ""]

    lines = []
    for label, getter, direction in rows:
        base_value = getter(base)
        cells = [label, _format_value(base_value)]
        if apple is not None:
            apple_value = getter(apple)
            change = _difference(apple_value, base_value)
            cells += [_format_value(apple_value), _format_value(change, signed=True), _rate_change(change, direction)]
        lines.append(cells)

    text = _align([columns] + lines, rating_column=apple is not None)
    legend = "Lower DSC_delta, DSC_std and DSC_skew are fairer; higher Dice and ES-Dice are better."
    notes = [f"{name}: {result['warning']}" for name, result in zip(labels, (base, apple)) if result and result.get("warning")]
    return "\n".join([text, legend] + notes)


def _table_rows(base: Mapping[str, Any], apple: Mapping[str, Any] | None) -> list[tuple[str, Any, int]]:
    """Return (row label, value getter, direction) for every table row."""
    rows = [(f"Dice overall (n={_count_text(base, apple, None)})", lambda r: r.get("dsc_overall"), _HIGHER_IS_BETTER)]

    group_order = list(base.get("groups", {}))
    if apple is not None:
        group_order += [name for name in apple.get("groups", {}) if name not in group_order]
    for name in group_order:
        label = f"Dice {name} (n={_count_text(base, apple, name)})"
        rows.append((label, lambda r, name=name: r.get("groups", {}).get(name, {}).get("dsc"), _HIGHER_IS_BETTER))

    rows += [
        ("DSC_mean", lambda r: r.get("dsc_mean"), _HIGHER_IS_BETTER),
        ("DSC_delta", lambda r: r.get("dsc_delta"), _LOWER_IS_FAIRER),
        ("DSC_std", lambda r: r.get("dsc_std"), _LOWER_IS_FAIRER),
        ("DSC_skew", lambda r: r.get("dsc_skew"), _LOWER_IS_FAIRER),
        ("ES-Dice", lambda r: r.get("es_dice"), _HIGHER_IS_BETTER),
    ]
    return rows


def _count_text(base: Mapping[str, Any], apple: Mapping[str, Any] | None, group: str | None) -> str:
    """Return the image count of a row, as "n" or "n_base/n_apple" when the two differ."""
    def count(result: Mapping[str, Any] | None) -> Any:
        if result is None:
            return None
        if group is None:
            return result.get("n_images")
        return result.get("groups", {}).get(group, {}).get("n")

    base_count = count(base)
    apple_count = count(apple)
    if apple is None or apple_count == base_count:
        return str(base_count if base_count is not None else 0)
    return f"{base_count if base_count is not None else 0}/{apple_count if apple_count is not None else 0}"


def _difference(new: float | None, old: float | None) -> float | None:
    """Return new - old, or None when either value or the difference is undefined."""
    if new is None or old is None:
        return None
    change = float(new) - float(old)
    return None if math.isnan(change) else change


def _format_value(value: float | None, signed: bool = False) -> str:
    """Format a metric at three decimals, None as "n/a" and infinities as "inf"."""
    if value is None or math.isnan(value):
        return "n/a"
    if value == -math.inf:
        return "-inf"
    if value == math.inf:
        return "+inf" if signed else "inf"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _rate_change(change: float | None, direction: int) -> str:
    """Rate a change as better/worse (Dice rows) or fairer/less fair (spread rows)."""
    if change is None:
        return ""
    if abs(change) < _CHANGE_TOLERANCE:
        return "same"
    improved = change * direction > 0
    if direction == _LOWER_IS_FAIRER:
        return "fairer" if improved else "less fair"
    return "better" if improved else "worse"


def _align(table: list[list[str]], rating_column: bool) -> str:
    """Join rows of cells into lines with aligned columns.

    Text columns (the metric name and, with ``rating_column``, the last one)
    are left-aligned and number columns right-aligned.
    """
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]))]
    last_number_column = len(widths) - 1 if rating_column else len(widths)

    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0])]
        cells += [row[column].rjust(widths[column]) for column in range(1, last_number_column)]
        if rating_column:
            cells.append(row[-1])
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
