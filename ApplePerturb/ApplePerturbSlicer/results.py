"""Result tables and charts: fairness metrics and per-frame lesion measurements.

The metrics dictionary is the one the library's ``evaluate`` command writes
to ``metrics.json``: ``{"base": M, "apple": M or None, "attribute": "sex"}``
where each ``M`` has the keys ``n_images``, ``dsc_overall``,
``groups`` (``{name: {"n", "dsc"}}``), ``dsc_mean``, ``dsc_delta``,
``dsc_std``, ``dsc_skew`` and ``es_dice``. Dice values are fractions (0..1).
"""

from __future__ import annotations

import math

import vtk

SERIES_ROLE_ATTRIBUTE = "ApplePerturb.series"
_METRIC_KEYS = ("n_images", "dsc_overall", "groups", "dsc_mean", "dsc_delta", "dsc_std", "dsc_skew", "es_dice")

# (row label, key in the metrics dict, which direction is better)
_SUMMARY_ROWS = (
    ("DSC_mean (mean of group Dice)", "dsc_mean", "higher"),
    ("DSC_delta (max - min group Dice)", "dsc_delta", "lower"),
    ("DSC_std (std of group Dice)", "dsc_std", "lower"),
    ("DSC_skew", "dsc_skew", "lower"),
    ("ES-Dice", "es_dice", "higher"),
)

FRAME_COLUMNS = ("frame", "area_mm2", "perimeter_mm", "x0", "y0", "x1", "y1")


def metrics_to_table(metrics: dict, table_node) -> None:
    """Fill a table node with the fairness metrics of the base model and of APPLE.

    Rows: number of images and overall Dice; for each attribute group its
    number of images ``n (<group>)`` and mean Dice ``Dice (<group>)``;
    then DSC_mean, DSC_delta, DSC_std, DSC_skew and ES-Dice. Columns:
    ``metric`` (text), ``better`` ("higher", "lower" or empty), ``base``,
    ``APPLE`` and ``change`` (APPLE minus base). When ``metrics["apple"]``
    is None the ``APPLE`` and ``change`` columns are left out. A missing value
    (a group without images) is NaN. Existing columns of the table are
    replaced.

    Raises:
        ValueError: if ``metrics`` lacks the ``base`` entry or one of its keys.
    """
    base = _checked_metrics(metrics, "base")
    apple = _checked_metrics(metrics, "apple") if metrics.get("apple") is not None else None
    rows = _metric_rows(base, apple)

    columns = {"metric": vtk.vtkStringArray(), "better": vtk.vtkStringArray(), "base": vtk.vtkDoubleArray()}
    if apple is not None:
        columns["APPLE"] = vtk.vtkDoubleArray()
        columns["change"] = vtk.vtkDoubleArray()
    for name, array in columns.items():
        array.SetName(name)
    for label, better, base_value, apple_value in rows:
        columns["metric"].InsertNextValue(label)
        columns["better"].InsertNextValue(better)
        columns["base"].InsertNextValue(base_value)
        if apple is not None:
            columns["APPLE"].InsertNextValue(apple_value)
            columns["change"].InsertNextValue(apple_value - base_value)

    _replace_columns(table_node, columns.values())
    table_node.SetAttribute("ApplePerturb.attribute", str(metrics.get("attribute", "")))
    if apple is not None:
        table_node.SetColumnDescription("change", "APPLE minus base")
    table_node.SetColumnDescription("better", "whether a higher or a lower value is better")


def metrics_to_plot(metrics: dict, table_node, chart_node) -> list:
    """Show the per-group Dice of the base model and of APPLE as a bar chart.

    ``table_node`` is filled with one row per attribute group (columns
    ``group``, ``base`` and, when there is an APPLE result, ``APPLE``).
    ``chart_node`` shows one bar series per model. Series nodes that this
    function made for the chart before are reused, so calling it again after
    a new evaluation adds no nodes. ``chart_node`` must be in a scene.

    Returns:
        The ``vtkMRMLPlotSeriesNode`` list, base first.
    """
    base = _checked_metrics(metrics, "base")
    apple = _checked_metrics(metrics, "apple") if metrics.get("apple") is not None else None
    scene = chart_node.GetScene()
    if scene is None or table_node.GetScene() is not scene:
        raise ValueError("The chart and table nodes must be in the same MRML scene: add them to the scene first.")

    group_names = _group_names(base, apple)
    columns = {"group": vtk.vtkStringArray(), "base": vtk.vtkDoubleArray()}
    if apple is not None:
        columns["APPLE"] = vtk.vtkDoubleArray()
    for name, array in columns.items():
        array.SetName(name)
    for group in group_names:
        columns["group"].InsertNextValue(group)
        columns["base"].InsertNextValue(_group_value(base, group, "dsc"))
        if apple is not None:
            columns["APPLE"].InsertNextValue(_group_value(apple, group, "dsc"))
    _replace_columns(table_node, columns.values())

    series_nodes = [_bar_series(chart_node, table_node, "base", (0.55, 0.55, 0.55))]
    if apple is not None:
        series_nodes.append(_bar_series(chart_node, table_node, "APPLE", (0.9, 0.45, 0.1)))
    else:
        _detach_series(chart_node, "APPLE")

    attribute = str(metrics.get("attribute", "attribute"))
    chart_node.SetTitle(f"Dice per {attribute} group")
    chart_node.SetXAxisTitle(f"{attribute} group ({', '.join(group_names)})")
    chart_node.SetYAxisTitle("Dice")
    chart_node.SetYAxisRangeAuto(False)
    chart_node.SetYAxisRange(0.0, 1.0)
    return series_nodes


def write_frame_row(table_node, frame_index: int, measurements: dict, box: tuple[int, int, int, int] | None = None) -> None:
    """Insert or update the row of one frame in a per-frame result table.

    Columns (created on first use): ``frame``, ``area_mm2``, ``perimeter_mm``
    and the box prompt ``x0, y0, x1, y1`` in pixels (-1 when the frame had
    no box). A frame written again replaces its row, so a rerun leaves one
    row per frame.
    """
    table = table_node.GetTable()
    if table.GetColumnByName("frame") is None:
        arrays = [vtk.vtkIntArray(), vtk.vtkDoubleArray(), vtk.vtkDoubleArray()] + [vtk.vtkIntArray() for _ in range(4)]
        for name, array in zip(FRAME_COLUMNS, arrays):
            array.SetName(name)
        _replace_columns(table_node, arrays)
        table_node.SetColumnUnitLabel("area_mm2", "mm2")
        table_node.SetColumnUnitLabel("perimeter_mm", "mm")

    frames = table.GetColumnByName("frame")
    row = next((r for r in range(table.GetNumberOfRows()) if frames.GetValue(r) == frame_index), None)
    if row is None:
        row = table.GetNumberOfRows()
        table.InsertNextBlankRow()

    values = (frame_index, measurements["area_mm2"], measurements["perimeter_mm"], *(box if box is not None else (-1,) * 4))
    for name, value in zip(FRAME_COLUMNS, values):
        table.GetColumnByName(name).SetValue(row, value)
    table.Modified()
    table_node.Modified()


def _checked_metrics(metrics: dict, key: str) -> dict:
    entry = metrics.get(key) if isinstance(metrics, dict) else None
    if not isinstance(entry, dict):
        raise ValueError(f"The metrics have no '{key}' entry: pass the content of metrics.json written by 'evaluate'.")
    missing = [name for name in _METRIC_KEYS if name not in entry]
    if missing:
        raise ValueError(f"The '{key}' metrics lack {', '.join(missing)}: pass the content of metrics.json written by 'evaluate'.")
    return entry


def _metric_rows(base: dict, apple: dict | None) -> list[tuple[str, str, float, float]]:
    """Return ``(label, better, base value, APPLE value)`` rows; APPLE is NaN without APPLE."""

    def value(metrics: dict | None, key: str) -> float:
        return _number(metrics.get(key)) if metrics is not None else math.nan

    rows = [
        ("images (n)", "", value(base, "n_images"), value(apple, "n_images")),
        ("Dice overall", "higher", value(base, "dsc_overall"), value(apple, "dsc_overall")),
    ]
    for group in _group_names(base, apple):
        rows.append((f"n ({group})", "", _group_value(base, group, "n"), _group_value(apple, group, "n")))
        rows.append((f"Dice ({group})", "higher", _group_value(base, group, "dsc"), _group_value(apple, group, "dsc")))
    for label, key, better in _SUMMARY_ROWS:
        rows.append((label, better, value(base, key), value(apple, key)))
    return rows


def _group_names(base: dict, apple: dict | None) -> list[str]:
    names = list(base["groups"])
    if apple is not None:
        names += [name for name in apple["groups"] if name not in names]
    return names


def _group_value(metrics: dict | None, group: str, key: str) -> float:
    if metrics is None:
        return math.nan
    return _number(metrics["groups"].get(group, {}).get(key))


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _replace_columns(table_node, arrays) -> None:
    table_node.RemoveAllColumns()
    for array in arrays:
        table_node.AddColumn(array)
    table_node.Modified()


def _bar_series(chart_node, table_node, column: str, color: tuple[float, float, float]):
    """Return the chart's bar series for ``column``, created and attached if missing."""
    series = _find_series(chart_node, column)
    if series is None:
        series = chart_node.GetScene().AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"Dice {column}")
        series.SetAttribute(SERIES_ROLE_ATTRIBUTE, column)
        chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetPlotType(series.PlotTypeBar)
    series.SetLabelColumnName("group")
    series.SetYColumnName(column)
    series.SetColor(*color)
    return series


def _find_series(chart_node, column: str):
    for index in range(chart_node.GetNumberOfPlotSeriesNodes()):
        series = chart_node.GetNthPlotSeriesNode(index)
        if series is not None and series.GetAttribute(SERIES_ROLE_ATTRIBUTE) == column:
            return series
    return None


def _detach_series(chart_node, column: str) -> None:
    series = _find_series(chart_node, column)
    if series is not None:
        chart_node.RemovePlotSeriesNodeID(series.GetID())
