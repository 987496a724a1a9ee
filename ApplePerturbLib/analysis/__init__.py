"""Analyses of an ``apple-perturb evaluate`` folder, used by ``apple-perturb report``.

- ``radiomics_errors``: downstream-diagnosis errors. Lesion area, perimeter
  (PyRadiomics shape2D) and energy (PyRadiomics firstorder) are computed from
  the predicted and the ground-truth mask, and the absolute difference is the error.
- ``divergence``: Jensen-Shannon divergence between the groups' error
  distributions.
- ``latent_space``: t-SNE pictures of the pooled latents ``f_o`` and ``f_p``
  and the Davies-Bouldin index and silhouette score of the group labels.
- ``uncertainty``: case-level bootstrap confidence intervals of the fairness
  metrics and of their base-vs-APPLE differences, and mean (std) over seeds.

Each module imports its heavy packages (radiomics, scikit-learn, matplotlib)
inside the functions that need them. This file reads an evaluation's
``per_image.csv``, which every analysis starts from.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ApplePerturbLib.errors import InvalidInputError

PER_IMAGE_FILE = "per_image.csv"
UNKNOWN_GROUP = "unknown"


@dataclass(frozen=True)
class PerImageRow:
    """One row of an evaluation's ``per_image.csv``; ``group`` is None where the attribute is unknown."""

    image: str
    case_id: str
    group: str | None
    dice_base: float
    dice_apple: float | None


def read_per_image(folder: str | os.PathLike) -> list[PerImageRow]:
    """Read ``folder/per_image.csv`` written by ``apple-perturb evaluate``, checking every value.

    Raises:
        FileNotFoundError: the file does not exist.
        InvalidInputError: a column is missing, a Dice value is not a number
            in [0, 1], only some rows have an APPLE Dice, or there are no rows.
    """
    path = Path(folder) / PER_IMAGE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; pass a folder written by 'apple-perturb evaluate --out FOLDER'."
        )
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        missing = [name for name in ("image", "case_id", "group", "dice_base", "dice_apple")
                   if name not in (reader.fieldnames or [])]
        if missing:
            raise InvalidInputError(f"{path} has no column(s) {', '.join(missing)}; it is not an evaluation table.")
        rows = [_parse_row(row, path, reader.line_num) for row in reader]

    if not rows:
        raise InvalidInputError(f"{path} has no image rows; the evaluation found nothing to segment.")
    with_apple = sum(row.dice_apple is not None for row in rows)
    if 0 < with_apple < len(rows):
        raise InvalidInputError(
            f"{path}: {with_apple} of {len(rows)} rows have an APPLE Dice; expected all or none. "
            "Run the evaluation again."
        )
    return rows


def _parse_row(row: dict[str, str], path: Path, line: int) -> PerImageRow:
    group = row["group"].strip()
    apple_text = row["dice_apple"].strip()
    return PerImageRow(
        image=row["image"],
        case_id=row["case_id"],
        group=None if group in ("", UNKNOWN_GROUP) else group,
        dice_base=_parse_dice(row["dice_base"], "dice_base", path, line),
        dice_apple=_parse_dice(apple_text, "dice_apple", path, line) if apple_text else None,
    )


def _parse_dice(text: str, column: str, path: Path, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InvalidInputError(f"{path}, line {line}, column '{column}': invalid Dice '{text}'; expected a number in [0, 1].")
    return value
