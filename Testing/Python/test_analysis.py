"""Tests of ApplePerturbLib.analysis: downstream errors, JSD, latent-space scores, bootstrap, seeds."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ApplePerturbLib.analysis import read_per_image
from ApplePerturbLib.analysis.divergence import common_bin_edges, group_divergence, jensen_shannon_divergence
from ApplePerturbLib.analysis.latent_space import analyse_latents, group_separation, plot_latent_space, tsne_embedding
from ApplePerturbLib.analysis.radiomics_errors import (
    compute_error_table, downstream_errors, grey_from_rgb, measure_lesion,
)
from ApplePerturbLib.analysis.uncertainty import (
    aggregate_seeds, bootstrap_fairness, format_mean_std, metric_values,
)
from ApplePerturbLib.cohort import CohortRecord, write_manifest
from ApplePerturbLib.errors import InvalidInputError
from ApplePerturbLib.evaluate import ImageResult, write_evaluation
from ApplePerturbLib.imageio import write_mask
from ApplePerturbLib.metrics import dice_score, fairness_metrics

LN2 = math.log(2.0)


def _disk(shape, row, column, radius):
    rows, columns = np.mgrid[: shape[0], : shape[1]]
    return (rows - row) ** 2 + (columns - column) ** 2 <= radius * radius


def _grey(shape, seed=0):
    return np.random.default_rng(seed).integers(20, 230, shape).astype(np.float64)


# --- radiomics_errors ---------------------------------------------------------------------


def test_errors_zero_for_identical_masks():
    shape = (40, 50)
    truth = _disk(shape, 20, 25, 9)

    errors = downstream_errors(_grey(shape), truth, truth.copy(), spacing=(0.7, 0.4))

    assert errors == {"area": 0.0, "perimeter": 0.0, "energy": 0.0}


def test_area_scales_with_spacing_squared():
    shape = (40, 50)
    grey = _grey(shape)
    truth = _disk(shape, 20, 25, 9)
    prediction = _disk(shape, 20, 27, 6)

    unit = downstream_errors(grey, truth, prediction, spacing=(1.0, 1.0))
    doubled = downstream_errors(grey, truth, prediction, spacing=(2.0, 2.0))
    anisotropic = downstream_errors(grey, truth, prediction, spacing=(3.0, 1.0))

    assert unit["area"] > 10.0
    assert doubled["area"] == pytest.approx(4.0 * unit["area"], rel=1e-9)
    assert doubled["perimeter"] == pytest.approx(2.0 * unit["perimeter"], rel=1e-9)
    assert doubled["energy"] == pytest.approx(unit["energy"], rel=1e-12)
    assert anisotropic["area"] == pytest.approx(3.0 * unit["area"], rel=1e-9)


def test_measures_of_a_rectangle():
    shape = (30, 40)
    grey = _grey(shape, seed=3)
    mask = np.zeros(shape, bool)
    mask[5:15, 10:30] = True  # 10 rows x 20 columns

    measures = measure_lesion(grey, mask, spacing=(0.5, 0.25))

    # The mesh runs through pixel-edge midpoints, so it cuts 1/8 pixel off each corner.
    assert measures.area == pytest.approx((200 - 0.5) * 0.5 * 0.25, rel=1e-9)
    assert measures.perimeter == pytest.approx(2 * (19 * 0.5 + 9 * 0.25) + 4 * math.hypot(0.25, 0.125), rel=1e-9)
    assert measures.energy == pytest.approx(float(np.sum(grey[mask] ** 2)), rel=1e-12)


def test_empty_prediction_gives_full_errors():
    shape = (40, 50)
    grey = _grey(shape)
    truth = _disk(shape, 20, 25, 8)
    reference = measure_lesion(grey, truth)

    errors = downstream_errors(grey, truth, np.zeros(shape, bool))

    assert measure_lesion(grey, np.zeros(shape, bool)).area == 0.0
    assert errors["area"] == pytest.approx(reference.area)
    assert errors["perimeter"] == pytest.approx(reference.perimeter)
    assert errors["energy"] == pytest.approx(float(np.sum(grey[truth] ** 2)))


def test_radiomics_logger_level_restored():
    radiomics_logger = logging.getLogger("radiomics")
    shape = (20, 20)
    measure_lesion(_grey(shape), _disk(shape, 10, 10, 4))  # imports radiomics, which sets its level
    radiomics_logger.setLevel(logging.DEBUG)

    measure_lesion(_grey(shape), _disk(shape, 10, 10, 4))

    assert radiomics_logger.level == logging.DEBUG
    radiomics_logger.setLevel(logging.INFO)


def test_measure_rejects_shape_mismatch():
    with pytest.raises(InvalidInputError, match="same shape"):
        measure_lesion(np.zeros((10, 10)), np.zeros((10, 11), bool))


def test_grey_from_rgb_channels():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    repeated = np.repeat(grey[..., None], 3, axis=2)
    colour = np.zeros((1, 1, 3), np.uint8)
    colour[0, 0] = (100, 0, 0)

    assert np.array_equal(grey_from_rgb(repeated), grey.astype(float))
    assert grey_from_rgb(colour)[0, 0] == pytest.approx(29.9)


def _evaluation_folder(tmp_path: Path, spacing=(0.5, 0.5), with_masks=True):
    """Write 4 images, their manifest and an evaluation folder whose base masks are shifted disks."""
    shape = (32, 36)
    records, results = [], []
    evaluation = tmp_path / "evaluation"
    for index in range(4):
        truth = _disk(shape, 16, 18, 7)
        grey = np.full(shape, 150, np.uint8)
        grey[truth] = 50
        Image.fromarray(grey).save(tmp_path / f"image{index}.png")
        write_mask(tmp_path / f"image{index}_mask.png", truth)
        records.append(CohortRecord(tmp_path / f"image{index}.png", tmp_path / f"image{index}_mask.png",
                                    f"case{index}", "F" if index < 2 else "M", 40.0, spacing))
        base = _disk(shape, 16, 18 + index, 7 - index)
        if with_masks:
            write_mask(evaluation / "masks" / "base" / f"image{index}.png", base)
        results.append(ImageResult(f"image{index}.png", f"case{index}", "female" if index < 2 else "male",
                                   dice_score(base, truth), None))
    write_manifest(tmp_path / "manifest.csv", records)
    metrics = {"base": fairness_metrics([r.dice_base for r in results], [r.group for r in results]), "apple": None}
    write_evaluation(evaluation, results, metrics)
    return evaluation, tmp_path / "manifest.csv"


def test_error_table_of_evaluation(tmp_path):
    evaluation, manifest = _evaluation_folder(tmp_path)

    table = compute_error_table(evaluation, manifest)

    assert list(table.errors) == ["base"]
    assert table.units == {"area": "mm^2", "perimeter": "mm", "energy": "(grey level)^2"}
    assert table.groups == ["female", "female", "male", "male"]
    assert table.errors["base"]["area"][0] == 0.0
    assert np.all(np.diff(table.errors["base"]["area"]) > 0)  # the disks shrink with the index


def test_error_table_without_spacing_uses_pixels(tmp_path):
    evaluation, manifest = _evaluation_folder(tmp_path, spacing=None)

    table = compute_error_table(evaluation, manifest)

    assert table.units["area"] == "px^2"
    assert table.units["perimeter"] == "px"


def test_error_table_needs_saved_masks(tmp_path):
    evaluation, manifest = _evaluation_folder(tmp_path, with_masks=False)

    with pytest.raises(FileNotFoundError, match="--save-masks"):
        compute_error_table(evaluation, manifest)


def test_error_table_rejects_image_not_in_manifest(tmp_path):
    evaluation, manifest = _evaluation_folder(tmp_path)
    table_path = evaluation / "per_image.csv"
    table_path.write_text(table_path.read_text().replace("image3.png", "missing.png"))

    with pytest.raises(InvalidInputError, match="missing.png is not in the manifest"):
        compute_error_table(evaluation, manifest)


def test_per_image_rejects_bad_dice(tmp_path):
    (tmp_path / "per_image.csv").write_text("image,case_id,group,dice_base,dice_apple\na.png,c1,female,1.5,\n")

    with pytest.raises(InvalidInputError, match="line 2.*dice_base"):
        read_per_image(tmp_path)


def test_per_image_rejects_missing_column(tmp_path):
    (tmp_path / "per_image.csv").write_text("image,case_id,dice_base\na.png,c1,0.5\n")

    with pytest.raises(InvalidInputError, match="group"):
        read_per_image(tmp_path)


# --- divergence ---------------------------------------------------------------------------


def test_jsd_identical_is_zero():
    sample = np.random.default_rng(0).normal(size=200)

    assert jensen_shannon_divergence(sample, sample.copy()) == pytest.approx(0.0, abs=1e-12)


def test_jsd_disjoint_is_ln2():
    assert jensen_shannon_divergence([0.0, 0.1, 0.2], [5.0, 5.1, 5.2]) == pytest.approx(LN2, rel=1e-12)


def test_jsd_half_overlap_by_hand():
    # Histograms P = [1/2, 1/2, 0] and Q = [0, 1/2, 1/2]: M = [1/4, 1/2, 1/4], so
    # KL(P||M) = KL(Q||M) = 1/2 ln 2 and JSD = 1/2 ln 2.
    divergence = jensen_shannon_divergence([0.5, 1.5], [1.5, 2.5], bin_edges=np.array([0.0, 1.0, 2.0, 3.0]))

    assert divergence == pytest.approx(0.5 * LN2, rel=1e-12)


def test_jsd_is_symmetric():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 100), rng.normal(1, 2, 80)

    assert jensen_shannon_divergence(a, b) == pytest.approx(jensen_shannon_divergence(b, a), rel=1e-12)


def test_jsd_rejects_bad_samples():
    with pytest.raises(InvalidInputError, match="empty"):
        jensen_shannon_divergence([], [1.0])
    with pytest.raises(InvalidInputError, match="not finite"):
        jensen_shannon_divergence([1.0, float("nan")], [1.0])
    with pytest.raises(InvalidInputError, match="outside the bin edges"):
        jensen_shannon_divergence([0.5], [3.5], bin_edges=np.array([0.0, 1.0, 2.0]))


def test_group_divergence_mean_of_pairs():
    values = [0.0, 0.1, 5.0, 5.1, 0.0, 0.1, 9.0]
    groups = ["a", "a", "b", "b", "c", "c", None]

    result = group_divergence(values, groups, bin_edges=np.linspace(0, 10, 11))

    assert result.pairs[("a", "b")] == pytest.approx(LN2)
    assert result.pairs[("a", "c")] == pytest.approx(0.0, abs=1e-12)
    assert result.pairs[("b", "c")] == pytest.approx(LN2)
    assert result.mean == pytest.approx(2 * LN2 / 3)


def test_group_divergence_one_group_is_none():
    result = group_divergence([1.0, 2.0, 3.0], ["a", "a", None])

    assert result.mean is None
    assert result.pairs == {}


def test_common_edges_cover_all_samples():
    edges = common_bin_edges([[1.0, 2.0], [7.0]], bins=4)

    assert edges[0] == 1.0
    assert edges[-1] == 7.0
    assert len(edges) == 5


# --- latent_space -------------------------------------------------------------------------


def _clusters(separation: float, n: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    features = np.vstack([rng.normal(0.0, 1.0, (n, 16)), rng.normal(separation, 1.0, (n, 16))])
    return features, ["female"] * n + ["male"] * n


def test_separated_clusters_score_high():
    features, groups = _clusters(separation=10.0)

    scores = group_separation(features, groups)

    assert scores.silhouette > 0.8
    assert scores.davies_bouldin < 0.3
    assert scores.group_counts == {"female": 30, "male": 30}


def test_mixed_clusters_score_near_zero():
    features, groups = _clusters(separation=0.0)

    scores = group_separation(features, groups)

    assert abs(scores.silhouette) < 0.05
    assert scores.davies_bouldin > 3.0


def test_unknown_rows_left_out():
    features, groups = _clusters(separation=10.0, n=10)
    with_unknown = np.vstack([features, np.full((3, 16), 100.0)])

    scores = group_separation(with_unknown, groups + [None, None, None])
    reference = group_separation(features, groups)

    assert scores.silhouette == pytest.approx(reference.silhouette)
    assert scores.davies_bouldin == pytest.approx(reference.davies_bouldin)


def test_separation_needs_two_groups():
    features, _ = _clusters(separation=1.0, n=5)

    with pytest.raises(InvalidInputError, match="at least 2 groups"):
        group_separation(features, ["female"] * 10)
    with pytest.raises(InvalidInputError, match="group labels"):
        group_separation(features, ["female"] * 9)


def test_tsne_and_figure():
    features, groups = _clusters(separation=8.0, n=8)
    perturbed, _ = _clusters(separation=0.0, n=8, seed=1)

    embedding = tsne_embedding(features, seed=0)
    result = analyse_latents({"f_o": features, "f_p": perturbed}, groups, seed=0)
    figure = plot_latent_space(result, ["female", "male"])

    assert embedding.shape == (16, 2)
    assert np.allclose(embedding, tsne_embedding(features, seed=0))
    assert result.separation["f_p"].silhouette < result.separation["f_o"].silhouette
    assert len(figure.axes) == 2
    assert "Davies-Bouldin" in figure.axes[0].get_title()


# --- uncertainty --------------------------------------------------------------------------


def _synthetic_cohort(seed: int, cases_per_group: int = 30, means=(0.85, 0.70)):
    """Per-image Dice with known group means: a case effect plus image noise, 1 to 3 images per case."""
    rng = np.random.default_rng(seed)
    dice, groups, case_ids = [], [], []
    for group, mean in zip(("female", "male"), means):
        for case in range(cases_per_group):
            case_mean = mean + rng.uniform(-0.08, 0.08)
            for _ in range(rng.integers(1, 4)):
                dice.append(float(np.clip(case_mean + rng.uniform(-0.04, 0.04), 0.0, 1.0)))
                groups.append(group)
                case_ids.append(f"{group}-{case}")
    return dice, groups, case_ids


def test_bootstrap_covers_true_delta():
    true_delta = 0.15
    covered = 0
    for seed in range(12):
        dice, groups, case_ids = _synthetic_cohort(seed)
        result = bootstrap_fairness(dice, groups, case_ids, ["female", "male"], n_resamples=300, seed=seed)
        interval = result.metrics["dsc_delta"]["base"]
        covered += interval.low <= true_delta <= interval.high
        assert interval.low <= interval.value <= interval.high

    assert covered >= 9  # a 95 % interval should miss at most a few of 12 cohorts


def test_bootstrap_interval_covers_group_means():
    dice, groups, case_ids = _synthetic_cohort(seed=100, cases_per_group=60)

    result = bootstrap_fairness(dice, groups, case_ids, ["female", "male"], n_resamples=400, seed=0)

    female = result.metrics["dsc[female]"]["base"]
    male = result.metrics["dsc[male]"]["base"]
    assert female.low <= 0.85 <= female.high
    assert male.low <= 0.70 <= male.high
    assert male.high - male.low < 0.05


def test_bootstrap_resamples_cases_not_images():
    dice, groups, case_ids = _synthetic_cohort(seed=5)
    # Triplicating every image inside its case changes no group mean of any case-level resample.
    tripled = [list(np.repeat(values, 3)) for values in (dice, groups, case_ids)]

    once = bootstrap_fairness(dice, groups, case_ids, n_resamples=200, seed=3)
    thrice = bootstrap_fairness(*tripled, n_resamples=200, seed=3)

    for key in ("dsc[female]", "dsc[male]", "dsc_delta", "es_dice"):
        assert thrice.metrics[key]["base"].low == pytest.approx(once.metrics[key]["base"].low)
        assert thrice.metrics[key]["base"].high == pytest.approx(once.metrics[key]["base"].high)


def test_bootstrap_paired_difference():
    dice, groups, case_ids = _synthetic_cohort(seed=7)
    apple = [value * 0.5 for value in dice]

    same = bootstrap_fairness(dice, groups, case_ids, dice_apple=dice, n_resamples=100)
    halved = bootstrap_fairness(dice, groups, case_ids, dice_apple=apple, n_resamples=100)

    assert same.metrics["dsc_delta"]["difference"].low == 0.0
    assert same.metrics["dsc_delta"]["difference"].high == 0.0
    assert not same.metrics["dsc_delta"]["difference"].excludes_zero()
    # Halving every Dice halves DSC_delta in every resample, so the paired
    # difference is exactly -DSC_delta / 2 of that resample.
    difference = halved.metrics["dsc_delta"]["difference"]
    base = halved.metrics["dsc_delta"]["base"]
    assert difference.low == pytest.approx(-base.high / 2)
    assert difference.high == pytest.approx(-base.low / 2)
    assert difference.excludes_zero()


def test_bootstrap_redraws_resamples_missing_a_group():
    dice = [0.8] * 19 + [0.4]
    groups = ["female"] * 19 + ["male"]
    case_ids = [f"c{i}" for i in range(20)]

    redrawn = bootstrap_fairness(dice, groups, case_ids, n_resamples=100, seed=0)
    skipped = bootstrap_fairness(dice, groups, case_ids, n_resamples=100, seed=0, max_redraws=0)

    assert redrawn.n_redrawn > 0
    assert redrawn.n_used == 100
    assert redrawn.metrics["dsc_delta"]["base"].n_defined == 100
    assert skipped.n_skipped > 0
    assert skipped.n_used + skipped.n_skipped == 100


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(InvalidInputError, match="resamples"):
        bootstrap_fairness([0.5], ["a"], ["c"], n_resamples=0)
    with pytest.raises(InvalidInputError, match="confidence"):
        bootstrap_fairness([0.5], ["a"], ["c"], confidence=1.5)
    with pytest.raises(InvalidInputError, match="length"):
        bootstrap_fairness([0.5, 0.6], ["a"], ["c", "d"])


def test_metric_values_keys():
    values = metric_values(fairness_metrics([0.9, 0.5], ["female", "male"], ["female", "male"]))

    assert list(values) == ["dsc_overall", "dsc[female]", "dsc[male]", "dsc_mean", "dsc_delta",
                            "dsc_std", "dsc_skew", "es_dice"]
    assert values["dsc_delta"] == pytest.approx(0.4)


def test_aggregate_seeds_mean_and_std():
    runs = [fairness_metrics([a, b], ["female", "male"], ["female", "male"])
            for a, b in ((0.9, 0.6), (0.8, 0.7), (0.85, 0.65))]

    summary = aggregate_seeds(runs)

    assert summary["dsc_delta"].mean == pytest.approx(np.mean([0.3, 0.1, 0.2]))
    assert summary["dsc_delta"].std == pytest.approx(np.std([0.3, 0.1, 0.2], ddof=1))
    assert summary["dsc[female]"].n == 3
    assert format_mean_std(summary["dsc_delta"]) == "0.200 (0.100)"


def test_aggregate_seeds_leaves_out_undefined():
    runs = [fairness_metrics([1.0, 0.5], ["female", "male"]), fairness_metrics([0.9, 0.5], ["female", "male"])]
    runs[0]["dsc_skew"] = None  # an infinite skew is written to metrics.json as null

    summary = aggregate_seeds(runs)

    assert summary["dsc_skew"].n == 1
    assert summary["dsc_skew"].std is None
    assert format_mean_std(summary["dsc_skew"]) == "5.000"
    with pytest.raises(InvalidInputError):
        aggregate_seeds([])
