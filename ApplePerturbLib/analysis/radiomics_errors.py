"""Downstream-diagnosis errors: lesion area, perimeter and energy from predicted vs ground-truth masks.

A segmentation error matters clinically through the measurements taken from
the mask. For each image this module measures, from the predicted mask and
from the ground-truth mask:

- ``area``: PyRadiomics shape2D ``MeshSurface``, the area enclosed by the
  lesion contour (marching squares), in mm^2;
- ``perimeter``: PyRadiomics shape2D ``Perimeter``, the length of that
  contour, in mm;
- ``energy``: PyRadiomics firstorder ``Energy``, the sum of the squared grey
  values inside the mask, in (grey level)^2 on the 0-255 scale of
  :func:`ApplePerturbLib.imageio.read_image`.

The error is the absolute difference of the two values. Area and perimeter
use the pixel spacing of the cohort manifest (``spacing_x``, ``spacing_y``).
Without a spacing one pixel counts as 1 x 1, and the units are px^2 and px.

Features are computed on a true 2D SimpleITK image, so shape2D needs no
``force2D`` setting and respects anisotropic spacing. PyRadiomics comes from
the ``pyradiomics-bhklab`` package (imported as ``radiomics``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ApplePerturbLib.analysis import PerImageRow, read_per_image
from ApplePerturbLib.errors import InvalidInputError, TrainingInterrupted

logger = logging.getLogger(__name__)

FEATURES = ("area", "perimeter", "energy")
MASK_FOLDER = "masks"

# ITU-R BT.601 luma weights, used only for a colour image whose channels differ.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class LesionMeasures:
    """Area (mm^2 or px^2), perimeter (mm or px) and energy ((grey level)^2) of one mask."""

    area: float
    perimeter: float
    energy: float


@dataclass
class DownstreamErrorTable:
    """Absolute downstream errors of every evaluated image, rows in ``per_image.csv`` order.

    ``errors[condition][feature]`` is an N-array for condition "base" or
    "apple" (the latter absent without a perturber) and each of
    :data:`FEATURES`. ``units`` maps each feature to its unit text.
    """

    images: list[str]
    case_ids: list[str]
    groups: list[str | None]
    errors: dict[str, dict[str, np.ndarray]]
    units: dict[str, str]


def feature_units(spacing_known: bool) -> dict[str, str]:
    """Return the unit text of each feature: mm-based with a pixel spacing, px-based without."""
    length = "mm" if spacing_known else "px"
    return {"area": f"{length}^2", "perimeter": length, "energy": "(grey level)^2"}


def grey_from_rgb(image: np.ndarray) -> np.ndarray:
    """Return the HxW float64 grey image of an HxW or HxWx3 image.

    Ultrasound stored as RGB usually repeats one grey channel, which is then
    taken as is. Otherwise the BT.601 luma of the three channels is used.
    """
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        return pixels.astype(np.float64)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InvalidInputError(f"expected an HxW or HxWx3 image, got shape {pixels.shape}.")
    if np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2]):
        return pixels[..., 0].astype(np.float64)
    return pixels.astype(np.float64) @ _LUMA_WEIGHTS


def measure_lesion(grey: np.ndarray, mask: np.ndarray, spacing: tuple[float, float] | None = None) -> LesionMeasures:
    """Measure area, perimeter and energy of the lesion ``mask`` on the ``grey`` image.

    Args:
        grey: HxW grey image (float or integer).
        mask: HxW bool mask of the lesion, in the same pixel grid.
        spacing: pixel spacing (x, y) = (column, row) in mm, or None for 1 x 1 px.

    Returns:
        The measures. An empty mask gives area 0, perimeter 0 and energy 0,
        the values of an empty region. PyRadiomics raises for an empty mask,
        so these are set here without calling it.
    """
    grey = np.asarray(grey, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if grey.ndim != 2 or grey.shape != mask.shape:
        raise InvalidInputError(
            f"measure_lesion needs an HxW grey image and a mask of the same shape; got {grey.shape} and {mask.shape}."
        )
    if not mask.any():
        return LesionMeasures(0.0, 0.0, 0.0)

    import SimpleITK as sitk
    from radiomics import firstorder, shape2D  # importing radiomics sets its logger to INFO

    image = sitk.GetImageFromArray(grey)
    label = sitk.GetImageFromArray(mask.astype(np.uint8))
    if spacing is not None:
        image.SetSpacing(tuple(float(value) for value in spacing))
        label.SetSpacing(tuple(float(value) for value in spacing))

    with _radiomics_at_warning_level():
        shape = shape2D.RadiomicsShape2D(image, label, label=1)
        shape.disableAllFeatures()
        shape.enableFeatureByName("MeshSurface")
        shape.enableFeatureByName("Perimeter")
        shape_values = shape.execute()

        intensity = firstorder.RadiomicsFirstOrder(image, label, label=1)
        intensity.disableAllFeatures()
        intensity.enableFeatureByName("Energy")
        intensity_values = intensity.execute()

    return LesionMeasures(
        area=float(shape_values["MeshSurface"]),
        perimeter=float(shape_values["Perimeter"]),
        energy=float(intensity_values["Energy"]),
    )


def downstream_errors(grey: np.ndarray, truth: np.ndarray, prediction: np.ndarray,
                      spacing: tuple[float, float] | None = None) -> dict[str, float]:
    """Return the absolute error of each feature, ``{feature: |value(prediction) - value(truth)|}``."""
    reference = measure_lesion(grey, truth, spacing)
    predicted = measure_lesion(grey, prediction, spacing)
    return {name: abs(getattr(predicted, name) - getattr(reference, name)) for name in FEATURES}


def compute_error_table(evaluation: str | os.PathLike, manifest: str | os.PathLike,
                        should_stop: Callable[[], bool] | None = None,
                        on_image: Callable[[int, int], None] | None = None) -> DownstreamErrorTable:
    """Compute the downstream errors of every image of an evaluation folder.

    Args:
        evaluation: folder written by ``apple-perturb evaluate --save-masks``;
            reads ``per_image.csv`` and ``masks/base`` (and ``masks/apple``).
        manifest: the cohort manifest of that evaluation, for the images, the
            ground-truth masks and the pixel spacings.
        should_stop: polled between images; when it returns True the
            computation stops with TrainingInterrupted.
        on_image: called with (images done, total) after each image.

    Units are mm-based only when every image has a spacing. When only some
    have one, all images are measured in pixels, and a warning is logged.

    Raises:
        FileNotFoundError: the masks folder, a predicted mask or the manifest is missing.
        InvalidInputError: an image of the evaluation is not in the manifest
            or has no ground-truth mask, or a mask does not fit its image.
    """
    from ApplePerturbLib.cohort import read_manifest
    from ApplePerturbLib.imageio import read_image, read_mask

    folder = Path(evaluation)
    rows = read_per_image(folder)
    conditions = ["base"] + (["apple"] if rows[0].dice_apple is not None else [])
    mask_folders = {condition: _predicted_mask_folder(folder, condition) for condition in conditions}
    records = _match_records(rows, read_manifest(manifest), manifest)
    use_spacing = _spacing_is_usable(records)

    errors = {condition: {name: np.zeros(len(rows)) for name in FEATURES} for condition in conditions}
    for index, (row, record) in enumerate(zip(rows, records)):
        if should_stop is not None and should_stop():
            raise TrainingInterrupted("the downstream-error computation was cancelled")
        image = read_image(record.image)
        grey = grey_from_rgb(image)
        truth = read_mask(record.mask, expected_shape=image.shape[:2])
        spacing = record.spacing if use_spacing else None
        for condition in conditions:
            prediction = read_mask(_predicted_mask_path(mask_folders[condition], row), expected_shape=image.shape[:2])
            for name, value in downstream_errors(grey, truth, prediction, spacing).items():
                errors[condition][name][index] = value
        if on_image is not None:
            on_image(index + 1, len(rows))

    return DownstreamErrorTable(
        images=[row.image for row in rows], case_ids=[row.case_id for row in rows],
        groups=[row.group for row in rows], errors=errors, units=feature_units(use_spacing),
    )


def _predicted_mask_folder(evaluation: Path, condition: str) -> Path:
    folder = evaluation / MASK_FOLDER / condition
    if not folder.is_dir():
        raise FileNotFoundError(
            f"predicted masks folder {folder} not found; run 'apple-perturb evaluate' with --save-masks."
        )
    return folder


def _predicted_mask_path(folder: Path, row: PerImageRow) -> Path:
    path = folder / f"{Path(row.image).stem}.png"
    if not path.is_file():
        raise FileNotFoundError(
            f"predicted mask {path} of image {row.image} not found; run the evaluation again with --save-masks."
        )
    return path


def _match_records(rows: Sequence[PerImageRow], records: Sequence, manifest) -> list:
    """Return the manifest record of each evaluated image, matched by file name and case id."""
    by_name = defaultdict(list)
    for record in records:
        by_name[(record.image.name, record.case_id)].append(record)

    matched = []
    for row in rows:
        candidates = by_name.get((row.image, row.case_id), [])
        if not candidates:
            raise InvalidInputError(
                f"image {row.image} is not in the manifest {manifest} (under its case id); "
                "pass the manifest the evaluation was run on."
            )
        if len(candidates) > 1:
            raise InvalidInputError(
                f"the manifest {manifest} lists {len(candidates)} images named {row.image} in one case; "
                "give the image files distinct names."
            )
        if candidates[0].mask is None:
            raise InvalidInputError(f"image {row.image} has no ground-truth mask in the manifest {manifest}.")
        matched.append(candidates[0])
    return matched


def _spacing_is_usable(records: Sequence) -> bool:
    with_spacing = sum(record.spacing is not None for record in records)
    if 0 < with_spacing < len(records):
        logger.warning(
            "%d of %d images have a pixel spacing; measuring all of them in pixels so the errors share one unit.",
            with_spacing, len(records),
        )
    return with_spacing == len(records)


@contextlib.contextmanager
def _radiomics_at_warning_level() -> Iterator[None]:
    """Raise the ``radiomics`` logger to WARNING for the block, then restore its level.

    PyRadiomics sets its logger to INFO and logs every feature class it runs.
    Only that logger changes, and the root logger keeps its level.
    """
    radiomics_logger = logging.getLogger("radiomics")
    previous = radiomics_logger.level
    radiomics_logger.setLevel(max(previous, logging.WARNING))
    try:
        yield
    finally:
        radiomics_logger.setLevel(previous)
