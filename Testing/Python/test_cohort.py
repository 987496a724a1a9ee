"""Tests of ApplePerturbLib.cohort: manifests, groups and case-level splits."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ApplePerturbLib.cohort import (
    CohortRecord,
    group_counts,
    group_names,
    group_of,
    read_manifest,
    require_groups,
    split_by_case,
    validate_images,
    write_manifest,
)
from ApplePerturbLib.errors import InvalidInputError
from ApplePerturbLib.imageio import write_mask

HEADER = "image,mask,case_id,sex,age\n"


def _write_pair(folder: Path, name: str, size=(24, 32)) -> tuple[Path, Path]:
    """Write a small grey PNG image and its binary mask; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    height, width = size
    pixels = (np.arange(height * width).reshape(height, width) % 251).astype(np.uint8)
    image = folder / f"{name}.png"
    Image.fromarray(pixels).save(image)
    mask = np.zeros(size, bool)
    mask[4:12, 6:20] = True
    mask_path = folder / f"{name}_mask.png"
    write_mask(mask_path, mask)
    return image, mask_path


@pytest.fixture()
def cohort_folder(tmp_path):
    """A folder with images/a.png, images/b.png, images/c.png and their masks."""
    for name in ("a", "b", "c"):
        _write_pair(tmp_path / "images", name)
    return tmp_path


def _manifest(folder: Path, rows: list[str], header: str = HEADER) -> Path:
    path = folder / "cohort.csv"
    path.write_text(header + "".join(row + "\n" for row in rows), encoding="utf-8")
    return path


def _records(case_specs) -> list[CohortRecord]:
    """Build records from (case_id, sex, age, image count) without files; split tests need no pixels."""
    records = []
    for case_id, sex, age, count in case_specs:
        for index in range(count):
            records.append(
                CohortRecord(
                    image=Path(f"/cohort/{case_id}_{index}.png"),
                    mask=Path(f"/cohort/{case_id}_{index}_mask.png"),
                    case_id=case_id,
                    sex=sex,
                    age=age,
                    spacing=None,
                )
            )
    return records


def _mixed_cohort(case_count=40, seed=5) -> list[CohortRecord]:
    rng = random.Random(seed)
    specs = []
    for number in range(case_count):
        sex = ["F", "M", None][number % 3]
        age = None if number % 7 == 0 else float(20 + (number * 13) % 60)
        specs.append((f"case{number:03d}", sex, age, rng.randint(1, 3)))
    return _records(specs)


def _split_ids(split) -> tuple[list[Path], list[Path]]:
    train, test = split
    return [record.image for record in train], [record.image for record in test]


# --- reading and writing manifests -------------------------------------------


def test_manifest_round_trip(cohort_folder):
    images = cohort_folder / "images"
    records = [
        CohortRecord(images / "a.png", images / "a_mask.png", "p1", "F", 63.0, (0.1, 0.2)),
        CohortRecord(images / "b.png", None, "p1", "F", 63.5, None),
        CohortRecord(images / "c.png", images / "c_mask.png", "p2", None, None, None),
    ]
    manifest = cohort_folder / "lists" / "cohort.csv"

    write_manifest(manifest, records)

    text = manifest.read_text(encoding="utf-8")
    assert "../images/a.png" in text
    assert str(cohort_folder) not in text
    assert read_manifest(manifest) == records
    assert [path.name for path in manifest.parent.iterdir()] == ["cohort.csv"]


def test_manifest_accepts_value_variants(cohort_folder):
    manifest = _manifest(
        cohort_folder,
        [
            "images/a.png,images/a_mask.png,1,female,45",
            "images/b.png,,2, m ,unknown",
            f"{cohort_folder / 'images' / 'c.png'},images/c_mask.png,3,NA,",
        ],
    )

    records = read_manifest(manifest)

    assert [record.sex for record in records] == ["F", "M", None]
    assert [record.age for record in records] == [45.0, None, None]
    assert records[1].mask is None
    assert all(record.image.is_absolute() for record in records)


def test_manifest_reads_spacing_columns(cohort_folder):
    manifest = _manifest(
        cohort_folder,
        ["images/a.png,images/a_mask.png,1,F,45,0.3,0.4", "images/b.png,images/b_mask.png,2,M,50,,"],
        header="image,mask,case_id,sex,age,spacing_x,spacing_y\n",
    )

    records = read_manifest(manifest)

    assert records[0].spacing == (0.3, 0.4)
    assert records[1].spacing is None


def test_manifest_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        read_manifest(tmp_path / "nothing.csv")


def test_manifest_missing_column(cohort_folder):
    manifest = _manifest(cohort_folder, ["images/a.png,images/a_mask.png,1,F"], header="image,mask,case_id,sex\n")

    with pytest.raises(InvalidInputError) as caught:
        read_manifest(manifest)

    message = str(caught.value)
    assert "'age'" in message
    assert "columns found: image, mask, case_id, sex" in message


@pytest.mark.parametrize(
    "row, expected",
    [
        ("images/zzz.png,images/a_mask.png,1,F,40", ["line 2", "'image'", "zzz.png", "not found"]),
        ("images/a.png,images/zzz_mask.png,1,F,40", ["line 2", "'mask'", "zzz_mask.png", "not found"]),
        ("images/a.png,images/a_mask.png,1,X,40", ["line 2", "'sex'", "'X'", "F, M", "unknown"]),
        ("images/a.png,images/a_mask.png,1,F,old", ["line 2", "'age'", "'old'", "number of years"]),
        ("images/a.png,images/a_mask.png,1,F,-3", ["line 2", "'age'", "'-3'"]),
        ("images/a.png,images/a_mask.png,,F,40", ["line 2", "'case_id'", "empty"]),
    ],
)
def test_manifest_invalid_row(cohort_folder, row, expected):
    manifest = _manifest(cohort_folder, [row])

    with pytest.raises(InvalidInputError) as caught:
        read_manifest(manifest)

    message = str(caught.value)
    assert "cohort.csv" in message
    for fragment in expected:
        assert fragment in message


def test_manifest_empty_cohort(cohort_folder):
    with pytest.raises(InvalidInputError, match="cohort is empty"):
        read_manifest(_manifest(cohort_folder, []))
    (cohort_folder / "blank.csv").write_text("", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="cohort is empty"):
        read_manifest(cohort_folder / "blank.csv")


def test_manifest_duplicate_image(cohort_folder):
    manifest = _manifest(
        cohort_folder,
        ["images/a.png,images/a_mask.png,1,F,40", "images/b.png,,2,M,41", "./images/a.png,,3,M,42"],
    )

    with pytest.raises(InvalidInputError) as caught:
        read_manifest(manifest)

    message = str(caught.value)
    assert "line 4" in message
    assert "line 2" in message
    assert "a.png" in message


def test_write_manifest_rejects_empty(tmp_path):
    with pytest.raises(InvalidInputError, match="no images"):
        write_manifest(tmp_path / "cohort.csv", [])
    assert not (tmp_path / "cohort.csv").exists()


# --- validating image files ------------------------------------------------------


def test_validate_images_accepts_good_cohort(cohort_folder):
    manifest = _manifest(cohort_folder, ["images/a.png,images/a_mask.png,1,F,40", "images/b.png,,2,M,41"])
    validate_images(read_manifest(manifest))


def test_validate_images_rejects_bad_masks(cohort_folder):
    images = cohort_folder / "images"
    _write_pair(images, "wide", size=(24, 40))
    labels = np.zeros((24, 32), np.uint8)
    labels[:5, :5] = 3
    Image.fromarray(labels).save(images / "labels.png")
    wrong_size = CohortRecord(images / "a.png", images / "wide_mask.png", "1", "F", 40.0, None)
    not_binary = CohortRecord(images / "a.png", images / "labels.png", "1", "F", 40.0, None)

    with pytest.raises(InvalidInputError, match="wide_mask.png.*40 x 24.*32 x 24"):
        validate_images([wrong_size])
    with pytest.raises(InvalidInputError, match="labels.png is not binary"):
        validate_images([not_binary])


# --- attribute groups -------------------------------------------------------------


def test_group_names_and_membership():
    young, old, unknown = _records([("y", "F", 49.9, 1), ("o", "M", 50.0, 1), ("u", None, None, 1)])

    assert group_names("sex") == ["female", "male"]
    assert group_names("age") == ["<50", ">=50"]
    assert group_names("age", age_threshold=62.5) == ["<62.5", ">=62.5"]
    assert [group_of(record, "sex") for record in (young, old, unknown)] == ["female", "male", None]
    assert [group_of(record, "age") for record in (young, old, unknown)] == ["<50", ">=50", None]
    assert group_of(old, "age", age_threshold=60) == "<60"


def test_group_counts_include_unknown():
    records = _records([("a", "F", 30.0, 2), ("b", None, 70.0, 1), ("c", "F", None, 3)])

    assert group_counts(records, "sex") == {"female": 5, "male": 0, "unknown": 1}
    assert group_counts(records, "age") == {"<50": 2, ">=50": 1, "unknown": 3}


def test_invalid_attribute_rejected():
    record = _records([("a", "F", 30.0, 1)])[0]
    with pytest.raises(ValueError, match="'sex' or 'age'"):
        group_of(record, "race")
    with pytest.raises(ValueError, match="'sex' or 'age'"):
        split_by_case([record], "height")


# --- splits -------------------------------------------------------------------


def test_split_keeps_cases_together_and_covers_all():
    records = _mixed_cohort()

    train, test = split_by_case(records, "sex")

    train_cases = {record.case_id for record in train}
    test_cases = {record.case_id for record in test}
    assert train_cases.isdisjoint(test_cases)
    assert sorted(record.image for record in train + test) == sorted(record.image for record in records)


@pytest.mark.parametrize("attribute", ["sex", "age"])
def test_split_is_stratified(attribute):
    records = _mixed_cohort()
    train, test = split_by_case(records, attribute, test_fraction=0.3)

    for side in (train, test):
        counts = group_counts(side, attribute)
        for name in group_names(attribute):
            assert counts[name] > 0, f"{name} missing from a side: {counts}"

    for name in group_names(attribute) + ["unknown"]:
        cases = {r.case_id for r in records if (group_of(r, attribute) or "unknown") == name}
        test_cases = {r.case_id for r in test if (group_of(r, attribute) or "unknown") == name}
        assert len(test_cases) == int(np.floor(len(cases) * 0.3 + 0.5))


def test_split_is_seeded():
    records = _mixed_cohort()

    first = _split_ids(split_by_case(records, "sex", seed=3))
    again = _split_ids(split_by_case(records, "sex", seed=3))
    other = _split_ids(split_by_case(records, "sex", seed=4))

    assert first == again
    assert set(first[1]) != set(other[1])


def test_split_ignores_row_order():
    records = _mixed_cohort()
    shuffled = list(records)
    random.Random(11).shuffle(shuffled)

    assert _split_ids(split_by_case(records, "age", seed=7)) == _split_ids(split_by_case(shuffled, "age", seed=7))


def test_split_small_stratum_both_sides():
    records = _records([("f1", "F", 40.0, 2), ("f2", "F", 41.0, 1), ("m1", "M", 42.0, 1), ("m2", "M", 43.0, 3)])

    for seed in range(5):
        train, test = split_by_case(records, "sex", test_fraction=0.1, seed=seed)
        assert group_counts(train, "sex")["female"] > 0
        assert group_counts(test, "sex")["female"] > 0
        assert group_counts(train, "sex")["male"] > 0
        assert group_counts(test, "sex")["male"] > 0


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(InvalidInputError, match="test fraction"):
        split_by_case(_mixed_cohort(), "sex", test_fraction=fraction)


# --- group requirements ---------------------------------------------------------------


def test_require_groups_with_one_group():
    records = _records([("a", "F", 30.0, 2), ("b", "F", 35.0, 1), ("c", None, 40.0, 1)])

    with pytest.raises(InvalidInputError) as caught:
        require_groups(records, "sex")
    message = str(caught.value)
    assert "training split" in message
    assert "female: 3, male: 0, unknown: 1" in message
    assert "attribute age" in message

    with pytest.raises(InvalidInputError, match="age threshold"):
        require_groups(records, "age", where="test split")


def test_require_groups_with_two_groups():
    records = _records([("a", "F", 30.0, 2), ("b", "M", 65.0, 1)])

    assert require_groups(records, "sex") == {"female": 2, "male": 1, "unknown": 0}
    assert require_groups(records, "age", age_threshold=40) == {"<40": 2, ">=40": 1, "unknown": 0}
