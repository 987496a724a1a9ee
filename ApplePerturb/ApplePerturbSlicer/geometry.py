"""Box prompts from markups ROIs, and geometry shared by the MRML writers.

Coordinate frames: an ROI is defined in its node coordinates, the RAS of its
parent transform. A volume maps voxel indices IJK to the RAS of its own parent
transform through its IJK-to-RAS matrix. A box is ``(x0, y0, x1, y1)`` in
pixels of one frame: x is the column (volume axis I), y the row (axis J), and
both corners are inclusive pixel indices, as the library's ``Segmenter``
expects. Pixel ``i`` covers the continuous index range ``[i - 0.5, i + 0.5]``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import slicer
import vtk

from .frames import check_image_node, frame_count, frame_size

# Tolerance in voxels for float round-off when an ROI face lies on a pixel centre.
_INDEX_TOLERANCE = 1e-6


def roi_to_pixel_box(roi_node, volume_node, frame_index: int | None = None) -> tuple[int, int, int, int]:
    """Convert a markups ROI into a box prompt on one frame of a volume.

    The 8 ROI corners go from the ROI's node coordinates through the ROI's
    and the volume's parent transforms (any transform, linear or not, applied
    to the corners) into the volume's continuous IJK indices. The box is
    their axis-aligned bounding box in I and J, sorted min/max, so flipped
    axes and rotated ROIs are handled. It keeps the pixels whose centres lie
    inside that range and is clipped to the frame.

    Args:
        roi_node: a placed ``vtkMRMLMarkupsROINode``.
        volume_node: the image (see ``frames`` for what counts as one).
        frame_index: frame along K. None is allowed for a single-frame volume
            only; for a cine clip pass the frame shown to the user (for
            example from :func:`roi_frame_index`).

    Returns:
        ``(x0, y0, x1, y1)`` inclusive pixel indices with ``x0 < x1`` and
        ``y0 < y1``, within ``0..W-1`` and ``0..H-1``.

    Raises:
        ValueError: if the ROI is not placed, does not overlap the image or
            the requested frame, or covers less than 2 pixels in x or y.
    """
    check_image_node(volume_node, frame_index)
    frame = 0 if frame_index is None else int(frame_index)
    height, width = frame_size(volume_node)
    corners = _roi_corners_ijk(roi_node, volume_node)
    low = corners.min(axis=0)
    high = corners.max(axis=0)

    image_name = volume_node.GetName()
    roi_name = roi_node.GetName()
    if high[0] < -0.5 or low[0] > width - 0.5 or high[1] < -0.5 or low[1] > height - 0.5:
        raise ValueError(
            f"The ROI '{roi_name}' does not overlap the image '{image_name}': move it onto the lesion."
        )
    if high[2] < frame - 0.5 - _INDEX_TOLERANCE or low[2] > frame + 0.5 + _INDEX_TOLERANCE:
        raise ValueError(
            f"The ROI '{roi_name}' lies {_frames_text(low[2], high[2], frame_count(volume_node))} "
            f"of '{image_name}', not on frame {frame}: draw the ROI on the frame you segment."
        )

    x0 = max(math.ceil(low[0] - _INDEX_TOLERANCE), 0)
    x1 = min(math.floor(high[0] + _INDEX_TOLERANCE), width - 1)
    y0 = max(math.ceil(low[1] - _INDEX_TOLERANCE), 0)
    y1 = min(math.floor(high[1] + _INDEX_TOLERANCE), height - 1)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(
            f"The ROI '{roi_name}' covers less than 2 pixels across on '{image_name}' "
            f"(box x {x0}..{x1}, y {y0}..{y1}): draw a larger ROI around the lesion."
        )
    return x0, y0, x1, y1


def roi_frame_index(roi_node, volume_node) -> int:
    """Return the frame along K that contains the ROI's centre.

    Raises:
        ValueError: if the ROI is not placed or its centre lies outside every frame.
    """
    check_image_node(volume_node, batch=True)
    centre = _roi_corners_ijk(roi_node, volume_node).mean(axis=0)
    frame = round(float(centre[2]))
    count = frame_count(volume_node)
    if not 0 <= frame < count:
        raise ValueError(
            f"The centre of the ROI '{roi_node.GetName()}' is not on any of the {count} "
            f"frame(s) of '{volume_node.GetName()}': move the ROI onto the image."
        )
    return frame


def propagate_box(previous_mask: np.ndarray | None, margin_px: int, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Grow the bounding box of the previous frame's mask into the next frame's box prompt.

    Args:
        previous_mask: bool ``(H, W)`` mask of the previous frame, or None.
        margin_px: pixels added on every side, >= 0.
        shape: ``(H, W)`` of the next frame; the box is clipped to it.

    Returns:
        ``(x0, y0, x1, y1)`` inclusive pixel indices, or None when the mask
        is None or empty (no lesion to follow).
    """
    if margin_px < 0:
        raise ValueError(f"margin_px must be 0 or more pixels, got {margin_px}.")
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) with H, W >= 1, got {shape}.")
    if previous_mask is None:
        return None
    mask = np.asarray(previous_mask)
    if mask.ndim != 2:
        raise ValueError(f"previous_mask must be a 2D (H, W) mask, got shape {mask.shape}.")

    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    height, width = shape
    x0 = max(int(columns[0]) - margin_px, 0)
    y0 = max(int(rows[0]) - margin_px, 0)
    x1 = min(int(columns[-1]) + margin_px, width - 1)
    y1 = min(int(rows[-1]) + margin_px, height - 1)
    if x0 > x1 or y0 > y1:
        return None  # the previous mask lies entirely outside the next frame
    return x0, y0, x1, y1


def volume_ijk_to_node_matrix(volume_node, target_node) -> vtk.vtkMatrix4x4:
    """Return the 4x4 matrix from the volume's IJK to the node coordinates of ``target_node``.

    The node coordinates of a node are the RAS of its parent transform, so a
    labelmap with this geometry in ``target_node`` overlays the volume
    exactly.

    Raises:
        ValueError: if the transform between the two parents is not linear.
    """
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    source_parent = volume_node.GetParentTransformNode()
    target_parent = target_node.GetParentTransformNode()
    if source_parent is target_parent:
        return ijk_to_ras

    volume_to_target = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(source_parent, target_parent, volume_to_target):
        raise ValueError(
            f"The transform between '{volume_node.GetName()}' and '{target_node.GetName()}' "
            "is not linear: harden it on the image, or place both under the same transform."
        )
    result = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Multiply4x4(volume_to_target, ijk_to_ras, result)
    return result


def _roi_corners_ijk(roi_node, volume_node) -> np.ndarray:
    """Return the ROI's 8 corners as continuous ``(I, J, K)`` indices, shape ``(8, 3)``."""
    if roi_node is None or not roi_node.IsA("vtkMRMLMarkupsROINode"):
        raise ValueError("No box ROI is selected: place a markups ROI around the lesion.")
    if roi_node.GetNumberOfDefinedControlPoints() == 0:
        raise ValueError(f"The ROI '{roi_node.GetName()}' is not placed yet: draw it around the lesion.")

    bounds = [0.0] * 6
    roi_node.GetObjectBounds(bounds)
    object_to_node = roi_node.GetObjectToNodeMatrix()
    roi_to_volume = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(
        roi_node.GetParentTransformNode(), volume_node.GetParentTransformNode(), roi_to_volume
    )
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)

    corners = []
    for x, y, z in itertools.product(bounds[0:2], bounds[2:4], bounds[4:6]):
        node_point = object_to_node.MultiplyPoint((x, y, z, 1.0))[:3]
        volume_ras = roi_to_volume.TransformPoint(node_point)
        corners.append(ras_to_ijk.MultiplyPoint((*volume_ras, 1.0))[:3])
    return np.array(corners)


def _frames_text(low: float, high: float, count: int) -> str:
    """Describe which frames a continuous K range ``[low, high]`` overlaps."""
    first = max(math.ceil(low - 0.5), 0)
    last = min(math.floor(high + 0.5), count - 1)
    if first > last:
        return "off the image plane"
    if first == last:
        return f"on frame {first}"
    return f"on frames {first} to {last}"
