"""Tests of the synthetic ultrasound cohort, measured from the files it writes."""

import csv
import re
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ApplePerturbLib.synthetic import SYNTHETIC_NOTICE, make_synthetic_cohort

IMAGE_SIZE = (192, 256)


def _read_rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _read_png(path: Path) -> np.ndarray:
    """Read a PNG with SimpleITK, checking that it is single-channel uint8."""
    image = sitk.ReadImage(str(path))
    assert image.GetNumberOfComponentsPerPixel() == 1, path
    assert image.GetPixelID() == sitk.sitkUInt8, path
    return sitk.GetArrayFromImage(image)


def _lesion_to_surroundings_ratio(image: np.ndarray, mask: np.ndarray) -> float:
    """Return the mean grey level inside the mask divided by that of a ring 5 to 15 pixels outside it."""
    ring = ndimage.binary_dilation(mask, iterations=15) & ~ndimage.binary_dilation(mask, iterations=4)
    return float(image[mask].mean() / image[ring].mean())


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Manifest of a 20-case cohort with seed 0."""
    return make_synthetic_cohort(tmp_path_factory.mktemp("synthetic") / "cohort", n_cases=20, seed=0)


@pytest.fixture(scope="module")
def measured(cohort) -> list[dict]:
    """Rows of the cohort's manifest with the image, mask and lesion contrast read from disk."""
    rows = []
    for row in _read_rows(cohort):
        image = _read_png(cohort.parent / row["image"])
        mask_pixels = _read_png(cohort.parent / row["mask"])
        mask = mask_pixels > 0
        rows.append({**row, "image_pixels": image, "mask_pixels": mask_pixels,
                     "ratio": _lesion_to_surroundings_ratio(image, mask)})
    return rows


def test_manifest_columns_and_files(cohort):
    rows = _read_rows(cohort)

    with open(cohort, newline="", encoding="utf-8") as stream:
        header = next(csv.reader(stream))
    assert header[:5] == ["image", "mask", "case_id", "sex", "age"]
    assert len(rows) >= 20
    for row in rows:
        assert re.fullmatch(r"images/case\d{3}_[12]\.png", row["image"]), row["image"]
        assert row["mask"] == row["image"].replace("images/", "masks/", 1)
        assert (cohort.parent / row["image"]).is_file()
        assert (cohort.parent / row["mask"]).is_file()
        assert row["sex"] in ("F", "M")
        assert 18 <= float(row["age"]) <= 90


def test_cases_share_attributes_across_images(cohort):
    by_case: dict[str, list[dict[str, str]]] = {}
    for row in _read_rows(cohort):
        by_case.setdefault(row["case_id"], []).append(row)

    assert len(by_case) == 20
    assert any(len(images) == 2 for images in by_case.values())
    for case_id, images in by_case.items():
        assert 1 <= len(images) <= 2, case_id
        assert len({(image["sex"], image["age"]) for image in images}) == 1, case_id
        assert all(image["image"].startswith(f"images/case{case_id}_") for image in images)


def test_both_groups_present(cohort):
    rows = _read_rows(cohort)
    sexes = {row["case_id"]: row["sex"] for row in rows}
    ages = [float(row["age"]) for row in rows]

    assert set(sexes.values()) == {"F", "M"}
    assert any(age < 50 for age in ages)
    assert any(age >= 50 for age in ages)
    # About 60 % of the cases are female.
    female_fraction = sum(sex == "F" for sex in sexes.values()) / len(sexes)
    assert 0.5 <= female_fraction <= 0.7


def test_two_cases_cover_both_groups(tmp_path):
    rows = _read_rows(make_synthetic_cohort(tmp_path, n_cases=2, seed=5))

    assert {row["sex"] for row in rows} == {"F", "M"}
    assert {float(row["age"]) >= 50 for row in rows} == {True, False}


def test_images_are_grey_uint8_of_requested_size(measured):
    for row in measured:
        assert row["image_pixels"].shape == IMAGE_SIZE, row["image"]
        assert row["image_pixels"].std() > 5, row["image"]


def test_masks_binary_nonempty_inside_image(measured):
    for row in measured:
        mask = row["mask_pixels"]
        assert mask.shape == IMAGE_SIZE, row["mask"]
        assert set(np.unique(mask).tolist()) == {0, 255}, row["mask"]
        assert (mask > 0).sum() > 200, row["mask"]
        border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        assert not border.any(), f"{row['mask']} touches the image border"
        labels, count = ndimage.label(mask > 0)
        assert count == 1, f"{row['mask']} has {count} regions"


def test_lesion_darker_than_surroundings(measured):
    for row in measured:
        assert row["ratio"] < 0.95, f"{row['image']}: lesion / surroundings = {row['ratio']:.3f}"


def test_male_lesions_have_lower_contrast(measured):
    female = [row["ratio"] for row in measured if row["sex"] == "F"]
    male = [row["ratio"] for row in measured if row["sex"] == "M"]

    # Female lesions: about 0.35 of the surroundings; male lesions: about 0.8.
    assert np.mean(female) < 0.45
    assert np.mean(male) > 0.7
    assert max(female) < min(male)


def test_same_seed_gives_identical_bytes(tmp_path):
    first = make_synthetic_cohort(tmp_path / "first", n_cases=6, seed=3)
    second = make_synthetic_cohort(tmp_path / "second", n_cases=6, seed=3)

    first_files = _file_bytes(first.parent)
    second_files = _file_bytes(second.parent)
    assert list(first_files) == list(second_files)
    for name, content in first_files.items():
        assert second_files[name] == content, name


def test_different_seed_gives_different_images(tmp_path):
    first = make_synthetic_cohort(tmp_path / "first", n_cases=6, seed=3)
    second = make_synthetic_cohort(tmp_path / "second", n_cases=6, seed=4)

    first_image = (first.parent / "images" / "case001_1.png").read_bytes()
    second_image = (second.parent / "images" / "case001_1.png").read_bytes()
    assert first_image != second_image


def test_rewrite_leaves_no_temporary_files(tmp_path):
    make_synthetic_cohort(tmp_path, n_cases=3, seed=1)
    manifest = make_synthetic_cohort(tmp_path, n_cases=3, seed=1)

    leftovers = [path.name for path in tmp_path.rglob(".*")]
    assert leftovers == []
    assert len(_read_rows(manifest)) == len(list((tmp_path / "images").iterdir()))


def test_notice_written_next_to_manifest(cohort):
    assert "synthetic" in SYNTHETIC_NOTICE
    assert "not patient images" in SYNTHETIC_NOTICE
    assert (cohort.parent / "README.txt").read_text(encoding="utf-8").strip() == SYNTHETIC_NOTICE


def test_other_image_size(tmp_path):
    manifest = make_synthetic_cohort(tmp_path, n_cases=4, seed=2, image_size=(96, 128))

    for row in _read_rows(manifest):
        image = _read_png(tmp_path / row["image"])
        mask = _read_png(tmp_path / row["mask"]) > 0
        assert image.shape == (96, 128)
        assert mask.any()
        assert not np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]]).any()


def test_forty_cases_under_three_cpu_seconds(tmp_path):
    # Process CPU time, so that other jobs on the machine do not make the test flaky.
    start = time.process_time()
    make_synthetic_cohort(tmp_path, n_cases=40, seed=0)
    elapsed = time.process_time() - start

    assert elapsed < 3.0, f"40 synthetic cases took {elapsed:.2f} s of CPU time"


def test_manifest_reads_with_cohort_module(cohort):
    from ApplePerturbLib.cohort import read_manifest, validate_images

    records = read_manifest(cohort)

    assert len(records) == len(_read_rows(cohort))
    assert {record.sex for record in records} == {"F", "M"}
    assert all(record.mask is not None for record in records)
    validate_images(records)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"n_cases": 0}, "n_cases"),
        ({"n_cases": 2.5}, "n_cases"),
        ({"n_cases": True}, "n_cases"),
        ({"seed": -1}, "seed"),
        ({"image_size": (32, 256)}, "image_size"),
        ({"image_size": (100.5, 256)}, "image_size"),
        ({"image_size": "large"}, "image_size"),
    ],
)
def test_invalid_arguments_rejected(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic_cohort(tmp_path / "cohort", **arguments)
    assert not (tmp_path / "cohort").exists()


def test_output_path_that_is_a_file_rejected(tmp_path):
    target = tmp_path / "occupied"
    target.write_text("not a folder", encoding="utf-8")

    with pytest.raises(NotADirectoryError, match="occupied"):
        make_synthetic_cohort(target, n_cases=1)
