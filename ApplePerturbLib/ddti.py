"""Import of the DDTI thyroid ultrasound database into a cohort manifest.

DDTI: Pedraza L., Vargas C., Narvaez F., Duran O., Munoz E., Romero E.,
"An open access thyroid ultrasound image database", Proc. SPIE 9287, 92870W,
2015. Its distribution is one folder with a ``N.xml`` file per case (patient)
and images ``N_k.jpg``. A case file contains ``<age>``, ``<sex>`` and one
``<mark>`` per annotated image: ``<image>`` is the index k and the text of
``<svg>`` is a JSON list of regions, each ``{"points": [{"x": .., "y": ..},
...], "regionType": "freehand"}`` in pixel coordinates of ``N_k.jpg`` (x the
column, y the row, origin at the top-left pixel).

The importer writes ``OUT/images/N_k.jpg`` (a byte copy), ``OUT/masks/N_k.png``
(the union of all regions of all marks of the image, filled, 0/255) and
``OUT/manifest.csv`` with case_id ``N``. Quirks of the real files that it
handles: sex is ``F``, ``M``, ``u`` or empty; age is an integer or empty;
there is no XML declaration and the JSON inside ``<svg>`` is wrapped across
lines; a mark may have an empty ``<svg>``; a mark may refer to a missing
image; an image may have 2 regions (two views of the same nodule side by
side) or more.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ApplePerturbLib.cohort import ATTRIBUTES, CohortRecord, group_counts, write_manifest
from ApplePerturbLib.errors import InvalidInputError
from ApplePerturbLib.imageio import atomic_output, read_image, write_mask

logger = logging.getLogger(__name__)

AGE_THRESHOLD = 50.0
_CASE_FILE = re.compile(r"^(\d+)\.xml$")
_IMAGE_FILE = re.compile(r"^(\d+)_(\d+)\.jpg$")
_MASK_FILE = re.compile(r"^(\d+)_(\d+)\.png$")
_LEFTOVER_TEMP_FILE = re.compile(r"^\.\d+_\d+\.tmp-[0-9a-f]{8}\.(jpg|png)$")

Region = list[tuple[float, float]]


@dataclass
class DdtiImportReport:
    """Summary of one DDTI import. Lists hold (file name, reason) pairs.

    Group counts map an attribute ("sex", "age") to {group: count} with an
    "unknown" entry; age groups use a 50-year threshold. ``case_groups``
    counts the cases that have at least one image in the manifest.
    """

    source: Path
    output: Path
    manifest: Path | None = None
    case_files: int = 0
    cases_read: int = 0
    cases_in_manifest: int = 0
    image_files: int = 0
    images_written: int = 0
    unreadable_cases: list[tuple[str, str]] = field(default_factory=list)
    images_without_mask: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images_with_two_regions: int = 0
    images_with_three_or_more_regions: int = 0
    regions_dropped: int = 0
    points_clipped: int = 0
    images_with_clipped_points: int = 0
    image_groups: dict[str, dict[str, int]] = field(default_factory=dict)
    case_groups: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class _Case:
    """One parsed case file: regions and unusable marks per image index k."""

    number: int
    sex: str | None
    age: float | None
    regions: dict[int, list[Region]] = field(default_factory=dict)
    invalid_marks: dict[int, str] = field(default_factory=dict)


def import_ddti(src: str | os.PathLike, out: str | os.PathLike) -> DdtiImportReport:
    """Import the DDTI folder ``src`` into images, masks and a manifest under ``out``.

    A case file that is not valid XML, or a mark whose JSON is invalid, is
    reported and skipped. Images without a usable mask are left out of the
    manifest and listed in the report with the reason. Region points outside
    the image are clipped to its border and counted. Every file is written
    atomically, and files of an earlier import into ``out`` that this import
    did not write are removed, so a rerun leaves a clean folder.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        InvalidInputError: ``src`` contains no ``N.xml`` case file, ``out``
            would overwrite ``src``, or no image has a usable mask.
    """
    source, output = Path(src), Path(out)
    case_files = _find_case_files(source)
    _check_output_folder(source, output)
    report = DdtiImportReport(source=source, output=output, case_files=len(case_files))
    images_by_case = _index_images(source)
    report.image_files = sum(len(images) for images in images_by_case.values())
    logger.info("Importing %d DDTI case files from %s into %s.", len(case_files), source, output)

    records: list[CohortRecord] = []
    for number, case_file in case_files:
        images = images_by_case.pop(number, {})
        case = _read_case(case_file, number, report)
        if case is None:
            for index in sorted(images):
                report.images_without_mask.append((images[index].name, f"case file {case_file.name} unreadable"))
            continue
        report.cases_read += 1
        for index in sorted(set(case.regions) | set(case.invalid_marks) | set(images)):
            record = _import_image(case, index, images.get(index), output, report)
            if record is not None:
                records.append(record)

    for number in sorted(images_by_case):
        for index in sorted(images_by_case[number]):
            report.images_without_mask.append((f"{number}_{index}.jpg", f"no case file {number}.xml"))

    if not records:
        raise InvalidInputError(
            f"no image in {source} has a usable mask ({len(report.images_without_mask)} images without mask); "
            "check that the folder is the DDTI distribution with its N.xml and N_k.jpg files."
        )
    report.manifest = output / "manifest.csv"
    write_manifest(report.manifest, records)
    _remove_stale_outputs(output, {record.image.name for record in records})
    _count_groups(records, report)
    logger.info("Imported %d images of %d cases into %s.", report.images_written, report.cases_in_manifest, output)
    return report


def format_report(report: DdtiImportReport) -> str:
    """Format an import report as readable text, one fact a line."""
    lines = [
        f"DDTI import from {report.source} into {report.output}",
        f"  case files: {report.case_files}, read: {report.cases_read}, unreadable: {len(report.unreadable_cases)}",
        f"  image files: {report.image_files}, images written with a mask: {report.images_written} "
        f"(cases: {report.cases_in_manifest})",
        f"  images with 2 regions: {report.images_with_two_regions}, "
        f"with 3 or more: {report.images_with_three_or_more_regions}",
        f"  regions with fewer than 3 points dropped: {report.regions_dropped}",
        f"  points outside the image clipped: {report.points_clipped} "
        f"(in {report.images_with_clipped_points} images)",
        "  groups: images (cases)",
    ]
    for attribute in ATTRIBUTES:
        label = f"age, threshold {AGE_THRESHOLD:g}" if attribute == "age" else attribute
        counts = ", ".join(
            f"{group} {count} ({report.case_groups.get(attribute, {}).get(group, 0)})"
            for group, count in report.image_groups.get(attribute, {}).items()
        )
        lines.append(f"    {label}: {counts}")

    sections = (
        ("unreadable case files", [f"{name}: {reason}" for name, reason in report.unreadable_cases]),
        ("images without mask", [f"{name}: {reason}" for name, reason in report.images_without_mask]),
        ("notes", report.notes),
    )
    for title, entries in sections:
        if entries:
            lines.append(f"  {title} ({len(entries)}):")
            lines.extend(f"    {entry}" for entry in entries)
    if report.manifest is not None:
        lines.append(f"  manifest: {report.manifest}")
    return "\n".join(lines)


def _find_case_files(source: Path) -> list[tuple[int, Path]]:
    """Return (case number, path) of every ``N.xml`` in ``source``, sorted by case number."""
    if not source.exists():
        raise FileNotFoundError(f"DDTI folder {source} not found; check the path.")
    if not source.is_dir():
        raise InvalidInputError(f"{source} is not a folder; give the DDTI folder that contains N.xml and N_k.jpg files.")

    case_files = []
    for path in source.iterdir():
        match = _CASE_FILE.match(path.name)
        if match and path.is_file():
            case_files.append((int(match.group(1)), path))
    if not case_files:
        raise InvalidInputError(
            f"no DDTI case file (N.xml, e.g. 1.xml) found in {source}; "
            "give the DDTI folder that contains the N.xml and N_k.jpg files."
        )
    return sorted(case_files)


def _check_output_folder(source: Path, output: Path) -> None:
    for subfolder in ("images", "masks"):
        if (output / subfolder).resolve() == source.resolve():
            raise InvalidInputError(
                f"output folder {output} would write into the DDTI folder {source} itself; choose another output folder."
            )


def _index_images(source: Path) -> dict[int, dict[int, Path]]:
    """Map case number N to {image index k: path of N_k.jpg}."""
    images: dict[int, dict[int, Path]] = {}
    for path in source.iterdir():
        match = _IMAGE_FILE.match(path.name)
        if match and path.is_file():
            images.setdefault(int(match.group(1)), {})[int(match.group(2))] = path
    return images


def _read_case(case_file: Path, number: int, report: DdtiImportReport) -> _Case | None:
    """Parse one case file; on invalid XML, report it and return None."""
    try:
        root = ElementTree.parse(case_file).getroot()
    except (ElementTree.ParseError, OSError) as error:
        report.unreadable_cases.append((case_file.name, f"invalid XML: {error}"))
        logger.warning("Skipping DDTI case file %s: invalid XML: %s", case_file.name, error)
        return None

    stated_number = (root.findtext("number") or "").strip()
    if stated_number and stated_number != str(number):
        report.notes.append(f"{case_file.name}: <number> is {stated_number!r}; the file name's number {number} is used")
    case = _Case(
        number=number,
        sex=_parse_sex(root.findtext("sex"), case_file, report),
        age=_parse_age(root.findtext("age"), case_file, report),
    )

    for mark in root.findall("mark"):
        index_text = (mark.findtext("image") or "").strip()
        if not index_text.isdigit():
            report.notes.append(f"{case_file.name}: mark with invalid image index {index_text!r} skipped")
            continue
        index = int(index_text)
        try:
            regions = _parse_regions(mark.findtext("svg"))
        except ValueError as error:
            case.invalid_marks[index] = f"invalid region data in {case_file.name}: {error}"
            continue
        case.regions.setdefault(index, []).extend(regions)
    return case


def _parse_sex(text: str | None, case_file: Path, report: DdtiImportReport) -> str | None:
    value = (text or "").strip()
    if value.upper() in ("F", "M"):
        return value.upper()
    if value.lower() not in ("", "u"):
        report.notes.append(f"{case_file.name}: sex {value!r} not recognised, treated as unknown")
    return None


def _parse_age(text: str | None, case_file: Path, report: DdtiImportReport) -> float | None:
    value = (text or "").strip()
    if not value:
        return None
    try:
        age = float(value)
    except ValueError:
        age = math.nan
    if not (math.isfinite(age) and 0 <= age <= 150):
        report.notes.append(f"{case_file.name}: age {value!r} not a number of years, treated as unknown")
        return None
    return age


def _parse_regions(svg_text: str | None) -> list[Region]:
    """Parse the JSON region list of a ``<svg>`` element; empty text gives [].

    The files wrap the JSON at a fixed width with indented continuation
    lines. JSON needs no whitespace between tokens, so the lines are stripped
    and joined without a separator, which also mends a number split across
    two lines.

    Raises:
        ValueError: the text is not JSON or not a list of regions with numeric points.
    """
    text = "".join(line.strip() for line in (svg_text or "").splitlines())
    if not text:
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON ({error})") from error
    if not isinstance(data, list):
        raise ValueError(f"expected a JSON list of regions, got {type(data).__name__}")

    regions = []
    for number, region in enumerate(data, start=1):
        points = region.get("points") if isinstance(region, dict) else None
        if not isinstance(points, list):
            raise ValueError(f"region {number} has no list of points")
        regions.append([_parse_point(point, number) for point in points])
    return regions


def _parse_point(point: object, region_number: int) -> tuple[float, float]:
    if isinstance(point, dict):
        x, y = point.get("x"), point.get("y")
        if all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in (x, y)):
            if math.isfinite(x) and math.isfinite(y):
                return (float(x), float(y))
    raise ValueError(f"region {region_number} has a point without finite numeric x and y: {point!r}")


def _import_image(
    case: _Case, index: int, image_path: Path | None, output: Path, report: DdtiImportReport
) -> CohortRecord | None:
    """Rasterise and write one image's mask and copy the image; return its record or None when unusable."""
    name = f"{case.number}_{index}.jpg"
    if index in case.invalid_marks:
        return _without_mask(report, name, case.invalid_marks[index])
    if index not in case.regions:
        return _without_mask(report, name, f"no mark for this image in {case.number}.xml")
    if image_path is None:
        return _without_mask(report, name, f"{case.number}.xml has a mark for this image but the file is missing")
    if not case.regions[index]:
        return _without_mask(report, name, "mark has an empty region list")

    regions = [region for region in case.regions[index] if len(region) >= 3]
    dropped = len(case.regions[index]) - len(regions)
    report.regions_dropped += dropped
    if not regions:
        return _without_mask(report, name, "every region has fewer than 3 points")
    if dropped:
        report.notes.append(f"{name}: {dropped} region(s) with fewer than 3 points dropped")

    try:
        height, width = read_image(image_path).shape[:2]
    except (InvalidInputError, OSError) as error:
        return _without_mask(report, name, f"image file unreadable: {error}")
    mask, clipped = _rasterise(regions, width, height)
    if not mask.any():
        return _without_mask(report, name, "regions cover no pixel")

    image_copy = output / "images" / name
    mask_path = output / "masks" / f"{case.number}_{index}.png"
    with atomic_output(image_copy) as temp_path:
        shutil.copyfile(image_path, temp_path)
    write_mask(mask_path, mask)

    report.images_written += 1
    report.points_clipped += clipped
    report.images_with_clipped_points += 1 if clipped else 0
    if len(regions) == 2:
        report.images_with_two_regions += 1
    elif len(regions) >= 3:
        report.images_with_three_or_more_regions += 1
    return CohortRecord(
        image=image_copy.resolve(),
        mask=mask_path.resolve(),
        case_id=str(case.number),
        sex=case.sex,
        age=case.age,
        spacing=None,
    )


def _without_mask(report: DdtiImportReport, name: str, reason: str) -> None:
    report.images_without_mask.append((name, reason))
    return None


def _rasterise(regions: list[Region], width: int, height: int) -> tuple[np.ndarray, int]:
    """Fill every polygon into one HxW bool mask; return it and the number of clipped points.

    Points outside the image are moved to the nearest border pixel first.
    The polygon outline is drawn too, so a thin region still covers pixels.
    """
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    clipped = 0
    for region in regions:
        polygon = []
        for x, y in region:
            clipped_x, clipped_y = min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)
            clipped += (clipped_x, clipped_y) != (x, y)
            polygon.append((clipped_x, clipped_y))
        draw.polygon(polygon, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool), clipped


def _remove_stale_outputs(output: Path, written_images: set[str]) -> None:
    """Remove images, masks and leftover temporary files of an earlier import that this one did not write."""
    written_masks = {Path(name).with_suffix(".png").name for name in written_images}
    removed = 0
    for subfolder, pattern, written in (("images", _IMAGE_FILE, written_images), ("masks", _MASK_FILE, written_masks)):
        for path in (output / subfolder).iterdir():
            stale = pattern.match(path.name) and path.name not in written
            if (stale or _LEFTOVER_TEMP_FILE.match(path.name)) and path.is_file():
                path.unlink()
                removed += 1
    if removed:
        logger.info("Removed %d files of an earlier import from %s.", removed, output)


def _count_groups(records: list[CohortRecord], report: DdtiImportReport) -> None:
    first_of_case: dict[str, CohortRecord] = {}
    for record in records:
        first_of_case.setdefault(record.case_id, record)
    report.cases_in_manifest = len(first_of_case)
    for attribute in ATTRIBUTES:
        report.image_groups[attribute] = group_counts(records, attribute, AGE_THRESHOLD)
        report.case_groups[attribute] = group_counts(first_of_case.values(), attribute, AGE_THRESHOLD)
