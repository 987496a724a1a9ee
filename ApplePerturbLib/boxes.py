"""Box prompts: validation, boxes from ground-truth masks, random jitter.

A box is ``(x0, y0, x1, y1)`` in pixel coordinates of the original image,
x the column and y the row, both corners inclusive.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from ApplePerturbLib.errors import InvalidInputError

Box = tuple[int, int, int, int]


def validate_box(box: Sequence[float], image_shape: tuple[int, int], where: str = "box") -> Box:
    """Check a box against an image of ``image_shape`` (H, W) and return it as ints.

    Raises:
        InvalidInputError: the box has not 4 values, is inverted, has zero
            area, or lies outside the image.
    """
    if len(box) != 4:
        raise InvalidInputError(f"{where} {list(box)} must have 4 values: X0 Y0 X1 Y1 in pixels.")
    height, width = image_shape
    x0, y0, x1, y1 = (int(round(float(value))) for value in box)
    if x1 < x0 or y1 < y0:
        raise InvalidInputError(
            f"{where} ({x0}, {y0}, {x1}, {y1}) is inverted: X1 must be >= X0 and Y1 >= Y0."
        )
    if x0 >= width or y0 >= height or x1 < 0 or y1 < 0:
        raise InvalidInputError(
            f"{where} ({x0}, {y0}, {x1}, {y1}) lies outside the {width}x{height} image; "
            f"give pixel coordinates with 0 <= X < {width} and 0 <= Y < {height}."
        )
    x0, x1 = max(x0, 0), min(x1, width - 1)
    y0, y1 = max(y0, 0), min(y1, height - 1)
    if x1 == x0 or y1 == y0:
        raise InvalidInputError(
            f"{where} ({x0}, {y0}, {x1}, {y1}) has zero area inside the image; draw a box around the lesion."
        )
    return (x0, y0, x1, y1)


def boxes_from_mask(mask: np.ndarray, min_pixels: int = 1) -> list[Box]:
    """Return one tight box per 8-connected region of a bool HxW mask.

    Regions smaller than ``min_pixels`` are skipped; an empty mask gives [].
    Boxes are sorted by (y0, x0) so the order is deterministic.
    """
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    boxes = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None or np.count_nonzero(labels[region] == index) < min_pixels:
            continue
        rows, cols = region
        boxes.append((cols.start, rows.start, cols.stop - 1, rows.stop - 1))
    return sorted(boxes, key=lambda box: (box[1], box[0]))


def jitter_box(box: Box, max_shift: int, image_shape: tuple[int, int], rng: np.random.Generator) -> Box:
    """Move each box edge by a random integer in [-max_shift, max_shift], kept inside the image."""
    if max_shift <= 0:
        return box
    height, width = image_shape
    shifts = rng.integers(-max_shift, max_shift + 1, size=4)
    x0 = int(np.clip(box[0] + shifts[0], 0, width - 1))
    y0 = int(np.clip(box[1] + shifts[1], 0, height - 1))
    x1 = int(np.clip(box[2] + shifts[2], x0 + 1, width - 1))
    y1 = int(np.clip(box[3] + shifts[3], y0 + 1, height - 1))
    return (x0, y0, max(x1, x0), max(y1, y0))
