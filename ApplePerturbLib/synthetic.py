"""Synthetic ultrasound cohort for the ``apple-perturb demo`` and for tests.

Each image imitates a linear-probe B-mode frame: a smooth tissue texture with
a few bright horizontal tissue layers, a darker near field, depth attenuation
and multiplicative speckle. One hypoechoic lesion with a slightly irregular
margin sits in each image, with mild posterior acoustic enhancement below it.

The cohort carries a built-in bias between the sex groups, so that a
segmentation model is measurably less accurate on one of them:

- female (``F``, about 60 % of cases): lesion echogenicity 0.30 to 0.40 times
  the mean of the surrounding parenchyma, a sharp margin and clear posterior
  enhancement;
- male (``M``): lesion echogenicity 0.75 to 0.85 times that mean, a blurred
  margin and faint posterior enhancement.

Age is drawn independently of sex, so the age groups differ only by chance.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ApplePerturbLib.cohort import CohortRecord, write_manifest
from ApplePerturbLib.imageio import atomic_output

logger = logging.getLogger(__name__)

SYNTHETIC_NOTICE = (
    "These are synthetic images generated from random numbers by ApplePerturbLib.synthetic, "
    "not patient images, and they carry no clinical information."
)

_FEMALE_FRACTION = 0.6
_SECOND_IMAGE_PROBABILITY = 0.5
_MIN_IMAGE_SIZE = 64
# Lengths below are in pixels of a 192-row image and scale with the shorter image side.
_REFERENCE_SIZE = 192.0


@dataclass(frozen=True)
class _LesionStyle:
    """Appearance of the lesions of one sex group."""

    contrast: tuple[float, float]  # lesion / surrounding echogenicity, uniform range
    margin_blur: tuple[float, float]  # Gaussian sigma of the margin in reference pixels
    enhancement: float  # posterior acoustic enhancement, fraction of brightness added


_STYLES = {
    "F": _LesionStyle(contrast=(0.30, 0.40), margin_blur=(0.5, 1.0), enhancement=0.25),
    "M": _LesionStyle(contrast=(0.75, 0.85), margin_blur=(2.5, 4.0), enhancement=0.08),
}


@dataclass(frozen=True)
class _LesionShape:
    """Lesion geometry in pixels: centre (row, column), semi-axes, rotation and margin harmonics."""

    center: tuple[float, float]
    semi_axes: tuple[float, float]
    angle: float  # radians
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) of orders 2, 3, ...


def make_synthetic_cohort(
    out_dir: str | os.PathLike,
    n_cases: int = 40,
    seed: int = 0,
    image_size: tuple[int, int] = (192, 256),
) -> Path:
    """Write a synthetic ultrasound cohort and return the path of its manifest.

    Args:
        out_dir: output folder, created if missing. Files of an earlier cohort
            with the same names are replaced, other files are left in place.
        n_cases: number of cases (patients), each with 1 or 2 images of the
            same lesion. With n_cases >= 2 both sexes and both age groups
            (< 50 and >= 50 years) occur.
        seed: non-negative seed. The same seed, n_cases and image_size give
            byte-identical files.
        image_size: (rows, columns) of every image, each at least 64.

    Writes ``images/case{ID}_{k}.png`` (uint8 grey), ``masks/case{ID}_{k}.png``
    (0 background, 255 lesion), ``manifest.csv`` with the columns image, mask,
    case_id ("001", ...), sex ("F"/"M"), age (years) and empty spacing_x and
    spacing_y (paths relative to the manifest folder), and ``README.txt``
    holding :data:`SYNTHETIC_NOTICE`. Every file is written atomically.

    Raises:
        ValueError: for an invalid n_cases, seed or image_size.
        NotADirectoryError: if out_dir exists and is not a folder.
    """
    shape = _validate_arguments(n_cases, seed, image_size)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"Output folder {out_dir} exists and is not a folder; choose another path.")
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)

    # Independent random streams: one for the cohort's attributes, one per case.
    attribute_seed, *case_seeds = np.random.SeedSequence(seed).spawn(n_cases + 1)
    sexes, ages = _draw_attributes(np.random.default_rng(attribute_seed), n_cases)

    records: list[CohortRecord] = []
    for index in range(n_cases):
        case_id = f"{index + 1:03d}"
        rng = np.random.default_rng(case_seeds[index])
        records += _write_case(out_dir, case_id, sexes[index], ages[index], rng, shape)

    manifest_path = out_dir / "manifest.csv"
    write_manifest(manifest_path, records)
    with atomic_output(out_dir / "README.txt") as temporary:
        temporary.write_text(SYNTHETIC_NOTICE + "\n", encoding="utf-8")
    logger.info("Wrote a synthetic cohort of %d images from %d cases to %s", len(records), n_cases, out_dir)
    return manifest_path


def _validate_arguments(n_cases: int, seed: int, image_size: tuple[int, int]) -> tuple[int, int]:
    """Check the arguments of make_synthetic_cohort and return the image shape (rows, columns)."""
    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) or n_cases < 1:
        raise ValueError(f"n_cases must be a positive integer, got {n_cases!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")

    try:
        rows, columns = (int(value) for value in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (rows, columns), got {image_size!r}.") from None
    if min(rows, columns) < _MIN_IMAGE_SIZE or (rows, columns) != tuple(image_size):
        raise ValueError(
            f"image_size must be two integers of at least {_MIN_IMAGE_SIZE} pixels, got {image_size!r}."
        )
    return rows, columns


def _draw_attributes(rng: np.random.Generator, n_cases: int) -> tuple[list[str], list[int]]:
    """Draw sex (about 60 % female) and age in years (independent of sex) for every case."""
    n_female = round(_FEMALE_FRACTION * n_cases)
    if n_cases >= 2:
        n_female = min(max(n_female, 1), n_cases - 1)
    sexes = ["F"] * n_female + ["M"] * (n_cases - n_female)
    sexes = [sexes[i] for i in rng.permutation(n_cases)]

    ages = np.clip(np.rint(rng.normal(52.0, 15.0, size=n_cases)), 18, 90).astype(int).tolist()
    if n_cases >= 2 and all(age < 50 for age in ages):
        ages[0] = int(rng.integers(50, 80))
    elif n_cases >= 2 and all(age >= 50 for age in ages):
        ages[0] = int(rng.integers(20, 50))
    return sexes, ages


def _write_case(
    out_dir: Path, case_id: str, sex: str, age: int, rng: np.random.Generator, shape: tuple[int, int]
) -> list[CohortRecord]:
    """Render and write the images and masks of one case; return their cohort records."""
    style = _STYLES[sex]
    scale = min(shape) / _REFERENCE_SIZE
    lesion = _draw_lesion(rng, shape, scale)
    n_images = 2 if rng.random() < _SECOND_IMAGE_PROBABILITY else 1

    records = []
    for k in range(1, n_images + 1):
        if k > 1:
            # A second view of the same lesion: moved, resized and turned a little.
            lesion = _moved_lesion(rng, lesion, shape, scale)
        image, mask = _render_image(rng, shape, scale, lesion, style)

        name = f"case{case_id}_{k}.png"
        image_path = out_dir / "images" / name
        mask_path = out_dir / "masks" / name
        _write_png(image_path, image)
        _write_png(mask_path, mask.astype(np.uint8) * 255)
        records.append(CohortRecord(image_path, mask_path, case_id, sex, float(age), spacing=None))
    return records


def _draw_lesion(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> _LesionShape:
    """Draw a lesion's size, rotation and margin, then a centre that keeps it inside the image."""
    semi_axes = (rng.uniform(16, 34) * scale, rng.uniform(12, 26) * scale)
    harmonics = tuple((rng.uniform(0.0, 0.06), rng.uniform(0.0, 2 * math.pi)) for _ in range(4))
    lesion = _LesionShape((0.0, 0.0), semi_axes, rng.uniform(-0.5, 0.5), harmonics)
    return _place_lesion(rng, lesion, shape, scale)


def _moved_lesion(rng: np.random.Generator, lesion: _LesionShape, shape: tuple[int, int], scale: float) -> _LesionShape:
    """Return the lesion as a second view shows it, still inside the image."""
    size_factor = rng.uniform(0.9, 1.1)
    semi_axes = (lesion.semi_axes[0] * size_factor, lesion.semi_axes[1] * size_factor)
    center = (
        lesion.center[0] + rng.uniform(-0.05, 0.05) * shape[0],
        lesion.center[1] + rng.uniform(-0.08, 0.08) * shape[1],
    )
    moved = _LesionShape(center, semi_axes, lesion.angle + rng.uniform(-0.3, 0.3), lesion.harmonics)
    return _place_lesion(rng, moved, shape, scale, keep_center=True)


def _place_lesion(
    rng: np.random.Generator, lesion: _LesionShape, shape: tuple[int, int], scale: float, keep_center: bool = False
) -> _LesionShape:
    """Return the lesion with a centre in the mid-depth region, clamped so the whole lesion stays inside."""
    rows, columns = shape
    margin = 6 * scale
    # The margin harmonics add at most 24 % to the radius.
    reach = max(lesion.semi_axes) * 1.25 + margin
    row_range = (max(reach, 0.3 * rows), min(rows - 1 - reach, 0.7 * rows))
    column_range = (reach, columns - 1 - reach)
    if keep_center:
        center = lesion.center
    else:
        center = (rng.uniform(*sorted(row_range)), rng.uniform(*column_range))
    center = (float(np.clip(center[0], min(row_range), max(row_range))), float(np.clip(center[1], *column_range)))
    return _LesionShape(center, lesion.semi_axes, lesion.angle, lesion.harmonics)


def _render_image(
    rng: np.random.Generator, shape: tuple[int, int], scale: float, lesion: _LesionShape, style: _LesionStyle
) -> tuple[np.ndarray, np.ndarray]:
    """Render one B-mode image (uint8, rows x columns) and its lesion mask (bool)."""
    mask = _lesion_mask(shape, lesion)
    parenchyma, layers = _tissue_echogenicity(rng, shape, scale)

    blur = rng.uniform(*style.margin_blur) * scale
    soft_lesion = ndimage.gaussian_filter(mask.astype(float), blur)
    lesion_echogenicity = _lesion_echogenicity(rng, parenchyma, mask, rng.uniform(*style.contrast), scale)
    # The lesion displaces the parenchyma and the tissue layers where it sits.
    echogenicity = (parenchyma + layers) * (1.0 - soft_lesion) + lesion_echogenicity * soft_lesion
    echogenicity *= _posterior_enhancement(soft_lesion, style.enhancement, scale)
    echogenicity *= _depth_profile(shape)

    intensity = echogenicity * _speckle(rng, shape, scale) * rng.uniform(0.8, 1.0)
    image = np.clip(np.rint(intensity * 255.0), 0, 255).astype(np.uint8)
    return image, mask


def _lesion_echogenicity(
    rng: np.random.Generator, parenchyma: np.ndarray, mask: np.ndarray, contrast: float, scale: float
) -> np.ndarray:
    """Return the lesion's own backscatter: ``contrast`` times the mean parenchyma around it, lightly textured.

    Scaling the surrounding mean, not the local texture, keeps the lesion darker
    than its surroundings even where the parenchyma texture is bright.
    """
    surroundings = ndimage.binary_dilation(mask, iterations=max(1, round(12 * scale))) & ~mask
    level = contrast * float(parenchyma[surroundings].mean())
    texture = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 3 * scale)
    return level * (1.0 + 0.08 * texture / texture.std())


def _lesion_mask(shape: tuple[int, int], lesion: _LesionShape) -> np.ndarray:
    """Rasterise the lesion: an ellipse whose radius varies with the polar angle by a few harmonics."""
    row_index, column_index = np.indices(shape, dtype=float)
    dy = row_index - lesion.center[0]
    dx = column_index - lesion.center[1]
    cos_angle, sin_angle = math.cos(lesion.angle), math.sin(lesion.angle)
    u = (dx * cos_angle + dy * sin_angle) / lesion.semi_axes[0]
    v = (-dx * sin_angle + dy * cos_angle) / lesion.semi_axes[1]

    polar_angle = np.arctan2(v, u)
    boundary = np.ones(shape)
    for order, (amplitude, phase) in enumerate(lesion.harmonics, start=2):
        boundary += amplitude * np.cos(order * polar_angle + phase)
    return np.hypot(u, v) <= boundary


def _tissue_echogenicity(
    rng: np.random.Generator, shape: tuple[int, int], scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean backscatter of the parenchyma (about 0.25 to 0.5) and of bright tissue layers."""
    rows, columns = shape
    coarse = ndimage.gaussian_filter(rng.standard_normal(shape), (10 * scale, 24 * scale), truncate=3.0)
    fine = ndimage.gaussian_filter(rng.standard_normal(shape), (2 * scale, 5 * scale))
    parenchyma = np.clip(0.38 + 0.05 * coarse / coarse.std() + 0.05 * fine / fine.std(), 0.05, None)

    # Gently curved layers such as fascia or a gland capsule, thin along the depth axis.
    depth = np.arange(rows, dtype=float)[:, None]
    lateral = np.arange(columns, dtype=float)[None, :]
    layers = np.zeros(shape)
    for _ in range(int(rng.integers(2, 5))):
        layer_depth = rng.uniform(0.12, 0.95) * rows
        cycles = rng.uniform(0.3, 1.2)
        bend = rng.uniform(2, 8) * scale * np.sin(2 * math.pi * cycles * lateral / columns + rng.uniform(0, 2 * math.pi))
        thickness = rng.uniform(1.0, 2.5) * scale
        layers += rng.uniform(0.15, 0.35) * np.exp(-(((depth - layer_depth - bend) / thickness) ** 2))
    return parenchyma, layers


def _depth_profile(shape: tuple[int, int]) -> np.ndarray:
    """Return a gain per row: a darker near field below the probe, then attenuation with depth."""
    rows = shape[0]
    depth = np.arange(rows, dtype=float)[:, None]
    near_field = np.clip(depth / (0.12 * rows), 0.0, 1.0)
    return (0.35 + 0.65 * near_field) * np.exp(-0.5 * depth / rows)


def _posterior_enhancement(soft_lesion: np.ndarray, strength: float, scale: float) -> np.ndarray:
    """Return a gain >= 1 that brightens the columns below the lesion, fading with distance from it."""
    rows = soft_lesion.shape[0]
    below_lesion = np.maximum.accumulate(soft_lesion, axis=0) - soft_lesion
    rows_below = np.cumsum(below_lesion > 0.5, axis=0)
    enhancement = below_lesion * np.exp(-rows_below / (0.3 * rows))
    return 1.0 + strength * ndimage.gaussian_filter(enhancement, 2 * scale)


def _speckle(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Return a multiplicative speckle gain with mean 1.

    The envelope of a low-pass filtered complex Gaussian field is Rayleigh
    distributed, as fully developed speckle is. The filter makes the grain
    longer laterally than axially, as a linear probe's point-spread function does.
    """
    sigma = (0.7 * scale, 1.5 * scale)
    in_phase = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    quadrature = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    envelope = np.hypot(in_phase, quadrature)
    # Blend with 1 to lower the speckle contrast from Rayleigh's 0.52 (std / mean) to
    # about 0.3, which looks closer to log-compressed B-mode than raw Rayleigh speckle.
    return 0.45 + 0.55 * envelope / envelope.mean()


def _write_png(path: Path, pixels: np.ndarray) -> None:
    """Write a 2D uint8 array as a grey PNG, atomically."""
    with atomic_output(path) as temporary:
        sitk.WriteImage(sitk.GetImageFromArray(pixels), str(temporary), imageIO="PNGImageIO")
