"""Cohort manifests, attribute groups and case-level train/test splits.

A cohort manifest is a UTF-8 CSV file with a header row and one row per
image. Columns:

- ``image``: image file, relative to the manifest's folder or absolute;
- ``mask``: binary ground-truth mask file (same rules), empty when there is none;
- ``case_id``: patient or case identifier; all images of a case stay on the
  same side of a split;
- ``sex``: ``F`` or ``M`` (``female``/``male``, ``f``/``m`` too, any case),
  unknown as empty, ``u``, ``unknown`` or ``NA``;
- ``age``: years, a number, unknown as empty, ``u``, ``unknown`` or ``NA``;
- ``spacing_x``, ``spacing_y`` (optional columns): pixel spacing in mm.

Attribute groups: sex gives "female" and "male"; age gives "<T" (young) and
">=T" (old) for the age threshold T, 50 years by default.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ApplePerturbLib.errors import InvalidInputError
from ApplePerturbLib.imageio import atomic_output, read_image, read_mask

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image", "mask", "case_id", "sex", "age")
SPACING_COLUMNS = ("spacing_x", "spacing_y")
ATTRIBUTES = ("sex", "age")
UNKNOWN_GROUP = "unknown"

_SEX_VALUES = {"f": "F", "female": "F", "m": "M", "male": "M"}
_UNKNOWN_VALUES = {"", "u", "unknown", "na"}
_MAX_AGE_YEARS = 150.0


@dataclass(frozen=True)
class CohortRecord:
    """One image of a cohort.

    ``image`` and ``mask`` are absolute paths, and ``mask`` is None when the
    image has no ground truth. ``sex`` is "F", "M" or None, ``age`` is in
    years or None, and ``spacing`` is the pixel spacing (x, y) in mm or None.
    """

    image: Path
    mask: Path | None
    case_id: str
    sex: str | None
    age: float | None
    spacing: tuple[float, float] | None


def read_manifest(path: str | os.PathLike) -> list[CohortRecord]:
    """Read a cohort manifest CSV into records, checking every value and that every file exists.

    Image and mask files are only checked for existence here; call
    ``validate_images`` to read them.

    Raises:
        FileNotFoundError: the manifest does not exist.
        InvalidInputError: a required column is missing, a value is invalid
            (the message names the line, column and value), an image or mask
            file does not exist, an image is listed twice, or there are no rows.
    """
    manifest = Path(path)
    if not manifest.is_file():
        raise FileNotFoundError(f"cohort manifest {manifest} not found; check the path.")
    folder = manifest.resolve().parent

    records: list[CohortRecord] = []
    first_line_of_image: dict[Path, int] = {}
    with open(manifest, newline="", encoding="utf-8-sig") as stream:
        reader = csv.reader(stream)
        columns = _read_header(reader, manifest)
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            line = reader.line_num
            row = _row_as_dict(cells, columns, manifest, line)
            record = _parse_row(row, folder, manifest, line)

            if record.image in first_line_of_image:
                raise InvalidInputError(
                    f"{manifest}, line {line}: image {record.image} is already listed on line "
                    f"{first_line_of_image[record.image]}; list each image once."
                )
            first_line_of_image[record.image] = line
            records.append(record)

    if not records:
        raise InvalidInputError(f"cohort is empty: manifest {manifest} has a header but no image rows.")
    _warn_on_inconsistent_cases(records, manifest)
    return records


def validate_images(records: Iterable[CohortRecord]) -> None:
    """Read every image and mask and check that each mask is binary and of its image's size.

    Raises on the first problem; the message names the file.

    Raises:
        FileNotFoundError: an image or mask file is missing.
        InvalidInputError: a file is unreadable or truncated, a mask is not
            binary or not of its image's size.
    """
    for record in records:
        image = read_image(record.image)
        if record.mask is not None:
            read_mask(record.mask, expected_shape=image.shape[:2])


def write_manifest(path: str | os.PathLike, records: Sequence[CohortRecord]) -> None:
    """Write records to a manifest CSV atomically, with paths relative to the manifest's folder.

    A path that cannot be made relative (another drive on Windows) is written
    absolute. Spacing columns are always written, empty where unknown.

    Raises:
        InvalidInputError: ``records`` is empty.
    """
    manifest = Path(path)
    if not records:
        raise InvalidInputError(f"cannot write manifest {manifest}: the cohort has no images.")
    folder = manifest.resolve().parent

    with atomic_output(manifest) as temp_path:
        with open(temp_path, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(REQUIRED_COLUMNS + SPACING_COLUMNS)
            for record in records:
                writer.writerow(_record_as_cells(record, folder))


def group_names(attribute: str, age_threshold: float = 50.0) -> list[str]:
    """Return the group names of an attribute: sex -> ["female", "male"], age -> ["<T", ">=T"]."""
    _check_attribute(attribute)
    if attribute == "sex":
        return ["female", "male"]
    threshold = _checked_threshold(age_threshold)
    return [f"<{threshold:g}", f">={threshold:g}"]


def group_of(record: CohortRecord, attribute: str, age_threshold: float = 50.0) -> str | None:
    """Return the record's group name for ``attribute``, or None when the attribute is unknown.

    Age groups: young when age < ``age_threshold`` years, old otherwise.
    """
    names = group_names(attribute, age_threshold)
    if attribute == "sex":
        if record.sex is None:
            return None
        return names[0] if record.sex == "F" else names[1]
    if record.age is None:
        return None
    return names[0] if record.age < age_threshold else names[1]


def group_counts(
    records: Iterable[CohortRecord], attribute: str, age_threshold: float = 50.0
) -> dict[str, int]:
    """Count images per group, with every group name present plus "unknown"."""
    counts = {name: 0 for name in group_names(attribute, age_threshold)}
    counts[UNKNOWN_GROUP] = 0
    for record in records:
        group = group_of(record, attribute, age_threshold)
        counts[group if group is not None else UNKNOWN_GROUP] += 1
    return counts


def split_by_case(
    records: Sequence[CohortRecord],
    attribute: str,
    test_fraction: float = 0.3,
    seed: int = 0,
    age_threshold: float = 50.0,
) -> tuple[list[CohortRecord], list[CohortRecord]]:
    """Split records into (train, test) by case, stratified by the case's group.

    A case's group is the group of its first image in path order; cases of
    unknown group form their own stratum. In each stratum of n cases,
    round(n * test_fraction) cases (halves round up) go to the test side, but
    a stratum of 2 or more cases keeps at least one case on each side. Cases
    are sorted by id and shuffled with ``numpy.random.default_rng(seed)``,
    so the split depends on the records and the seed, not on their order.
    Both lists are sorted by (case_id, image).

    Raises:
        InvalidInputError: ``test_fraction`` is not in (0, 1), ``records`` is
            empty, or the attribute is invalid.
    """
    if not 0.0 < test_fraction < 1.0:
        raise InvalidInputError(
            f"invalid test fraction {test_fraction}: expected a number between 0 and 1 (exclusive), e.g. 0.3."
        )
    if not records:
        raise InvalidInputError("cannot split an empty cohort; the manifest lists no images.")
    strata_order = group_names(attribute, age_threshold) + [UNKNOWN_GROUP]

    cases: dict[str, list[CohortRecord]] = defaultdict(list)
    for record in records:
        cases[record.case_id].append(record)
    for case_records in cases.values():
        case_records.sort(key=lambda record: str(record.image))

    strata: dict[str, list[str]] = {name: [] for name in strata_order}
    for case_id in sorted(cases):
        group = group_of(cases[case_id][0], attribute, age_threshold)
        strata[group if group is not None else UNKNOWN_GROUP].append(case_id)

    rng = np.random.default_rng(seed)
    test_cases: set[str] = set()
    for name in strata_order:
        case_ids = strata[name]
        order = rng.permutation(len(case_ids))
        test_count = _test_case_count(len(case_ids), test_fraction)
        test_cases.update(case_ids[index] for index in order[:test_count])

    ordered = sorted(records, key=lambda record: (record.case_id, str(record.image)))
    train = [record for record in ordered if record.case_id not in test_cases]
    test = [record for record in ordered if record.case_id in test_cases]
    logger.info(
        "Split %d images of %d cases by %s: train %s, test %s.",
        len(ordered), len(cases), attribute,
        group_counts(train, attribute, age_threshold), group_counts(test, attribute, age_threshold),
    )
    return train, test


def require_groups(
    records: Iterable[CohortRecord],
    attribute: str,
    age_threshold: float = 50.0,
    where: str = "training split",
    method: str = "APPLE",
) -> dict[str, int]:
    """Check that images of at least 2 groups of ``attribute`` are present and return the group counts.

    ``method`` names the method that needs the groups in the message (APPLE, FEBS, InD).

    Raises:
        InvalidInputError: fewer than 2 groups have images; the message
            gives the counts and the ways to fix it.
    """
    counts = group_counts(records, attribute, age_threshold)
    present = [name for name in group_names(attribute, age_threshold) if counts[name] > 0]
    if len(present) >= 2:
        return counts

    listed_counts = ", ".join(f"{name}: {count}" for name, count in counts.items())
    if attribute == "age":
        fix = "choose another age threshold (--age-threshold), the attribute sex, or add images of the missing group"
    else:
        fix = "choose the attribute age, or add images of the missing group"
    raise InvalidInputError(
        f"the {where} has images of {len(present)} {attribute} group(s) ({listed_counts}); "
        f"{method} needs images of at least 2 groups: {fix}."
    )


def _read_header(reader: Iterator[list[str]], manifest: Path) -> list[str]:
    header = next(reader, None)
    if header is None:
        raise InvalidInputError(
            f"cohort is empty: manifest {manifest} has no header row; "
            f"expected the columns {', '.join(REQUIRED_COLUMNS)}."
        )
    columns = [name.strip().lower() for name in header]
    duplicated = sorted({name for name in columns if name and columns.count(name) > 1})
    if duplicated:
        raise InvalidInputError(f"manifest {manifest}: column(s) {', '.join(duplicated)} appear more than once.")

    for name in REQUIRED_COLUMNS:
        if name not in columns:
            raise InvalidInputError(
                f"manifest {manifest} has no column '{name}'; columns found: {', '.join(columns)}. "
                f"Required columns: {', '.join(REQUIRED_COLUMNS)}."
            )
    if (SPACING_COLUMNS[0] in columns) != (SPACING_COLUMNS[1] in columns):
        raise InvalidInputError(
            f"manifest {manifest} has only one of the columns {' and '.join(SPACING_COLUMNS)}; give both or neither."
        )
    return columns


def _row_as_dict(cells: list[str], columns: list[str], manifest: Path, line: int) -> dict[str, str]:
    if len(cells) > len(columns) and any(cell.strip() for cell in cells[len(columns):]):
        raise InvalidInputError(
            f"{manifest}, line {line}: {len(cells)} cells but the header has {len(columns)} columns; "
            "quote values that contain commas."
        )
    padded = cells + [""] * (len(columns) - len(cells))
    return {name: value.strip() for name, value in zip(columns, padded)}


def _parse_row(row: dict[str, str], folder: Path, manifest: Path, line: int) -> CohortRecord:
    where = f"{manifest}, line {line}"
    if not row["image"]:
        raise InvalidInputError(f"{where}, column 'image': the value is empty; give the image file.")
    if not row["case_id"]:
        raise InvalidInputError(f"{where}, column 'case_id': the value is empty; give the patient or case id.")

    image = _existing_file(row["image"], folder, where, "image")
    mask = _existing_file(row["mask"], folder, where, "mask") if row["mask"] else None
    spacing = None
    if SPACING_COLUMNS[0] in row:
        spacing = _parse_spacing(row[SPACING_COLUMNS[0]], row[SPACING_COLUMNS[1]], where)

    return CohortRecord(
        image=image,
        mask=mask,
        case_id=row["case_id"],
        sex=_parse_sex(row["sex"], where),
        age=_parse_age(row["age"], where),
        spacing=spacing,
    )


def _existing_file(value: str, folder: Path, where: str, column: str) -> Path:
    path = Path(value)
    if not path.is_absolute():
        path = folder / path
    path = path.resolve()
    if not path.is_file():
        raise InvalidInputError(
            f"{where}, column '{column}': file {path} not found; paths are relative to the manifest's folder."
        )
    return path


def _parse_sex(value: str, where: str) -> str | None:
    key = value.lower()
    if key in _UNKNOWN_VALUES:
        return None
    if key in _SEX_VALUES:
        return _SEX_VALUES[key]
    raise InvalidInputError(
        f"{where}, column 'sex': invalid value '{value}'; accepted: F, M, female, male (any case), "
        "and empty, u, unknown or NA for unknown."
    )


def _parse_age(value: str, where: str) -> float | None:
    if value.lower() in _UNKNOWN_VALUES:
        return None
    try:
        age = float(value)
    except ValueError:
        age = math.nan
    if not (math.isfinite(age) and 0.0 <= age <= _MAX_AGE_YEARS):
        raise InvalidInputError(
            f"{where}, column 'age': invalid value '{value}'; accepted: a number of years from 0 to "
            f"{_MAX_AGE_YEARS:g}, or empty, u, unknown or NA for unknown."
        )
    return age


def _parse_spacing(value_x: str, value_y: str, where: str) -> tuple[float, float] | None:
    if not value_x and not value_y:
        return None
    spacing = []
    for column, value in zip(SPACING_COLUMNS, (value_x, value_y)):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            raise InvalidInputError(
                f"{where}, column '{column}': invalid value '{value}'; accepted: a positive pixel spacing "
                "in mm, or both spacing columns empty when unknown."
            )
        spacing.append(number)
    return (spacing[0], spacing[1])


def _record_as_cells(record: CohortRecord, folder: Path) -> list[str]:
    age = "" if record.age is None else f"{record.age:g}"
    spacing = ("", "") if record.spacing is None else (repr(float(record.spacing[0])), repr(float(record.spacing[1])))
    return [
        _relative_path(record.image, folder),
        "" if record.mask is None else _relative_path(record.mask, folder),
        record.case_id,
        record.sex or "",
        age,
        *spacing,
    ]


def _relative_path(path: Path, folder: Path) -> str:
    absolute = Path(path).resolve()
    try:
        return Path(os.path.relpath(absolute, folder)).as_posix()
    except ValueError:
        return absolute.as_posix()


def _warn_on_inconsistent_cases(records: list[CohortRecord], manifest: Path) -> None:
    """Log cases whose images disagree on sex; the split uses the first image's group."""
    sexes: dict[str, set[str | None]] = defaultdict(set)
    for record in records:
        sexes[record.case_id].add(record.sex)
    inconsistent = sum(1 for values in sexes.values() if len(values) > 1)
    if inconsistent:
        logger.warning("%s: %d case(s) list different sex values across their images.", manifest, inconsistent)


def _check_attribute(attribute: str) -> None:
    if attribute not in ATTRIBUTES:
        raise InvalidInputError(f"invalid attribute '{attribute}': expected 'sex' or 'age'.")


def _checked_threshold(age_threshold: float) -> float:
    threshold = float(age_threshold)
    if not math.isfinite(threshold):
        raise InvalidInputError(f"invalid age threshold {age_threshold}: expected a number of years, e.g. 50.")
    return threshold


def _test_case_count(case_count: int, test_fraction: float) -> int:
    """Return round(case_count * test_fraction), halves up, keeping both sides non-empty for 2+ cases."""
    count = math.floor(case_count * test_fraction + 0.5)
    if case_count >= 2:
        count = min(max(count, 1), case_count - 1)
    return count
