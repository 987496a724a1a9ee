"""Tests of Dice and the subgroup fairness metrics against hand-computed values."""

import json
import math

import numpy as np
import pytest

from ApplePerturbLib.metrics import dice_score, fairness_metrics, format_comparison_table, to_json_safe


# --- dice_score ---------------------------------------------------------------


def test_dice_identical_masks_is_one():
    mask = np.zeros((8, 10), dtype=bool)
    mask[2:5, 3:7] = True

    assert dice_score(mask, mask.copy()) == 1.0


def test_dice_disjoint_masks_is_zero():
    pred = np.zeros((8, 10), dtype=bool)
    target = np.zeros((8, 10), dtype=bool)
    pred[0:2, 0:2] = True
    target[5:8, 5:9] = True

    assert dice_score(pred, target) == 0.0


def test_dice_both_empty_is_one():
    empty = np.zeros((4, 4), dtype=bool)

    assert dice_score(empty, empty) == 1.0


def test_dice_one_empty_is_zero():
    empty = np.zeros((4, 4), dtype=bool)
    full = np.ones((4, 4), dtype=bool)

    assert dice_score(empty, full) == 0.0
    assert dice_score(full, empty) == 0.0


def test_dice_partial_overlap_hand_computed():
    # Prediction: 4 pixels, target: 6 pixels, overlap: 3 pixels -> 2 * 3 / (4 + 6) = 0.6.
    pred = np.zeros((5, 5), dtype=np.uint8)
    target = np.zeros((5, 5), dtype=np.uint8)
    pred[1, 1:5] = 1
    target[1, 2:5] = 1
    target[2, 2:5] = 1

    assert dice_score(pred, target) == pytest.approx(0.6)


def test_dice_accepts_bool_int_and_float_masks():
    target = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
    pred = np.array([[1, 0, 0], [0, 1, 1]])
    expected = 2 * 2 / (3 + 3)

    assert dice_score(pred, target) == pytest.approx(expected)
    assert dice_score(pred.astype(np.float32), target.astype(np.float64)) == pytest.approx(expected)
    assert dice_score(pred.astype(bool), target) == pytest.approx(expected)


def test_dice_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError) as error:
        dice_score(np.zeros((4, 5), dtype=bool), np.zeros((5, 4), dtype=bool))

    assert "(4, 5)" in str(error.value)
    assert "(5, 4)" in str(error.value)


def test_dice_rejects_non_binary_values():
    mask_255 = np.zeros((4, 4), dtype=np.uint8)
    mask_255[1:3, 1:3] = 255
    probabilities = np.full((4, 4), 0.7)
    binary = mask_255 > 0

    with pytest.raises(ValueError, match="255"):
        dice_score(mask_255, binary)
    with pytest.raises(ValueError, match="0.7"):
        dice_score(binary, probabilities)


# --- fairness_metrics -----------------------------------------------------------


def test_two_groups_hand_computed():
    # Group A: [0.8, 0.6] -> 0.7; group B: [0.9] -> 0.9.
    result = fairness_metrics([0.8, 0.6, 0.9], ["A", "A", "B"], ["A", "B"])

    assert result["n_images"] == 3
    assert result["dsc_overall"] == pytest.approx((0.8 + 0.6 + 0.9) / 3)
    assert result["groups"] == {"A": {"n": 2, "dsc": pytest.approx(0.7)}, "B": {"n": 1, "dsc": pytest.approx(0.9)}}
    assert result["dsc_mean"] == pytest.approx(0.8)
    assert result["dsc_delta"] == pytest.approx(0.2)
    # Sample std of (0.7, 0.9): sqrt((0.1^2 + 0.1^2) / (2 - 1)) = sqrt(0.02).
    assert result["dsc_std"] == pytest.approx(math.sqrt(0.02))
    # (1 - 0.7) / (1 - 0.9) = 0.3 / 0.1.
    assert result["dsc_skew"] == pytest.approx(3.0)
    # Overall 2.3 / 3; deviations |0.7 - 2.3/3| + |0.9 - 2.3/3| = 0.2; ES-Dice = (2.3 / 3) / 1.2.
    assert result["es_dice"] == pytest.approx((2.3 / 3) / 1.2)
    assert result["missing_groups"] == []
    assert "warning" not in result


def test_std_uses_ddof_one_not_population():
    result = fairness_metrics([0.7, 0.9], ["A", "B"])

    # The population std (ddof=0) of (0.7, 0.9) would be 0.1.
    assert result["dsc_std"] == pytest.approx(0.1 * math.sqrt(2))
    assert result["dsc_std"] != pytest.approx(0.1)


def test_three_groups_with_singleton_and_unknowns():
    # a: [0.9, 0.7, 0.8] -> 0.8; b: [0.5] -> 0.5; c: [0.6, 0.4] -> 0.5; unknown: [0.1, 1.0].
    dice = [0.9, 0.5, 0.7, 0.1, 0.6, 0.8, 1.0, 0.4]
    groups = ["a", "b", "a", None, "c", "a", None, "c"]

    result = fairness_metrics(dice, groups, ["a", "b", "c"])

    assert result["n_images"] == 8
    assert result["n_unknown"] == 2
    # All 8 images: 5.0 / 8. Known images only: 3.9 / 6.
    assert result["dsc_overall"] == pytest.approx(5.0 / 8)
    assert result["dsc_overall_known"] == pytest.approx(3.9 / 6)
    assert [(name, entry["n"]) for name, entry in result["groups"].items()] == [("a", 3), ("b", 1), ("c", 2)]
    assert result["groups"]["a"]["dsc"] == pytest.approx(0.8)
    assert result["groups"]["b"]["dsc"] == pytest.approx(0.5)
    assert result["groups"]["c"]["dsc"] == pytest.approx(0.5)
    assert result["dsc_mean"] == pytest.approx(0.6)
    assert result["dsc_delta"] == pytest.approx(0.3)
    # Deviations from 0.6: 0.2, -0.1, -0.1 -> sum of squares 0.06, divided by 2.
    assert result["dsc_std"] == pytest.approx(math.sqrt(0.03))
    # Errors 0.2, 0.5, 0.5 -> 0.5 / 0.2.
    assert result["dsc_skew"] == pytest.approx(2.5)
    # Deviations from 0.65: 0.15 + 0.15 + 0.15 = 0.45.
    assert result["es_dice"] == pytest.approx(0.65 / 1.45)


def test_group_order_follows_group_names():
    result = fairness_metrics([0.5, 0.6, 0.7], ["z", "y", "x"], ["y", "z", "x"])

    assert list(result["groups"]) == ["y", "z", "x"]


def test_default_group_order_is_sorted():
    result = fairness_metrics([0.5, 0.6, 0.7], ["male", "female", "male"])

    assert list(result["groups"]) == ["female", "male"]


def test_group_without_images_is_left_out():
    # Same images as the two-group case plus a listed group C without images.
    result = fairness_metrics([0.8, 0.6, 0.9], ["A", "A", "B"], ["A", "B", "C"])

    assert result["groups"]["C"] == {"n": 0, "dsc": None}
    assert result["missing_groups"] == ["C"]
    assert result["dsc_mean"] == pytest.approx(0.8)
    assert result["dsc_delta"] == pytest.approx(0.2)
    assert result["dsc_std"] == pytest.approx(math.sqrt(0.02))
    assert result["dsc_skew"] == pytest.approx(3.0)
    assert "C" in result["warning"]


def test_single_present_group_warns():
    result = fairness_metrics([0.8, 0.6], ["female", "female"], ["female", "male"])

    assert result["groups"]["male"] == {"n": 0, "dsc": None}
    assert result["missing_groups"] == ["male"]
    assert result["dsc_mean"] == pytest.approx(0.7)
    assert result["dsc_delta"] == 0.0
    assert result["dsc_std"] is None
    assert result["dsc_skew"] == pytest.approx(1.0)
    # One group: ES-Dice reduces to the group's Dice.
    assert result["es_dice"] == pytest.approx(0.7)
    assert "warning" in result


def test_all_unknown_groups_give_no_statistics():
    result = fairness_metrics([0.4, 0.6], [None, None], ["female", "male"])

    assert result["dsc_overall"] == pytest.approx(0.5)
    assert result["dsc_overall_known"] is None
    for key in ("dsc_mean", "dsc_delta", "dsc_std", "dsc_skew", "es_dice"):
        assert result[key] is None, key
    assert "warning" in result


def test_skew_infinite_when_one_group_perfect():
    result = fairness_metrics([1.0, 1.0, 0.8], ["A", "A", "B"])

    assert result["dsc_skew"] == math.inf
    assert "DSC_skew" in result["warning"]


def test_skew_one_when_all_groups_perfect():
    result = fairness_metrics([1.0, 1.0], ["A", "B"])

    assert result["dsc_skew"] == 1.0
    assert result["dsc_delta"] == 0.0
    assert "warning" not in result


@pytest.mark.parametrize(
    "dice, groups, group_names, message",
    [
        ([], [], None, "no Dice values"),
        ([0.5, 0.6], ["A"], None, "2 Dice values but 1 group labels"),
        ([0.5, 1.2], ["A", "B"], None, "1.2"),
        ([0.5, float("nan")], ["A", "B"], None, "nan"),
        ([0.5, 0.6], ["A", "B"], ["A"], r"\['B'\]"),
        ([0.5, 0.6], ["A", "B"], ["A", "B", "A"], "twice"),
    ],
)
def test_fairness_metrics_rejects_invalid_input(dice, groups, group_names, message):
    with pytest.raises(ValueError, match=message):
        fairness_metrics(dice, groups, group_names)


def test_accepts_numpy_input():
    result = fairness_metrics(np.array([0.8, 0.6, 0.9], dtype=np.float32), np.array(["A", "A", "B"]))

    assert result["dsc_delta"] == pytest.approx(0.2)
    assert isinstance(result["dsc_delta"], float)
    assert isinstance(result["groups"]["A"]["n"], int)


# --- to_json_safe ----------------------------------------------------------------


def test_to_json_safe_converts_special_values():
    value = {
        "inf": math.inf,
        "nan": float("nan"),
        "numpy_float": np.float32(0.5),
        "numpy_int": np.int64(3),
        "numpy_bool": np.bool_(True),
        "array": np.array([1.0, np.inf]),
        "nested": ({"x": -math.inf},),
        1: "int key",
    }

    safe = to_json_safe(value)

    assert safe == {
        "inf": None,
        "nan": None,
        "numpy_float": 0.5,
        "numpy_int": 3,
        "numpy_bool": True,
        "array": [1.0, None],
        "nested": [{"x": None}],
        "1": "int key",
    }
    assert type(safe["numpy_int"]) is int
    assert type(safe["numpy_float"]) is float


def test_metrics_round_trip_through_strict_json():
    result = fairness_metrics([1.0, 0.6, np.float64(0.9)], ["A", "B", None], ["A", "B", "C"])

    text = json.dumps(to_json_safe(result), allow_nan=False)
    loaded = json.loads(text)

    assert loaded["dsc_skew"] is None
    assert loaded["groups"]["C"] == {"n": 0, "dsc": None}
    assert loaded["dsc_delta"] == pytest.approx(0.4)


# --- format_comparison_table -----------------------------------------------------


def _row(table: str, label: str) -> list[str]:
    """Return the whitespace-separated cells of the first table line starting with ``label``."""
    for line in table.splitlines():
        if line.startswith(label):
            return line[len(label):].split()
    raise AssertionError(f"no row {label!r} in table:\n{table}")


def test_table_compares_base_and_apple():
    base = fairness_metrics([0.8, 0.6, 0.9], ["female", "female", "male"], ["female", "male"])
    apple = fairness_metrics([0.85, 0.75, 0.88], ["female", "female", "male"], ["female", "male"])

    table = format_comparison_table(base, apple)

    header = table.splitlines()[0].split()
    assert header == ["metric", "base", "APPLE", "change"]
    assert _row(table, "Dice overall (n=3)") == ["0.767", "0.827", "+0.060", "better"]
    assert _row(table, "Dice female (n=2)") == ["0.700", "0.800", "+0.100", "better"]
    assert _row(table, "Dice male (n=1)") == ["0.900", "0.880", "-0.020", "worse"]
    assert _row(table, "DSC_delta") == ["0.200", "0.080", "-0.120", "fairer"]
    assert _row(table, "DSC_skew") == ["3.000", "1.667", "-1.333", "fairer"]
    assert _row(table, "ES-Dice")[-1] == "better"
    assert _row(table, "DSC_std")[0] == "0.141"
    assert _row(table, "DSC_mean")[:2] == ["0.800", "0.840"]


def test_table_rates_wider_gap_less_fair():
    base = fairness_metrics([0.8, 0.7], ["A", "B"])
    apple = fairness_metrics([0.9, 0.6], ["A", "B"])

    table = format_comparison_table(base, apple, labels=("before", "after"))

    assert table.splitlines()[0].split() == ["metric", "before", "after", "change"]
    assert _row(table, "DSC_delta") == ["0.100", "0.300", "+0.200", "less", "fair"]
    assert _row(table, "DSC_mean") == ["0.750", "0.750", "+0.000", "same"]
    assert _row(table, "ES-Dice")[-1] == "worse"


def test_table_with_base_only():
    base = fairness_metrics([0.8, 0.6, 0.9], ["A", "A", "B"])

    table = format_comparison_table(base)

    assert table.splitlines()[0].split() == ["metric", "base"]
    assert _row(table, "Dice A (n=2)") == ["0.700"]
    assert _row(table, "DSC_std") == ["0.141"]
    assert "APPLE" not in table
    assert "change" not in table


def test_table_shows_undefined_and_infinite_values():
    base = fairness_metrics([1.0, 0.6], ["A", "B"])
    apple = to_json_safe(fairness_metrics([0.9], ["A"], ["A", "B"]))

    table = format_comparison_table(base, apple)

    assert _row(table, "DSC_skew") == ["inf", "1.000", "-inf", "fairer"]
    assert _row(table, "DSC_std") == ["0.283", "n/a", "n/a"]
    assert _row(table, "Dice B (n=1/0)") == ["0.600", "n/a", "n/a"]
    assert "APPLE: Groups without images" in table
