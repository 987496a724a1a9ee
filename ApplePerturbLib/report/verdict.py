"""Fairness metrics of one evaluation with their intervals, the verdict and the metrics table.

The verdict never claims more than the intervals show. A change whose
interval includes zero is called inconclusive, and APPLE is called fairer
only when the interval of the paired DSC_delta difference lies below zero.
"""

from __future__ import annotations

from ApplePerturbLib.report.evaluation import Evaluation, _group_counts
from ApplePerturbLib.report.render import Block, _number, _range, _with_range

_MIN_CASES_FOR_INTERVALS = 10

# Row label, metric key prefix and direction (+1: higher is better, -1: lower is fairer).
_SUMMARY_ROWS = (
    ("DSC_mean (mean of the group Dice values)", "dsc_mean", 1),
    ("DSC_delta (largest minus smallest group Dice)", "dsc_delta", -1),
    ("DSC_std (standard deviation of the group Dice values)", "dsc_std", -1),
    ("DSC_skew (ratio of the largest to the smallest group error)", "dsc_skew", -1),
    ("ES-Dice (equity-scaled Dice)", "es_dice", 1),
)


def _metric_intervals(evaluation: Evaluation, n_bootstrap: int, seed: int):
    """Return ({metric key: {"base", "apple", "difference"}: Interval}, BootstrapResult or None)."""
    from ApplePerturbLib.analysis.uncertainty import Interval, bootstrap_fairness, metric_values

    rows = evaluation.rows
    if n_bootstrap > 0:
        result = bootstrap_fairness(
            [row.dice_base for row in rows], [row.group for row in rows], [row.case_id for row in rows],
            evaluation.group_names, [row.dice_apple for row in rows] if evaluation.has_apple else None,
            n_resamples=n_bootstrap, seed=seed,
        )
        return result.metrics, result

    base = metric_values(evaluation.metrics["base"])
    apple = metric_values(evaluation.metrics["apple"]) if evaluation.has_apple else None
    intervals = {}
    for key, value in base.items():
        apple_value = apple.get(key) if apple else None
        difference = None if value is None or apple_value is None else apple_value - value
        intervals[key] = {"base": Interval(value, None, None, 0),
                          "apple": Interval(apple_value, None, None, 0) if apple else None,
                          "difference": Interval(difference, None, None, 0) if apple else None}
    return intervals, None


def _verdict(evaluation: Evaluation, intervals: dict, bootstrap) -> tuple[list[str], str]:
    """Return the verdict paragraphs and a one-word summary (fairer, less fair, inconclusive, n/a)."""
    attribute = evaluation.metrics.get("attribute", "attribute")
    if not evaluation.has_apple:
        notes = _caveats(evaluation, bootstrap) if bootstrap is not None else []
        return ["Only the base model was evaluated, so there is no APPLE result to judge."] + notes, "n/a"
    if bootstrap is None:
        return ["No confidence intervals were computed (--bootstrap 0), so no change is judged here. "
                "The table shows point values only."], "n/a"

    level = f"{bootstrap.confidence:.0%}"
    delta = intervals["dsc_delta"]
    present = [name for name in evaluation.group_names if any(row.group == name for row in evaluation.rows)]
    if len(present) < 2 or delta["difference"].value is None:
        paragraphs, word = [f"Fairness could not be judged: fewer than two {attribute} groups have images, "
                            "so there is no gap between groups to compare."], "n/a"
    else:
        change = delta["difference"]
        gap = (f"The Dice gap between the {attribute} groups (DSC_delta) went from {_number(delta['base'].value)} "
               f"without APPLE to {_number(delta['apple'].value)} with APPLE; the {level} interval of the change "
               f"is {_range(change)}.")
        if _lies_below_zero(change):
            paragraphs, word = [f"Fairer. {gap} The whole interval lies below zero, so the gap narrowed."], "fairer"
            worse = [name for name in present if _lies_below_zero(intervals[f"dsc[{name}]"]["difference"])]
            if worse:
                paragraphs.append(f"Part of the narrowing comes from a lower Dice for the {', '.join(worse)} "
                                  "group(s): those patients' segmentations became less accurate.")
        elif _lies_above_zero(change):
            paragraphs, word = [f"Less fair. {gap} The whole interval lies above zero, so the gap widened."], "less fair"
        else:
            paragraphs, word = [f"Inconclusive for fairness. {gap} The interval includes zero, so these data do not "
                                "show that APPLE changed the gap."], "inconclusive"

    paragraphs.append(_change_sentence("Overall Dice", intervals["dsc_overall"], level))
    for name in present:
        paragraphs.append(_change_sentence(f"Dice of the {name} group", intervals[f"dsc[{name}]"], level))
    paragraphs += _caveats(evaluation, bootstrap)
    return paragraphs, word


def _lies_below_zero(interval) -> bool:
    return interval is not None and interval.high is not None and interval.high < 0.0


def _lies_above_zero(interval) -> bool:
    return interval is not None and interval.low is not None and interval.low > 0.0


def _change_sentence(what: str, entry: dict, level: str) -> str:
    change = entry["difference"]
    text = (f"{what}: {_number(entry['base'].value)} without APPLE, {_number(entry['apple'].value)} with APPLE "
            f"(change {_number(change.value, signed=True)}, {level} interval {_range(change)})")
    if _lies_below_zero(change):
        return text + ", lower with APPLE."
    if _lies_above_zero(change):
        return text + ", higher with APPLE."
    return text + ", no clear change (the interval includes zero)."


def _caveats(evaluation: Evaluation, bootstrap) -> list[str]:
    notes = [f"The intervals come from {bootstrap.n_used} case-level bootstrap resamples of the {bootstrap.n_cases} "
             "evaluated cases. They reflect case-to-case variation in this test set only, not variation between "
             "training runs or between hospitals and scanners."]
    counts = _group_counts(evaluation.rows, evaluation.group_names)
    small = [f"{name} ({cases} cases)" for name, (_, cases) in counts.items()
             if name != "unknown" and cases < _MIN_CASES_FOR_INTERVALS]
    if small:
        notes.append(f"Few cases in group(s) {', '.join(small)}: bootstrap intervals from fewer than "
                     f"{_MIN_CASES_FOR_INTERVALS} cases per group are unreliable; treat every statement as tentative.")
    if bootstrap.n_skipped:
        notes.append(f"{bootstrap.n_skipped} resamples that lacked a group were skipped.")
    return notes


def _metrics_table(evaluation: Evaluation, intervals: dict, bootstrap) -> Block:
    level = f"{bootstrap.confidence:.0%} interval" if bootstrap else "no interval"
    header = ["metric", f"without APPLE ({level})"]
    if evaluation.has_apple:
        header += [f"with APPLE ({level})", f"change ({level})", "reading"]
    counts = _group_counts(evaluation.rows, evaluation.group_names)
    rows_spec = [(f"Dice, all images (n={len(evaluation.rows)})", "dsc_overall", 1)]
    rows_spec += [(f"Dice, {name} (n={counts[name][0]})", f"dsc[{name}]", 1) for name in evaluation.group_names]
    rows_spec += list(_SUMMARY_ROWS)

    rows = []
    for label, key, direction in rows_spec:
        entry = intervals.get(key)
        if entry is None:
            continue
        row = [label, _with_range(entry["base"])]
        if evaluation.has_apple:
            row += [_with_range(entry["apple"]), _with_range(entry["difference"], signed=True),
                    _reading(entry["difference"], direction, bootstrap is not None)]
        rows.append(row)
    return Block("table", header=header, rows=rows)


def _reading(change, direction: int, has_intervals: bool) -> str:
    if not has_intervals or change.low is None:
        return "not judged"
    if not change.excludes_zero():
        return "inconclusive"
    improved = _lies_above_zero(change) == (direction > 0)
    if direction > 0:
        return "better" if improved else "worse"
    return "fairer" if improved else "less fair"
