"""Tests of ApplePerturbLib.ddti on a real DDTI subset and on crafted case folders."""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ApplePerturbLib.cohort import read_manifest
from ApplePerturbLib.ddti import format_report, import_ddti
from ApplePerturbLib.errors import InvalidInputError

# Real cases with quirks. Image 106_1 shows two views with one region each.
# The mark of 62_3 has an empty region list. Case 142 has a mark for 142_2.jpg,
# which is not in the folder. Image 294_1 has three regions. Case 101 is male
# and case 111 has sex 'u'.
REAL_CASES = (1, 10, 62, 100, 101, 106, 111, 142, 294, 359)

IMAGE_WIDTH, IMAGE_HEIGHT = 64, 48


@pytest.fixture(scope="module")
def ddti_dir() -> Path:
    value = os.environ.get("APPLE_DDTI_DIR")
    if not value:
        pytest.skip("APPLE_DDTI_DIR is not set; point it at the DDTI folder (N.xml and N_k.jpg files) to run this test.")
    return Path(value)


# --- helpers for crafted folders ---------------------------------------------------


def _write_jpg(folder: Path, name: str, width=IMAGE_WIDTH, height=IMAGE_HEIGHT) -> Path:
    path = folder / name
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(path)
    return path


def _svg_json(regions: list[list[tuple[int, int]]]) -> str:
    return json.dumps(
        [
            {"points": [{"x": x, "y": y} for x, y in region], "annotation": {}, "regionType": "freehand"}
            for region in regions
        ]
    )


def _wrap(text: str, width: int) -> str:
    """Wrap at a fixed width with indented continuation lines, like the DDTI files (here also inside tokens)."""
    return "\n            ".join(text[start : start + width] for start in range(0, len(text), width))


def _mark(index, regions=None, svg_text=None) -> str:
    if svg_text is None:
        svg_text = _wrap(_svg_json(regions), 70)
    return f"    <mark>\n        <image>{index}</image>\n        <svg>{svg_text}\n        </svg>\n    </mark>\n"


def _write_case(folder: Path, number: int, marks=(), sex="F", age="45") -> Path:
    """Write N.xml without an XML declaration, pretty-printed like the DDTI files."""
    path = folder / f"{number}.xml"
    path.write_text(
        f"<case>\n    <number>{number}</number>\n    <age>{age}</age>\n    <sex>{sex}</sex>\n"
        f"    <composition></composition>\n{''.join(marks)}</case>\n",
        encoding="utf-8",
    )
    return path


def _square(x0, y0, side=8) -> list[tuple[int, int]]:
    return [(x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side)]


def _reasons(report) -> dict[str, str]:
    return dict(report.images_without_mask)


def _mask(out: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(out / "masks" / name)) > 0


# --- real DDTI subset ------------------------------------------------------------


def _expected_from_xml(source: Path):
    """Count, from the XML files directly, the images that must be imported and their groups."""
    images, region_counts = {}, {}
    for number in REAL_CASES:
        root = ElementTree.parse(source / f"{number}.xml").getroot()
        sex = {"F": "female", "M": "male"}.get((root.findtext("sex") or "").strip(), "unknown")
        age_text = (root.findtext("age") or "").strip()
        if not age_text:
            age = "unknown"
        elif int(age_text) < 50:
            age = "<50"
        else:
            age = ">=50"
        for mark in root.findall("mark"):
            svg = (mark.findtext("svg") or "").strip()
            name = f"{number}_{mark.findtext('image').strip()}.jpg"
            if svg and (source / name).exists() and json.loads(svg):
                images[name] = (str(number), sex, age)
                region_counts[name] = region_counts.get(name, 0) + len(json.loads(svg))
    return images, region_counts


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def test_real_subset_import(ddti_dir, tmp_path):
    source = tmp_path / "ddti"
    source.mkdir()
    for number in REAL_CASES:
        shutil.copy(ddti_dir / f"{number}.xml", source)
        for image in ddti_dir.glob(f"{number}_*.jpg"):
            shutil.copy(image, source)
    expected, region_counts = _expected_from_xml(source)
    out = tmp_path / "cohort"

    report = import_ddti(source, out)

    records = read_manifest(out / "manifest.csv")
    assert sorted(record.image.name for record in records) == sorted(expected)
    assert report.images_written == len(expected)
    assert report.cases_read == len(REAL_CASES)
    for record in records:
        case_id, _, _ = expected[record.image.name]
        assert record.case_id == case_id
        assert record.image.read_bytes() == (source / record.image.name).read_bytes()
        with Image.open(record.image) as picture:
            width, height = picture.size
        stored_mask = np.asarray(Image.open(record.mask))
        assert stored_mask.shape == (height, width)
        assert set(np.unique(stored_mask).tolist()) <= {0, 255}
        assert stored_mask.any()

    labels, components = ndimage.label(_mask(out, "106_1.png"))
    assert components == 2
    assert report.images_with_two_regions == sum(1 for count in region_counts.values() if count == 2)
    assert report.images_with_three_or_more_regions == sum(1 for count in region_counts.values() if count >= 3)

    reasons = _reasons(report)
    assert "empty region list" in reasons["62_3.jpg"]
    assert "missing" in reasons["142_2.jpg"]

    sexes = [sex for _, sex, _ in expected.values()]
    ages = [age for _, _, age in expected.values()]
    assert report.image_groups["sex"] == {"female": 0, "male": 0, "unknown": 0, **_count(sexes)}
    assert report.image_groups["age"] == {"<50": 0, ">=50": 0, "unknown": 0, **_count(ages)}
    cases = {case_id: (sex, age) for case_id, sex, age in expected.values()}
    assert report.case_groups["sex"] == {"female": 0, "male": 0, "unknown": 0, **_count(s for s, _ in cases.values())}
    assert report.case_groups["age"] == {"<50": 0, ">=50": 0, "unknown": 0, **_count(a for _, a in cases.values())}


# --- crafted folders, one quirk each ---------------------------------------------------


def test_json_wrapped_inside_numbers(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    rectangle = [(10, 10), (20, 10), (20, 15), (10, 15)]
    svg_text = _wrap(_svg_json([rectangle]), 20)
    lines = svg_text.splitlines()
    assert any(a.rstrip()[-1:].isdigit() and b.strip()[:1].isdigit() for a, b in zip(lines, lines[1:]))
    _write_case(source, 1, [_mark(1, svg_text=svg_text)])
    _write_jpg(source, "1_1.jpg")

    import_ddti(source, out)

    expected = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), bool)
    expected[10:16, 10:21] = True
    np.testing.assert_array_equal(_mask(out, "1_1.png"), expected)


def test_xml_declaration_optional(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    _write_case(source, 1, [_mark(1, [_square(5, 5)])])
    with_declaration = _write_case(source, 2, [_mark(1, [_square(5, 5)])])
    with_declaration.write_text('<?xml version="1.0" encoding="utf-8"?>\n' + with_declaration.read_text())
    _write_jpg(source, "1_1.jpg")
    _write_jpg(source, "2_1.jpg")

    report = import_ddti(source, out)

    assert report.images_written == 2
    assert report.unreadable_cases == []


def test_empty_region_lists(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    _write_case(source, 1, [_mark(1, svg_text=""), _mark(2, svg_text="[]"), _mark(3, [_square(5, 5)])])
    for index in (1, 2, 3):
        _write_jpg(source, f"1_{index}.jpg")

    report = import_ddti(source, out)

    reasons = _reasons(report)
    assert "empty region list" in reasons["1_1.jpg"]
    assert "empty region list" in reasons["1_2.jpg"]
    assert [record.image.name for record in read_manifest(out / "manifest.csv")] == ["1_3.jpg"]


def test_case_without_mark_and_image_without_mark(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    _write_case(source, 1, [])
    _write_jpg(source, "1_1.jpg")
    _write_case(source, 2, [_mark(1, [_square(5, 5)])])
    _write_jpg(source, "2_1.jpg")
    _write_jpg(source, "2_2.jpg")
    _write_jpg(source, "3_1.jpg")

    report = import_ddti(source, out)

    reasons = _reasons(report)
    assert "no mark" in reasons["1_1.jpg"]
    assert "no mark" in reasons["2_2.jpg"]
    assert "no case file 3.xml" in reasons["3_1.jpg"]
    assert report.images_written == 1


def test_mark_for_missing_image(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    _write_case(source, 1, [_mark(1, [_square(5, 5)]), _mark(2, [_square(5, 5)])])
    _write_jpg(source, "1_1.jpg")

    report = import_ddti(source, out)

    assert "missing" in _reasons(report)["1_2.jpg"]
    assert not (out / "masks" / "1_2.png").exists()
    assert report.images_written == 1


def test_three_regions_and_marks_unioned(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    three = [_square(2, 2), _square(20, 2), _square(40, 20)]
    _write_case(source, 1, [_mark(1, three), _mark(2, [_square(2, 2)]), _mark(2, [_square(30, 30)])])
    _write_jpg(source, "1_1.jpg")
    _write_jpg(source, "1_2.jpg")

    report = import_ddti(source, out)

    assert ndimage.label(_mask(out, "1_1.png"))[1] == 3
    assert ndimage.label(_mask(out, "1_2.png"))[1] == 2
    assert report.images_with_three_or_more_regions == 1
    assert report.images_with_two_regions == 1


def test_unknown_sex_and_age(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    for number, sex, age in ((1, "u", "30"), (2, "", ""), (3, "M", "71"), (4, "F", "")):
        _write_case(source, number, [_mark(1, [_square(5, 5)])], sex=sex, age=age)
        _write_jpg(source, f"{number}_1.jpg")

    report = import_ddti(source, out)

    records = {record.case_id: record for record in read_manifest(out / "manifest.csv")}
    assert [(records[c].sex, records[c].age) for c in "1234"] == [(None, 30.0), (None, None), ("M", 71.0), ("F", None)]
    assert report.image_groups["sex"] == {"female": 1, "male": 1, "unknown": 2}
    assert report.case_groups["age"] == {"<50": 1, ">=50": 1, "unknown": 2}


def test_invalid_xml_and_json_skipped(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    (source / "1.xml").write_text("<case>\n    <number>1</number>\n    <age>40", encoding="utf-8")
    _write_jpg(source, "1_1.jpg")
    _write_case(source, 2, [_mark(1, svg_text='[{"points": [{"x": 1,'), _mark(2, [_square(5, 5)])])
    _write_jpg(source, "2_1.jpg")
    _write_jpg(source, "2_2.jpg")
    _write_case(source, 3, [_mark(1, [_square(5, 5)])])
    _write_jpg(source, "3_1.jpg")

    report = import_ddti(source, out)

    assert [name for name, _ in report.unreadable_cases] == ["1.xml"]
    assert "invalid XML" in report.unreadable_cases[0][1]
    reasons = _reasons(report)
    assert "unreadable" in reasons["1_1.jpg"]
    assert "invalid JSON" in reasons["2_1.jpg"]
    assert sorted(record.image.name for record in read_manifest(out / "manifest.csv")) == ["2_2.jpg", "3_1.jpg"]


def test_points_outside_image_clipped(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    beyond = [(50, 40), (IMAGE_WIDTH + 30, 40), (IMAGE_WIDTH + 30, IMAGE_HEIGHT + 9), (50, IMAGE_HEIGHT + 9)]
    _write_case(source, 1, [_mark(1, [beyond])])
    _write_jpg(source, "1_1.jpg")

    report = import_ddti(source, out)

    mask = _mask(out, "1_1.png")
    assert report.points_clipped == 3
    assert report.images_with_clipped_points == 1
    assert mask[IMAGE_HEIGHT - 1, IMAGE_WIDTH - 1]
    assert mask[40:, 50:].all()
    assert mask.sum() == (IMAGE_HEIGHT - 40) * (IMAGE_WIDTH - 50)


def test_region_with_two_points_dropped(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    _write_case(source, 1, [_mark(1, [[(3, 3), (9, 9)]]), _mark(2, [[(3, 3), (9, 9)], _square(20, 20)])])
    _write_jpg(source, "1_1.jpg")
    _write_jpg(source, "1_2.jpg")

    report = import_ddti(source, out)

    assert "fewer than 3 points" in _reasons(report)["1_1.jpg"]
    assert report.regions_dropped == 2
    assert ndimage.label(_mask(out, "1_2.png"))[1] == 1


def test_rerun_overwrites_cleanly(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    _write_case(source, 1, [_mark(1, [_square(5, 5)]), _mark(2, [_square(30, 20)])])
    _write_jpg(source, "1_1.jpg")
    _write_jpg(source, "1_2.jpg")
    import_ddti(source, out)
    (out / "masks" / ".1_1.tmp-0123abcd.png").write_bytes(b"left by a killed run")
    (out / "notes.txt").write_text("user file")

    _write_case(source, 1, [_mark(1, [_square(10, 10)])])
    report = import_ddti(source, out)

    assert sorted(path.name for path in (out / "images").iterdir()) == ["1_1.jpg"]
    assert sorted(path.name for path in (out / "masks").iterdir()) == ["1_1.png"]
    assert _mask(out, "1_1.png")[12, 12]
    assert not _mask(out, "1_1.png")[6, 6]
    assert [record.image.name for record in read_manifest(out / "manifest.csv")] == ["1_1.jpg"]
    assert (out / "notes.txt").read_text() == "user file"
    assert report.images_written == 1


def test_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        import_ddti(tmp_path / "nowhere", tmp_path / "out")

    empty = tmp_path / "empty"
    empty.mkdir()
    _write_jpg(empty, "1_1.jpg")
    with pytest.raises(InvalidInputError, match="no DDTI case file"):
        import_ddti(empty, tmp_path / "out")

    nested = tmp_path / "data" / "images"
    nested.mkdir(parents=True)
    _write_case(nested, 1, [_mark(1, [_square(5, 5)])])
    _write_jpg(nested, "1_1.jpg")
    with pytest.raises(InvalidInputError, match="into the DDTI folder"):
        import_ddti(nested, tmp_path / "data")
    assert sorted(path.name for path in nested.iterdir()) == ["1.xml", "1_1.jpg"]


def test_format_report_summary(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    _write_case(source, 1, [_mark(1, [_square(5, 5), _square(30, 5)]), _mark(2, svg_text="")], sex="M", age="60")
    _write_jpg(source, "1_1.jpg")
    _write_jpg(source, "1_2.jpg")

    text = format_report(import_ddti(source, out))

    assert "case files: 1, read: 1" in text
    assert "images written with a mask: 1" in text
    assert "images with 2 regions: 1" in text
    assert "sex: female 0 (0), male 1 (1), unknown 0 (0)" in text
    assert "1_2.jpg: mark has an empty region list" in text
    assert str(out / "manifest.csv") in text
