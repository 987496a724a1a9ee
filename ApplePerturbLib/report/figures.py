"""The report's matplotlib figures: Dice and downstream-error histograms by group, rendered to PNG bytes.

matplotlib and the analysis modules are imported inside the functions that use them.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from ApplePerturbLib.report.evaluation import Evaluation
from ApplePerturbLib.report.render import Block, _number

_FEATURE_TITLES = {"area": "Lesion area", "perimeter": "Lesion perimeter", "energy": "Lesion energy"}


def _figure_png(figure) -> bytes:
    """Render a matplotlib Figure to PNG bytes, without the Software text chunk."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _group_histograms(axis, values: np.ndarray, groups: Sequence[str | None], order: Sequence[str],
                      edges: np.ndarray, mark_means: bool = False) -> None:
    """Draw one step histogram per group, as the fraction of that group's images per bin."""
    labels = np.asarray([g if g is not None else "" for g in groups], dtype=object)
    for index, name in enumerate(order):
        selected = values[labels == name]
        if selected.size == 0:
            continue
        weights = np.full(selected.size, 1.0 / selected.size)
        axis.hist(selected, bins=edges, weights=weights, histtype="step", linewidth=1.8, color=f"C{index}",
                  label=f"{name} (n={selected.size})")
        if mark_means:
            axis.axvline(float(selected.mean()), color=f"C{index}", linestyle="--", linewidth=1.2)
    axis.set_ylabel("fraction of the group's images")
    axis.legend(fontsize=9)


def _dice_figure(evaluation: Evaluation):
    from matplotlib.figure import Figure

    columns = [("without APPLE", [row.dice_base for row in evaluation.rows])]
    if evaluation.has_apple:
        columns.append(("with APPLE", [row.dice_apple for row in evaluation.rows]))
    figure = Figure(figsize=(5.2 * len(columns), 3.8), dpi=110, layout="constrained")
    axes = figure.subplots(1, len(columns), squeeze=False, sharey=True)[0]
    groups = [row.group for row in evaluation.rows]
    for axis, (title, values) in zip(axes, columns):
        _group_histograms(axis, np.asarray(values), groups, evaluation.group_names, np.linspace(0, 1, 21), True)
        axis.set_title(f"Dice {title}", fontsize=11)
        axis.set_xlabel("Dice per image")
    return figure


def _downstream_report(table, group_names: Sequence[str], figure_name: str) -> list[Block]:
    """Return the downstream-error table of JSDs and the histogram figure."""
    from matplotlib.figure import Figure

    from ApplePerturbLib.analysis.divergence import DEFAULT_BINS, common_bin_edges, group_divergence
    from ApplePerturbLib.analysis.radiomics_errors import FEATURES

    conditions = list(table.errors)
    titles = {"base": "without APPLE", "apple": "with APPLE"}
    figure = Figure(figsize=(5.0 * len(conditions), 3.3 * len(FEATURES)), dpi=110, layout="constrained")
    axes = figure.subplots(len(FEATURES), len(conditions), squeeze=False)
    rows = []
    for row_index, feature in enumerate(FEATURES):
        edges = common_bin_edges([table.errors[c][feature] for c in conditions])
        divergences = {}
        for column, condition in enumerate(conditions):
            values = table.errors[condition][feature]
            divergences[condition] = group_divergence(values, table.groups, bin_edges=edges,
                                                      group_names=group_names).mean
            axis = axes[row_index][column]
            _group_histograms(axis, values, table.groups, group_names, edges)
            axis.set_title(f"{_FEATURE_TITLES[feature]} error {titles[condition]}\n"
                           f"JSD between groups {_number(divergences[condition])}", fontsize=10)
            axis.set_xlabel(f"absolute error ({table.units[feature]})")
        means = [_group_mean_text(table, condition, feature, group_names) for condition in conditions]
        rows.append([f"{_FEATURE_TITLES[feature]} ({table.units[feature]})"] + means
                    + [_number(divergences[c]) for c in conditions])

    header = ["measurement"] + [f"mean error by group, {titles[c]}" for c in conditions]
    header += [f"JSD {titles[c]}" for c in conditions]
    text = ("Absolute difference between the value measured on the predicted mask and on the ground-truth mask "
            "(PyRadiomics: shape2D mesh area and perimeter, first-order energy of the grey values inside the mask). "
            f"The Jensen-Shannon divergence (JSD, natural log) compares the groups' error distributions on {DEFAULT_BINS} "
            "common bins: 0 means identical distributions, ln 2 = 0.693 means no overlap. With more than two groups "
            "it is the mean over all pairs.")
    if "apple" in table.errors:
        text += " A lower JSD with APPLE means the groups' errors are more alike."
    caption = "Downstream-measurement errors by group: fraction of each group's images per error bin."
    return [Block("paragraph", text), Block("table", header=header, rows=rows),
            Block("figure", caption, name=figure_name, png=_figure_png(figure))]


def _group_mean_text(table, condition: str, feature: str, group_names: Sequence[str]) -> str:
    values = table.errors[condition][feature]
    parts = []
    for name in group_names:
        selected = [value for value, group in zip(values, table.groups) if group == name]
        if selected:
            parts.append(f"{name} {_number(float(np.mean(selected)))}")
    return ", ".join(parts) or "n/a"
