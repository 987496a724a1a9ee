"""Ultrasound frames from Slicer volume nodes.

A 2D ultrasound image in Slicer is a single-slice volume: a
``vtkMRMLScalarVolumeNode`` (grey, voxel array ``(1, H, W)``) or a
``vtkMRMLVectorVolumeNode`` (colour, ``(1, H, W, 3)``, or 4 components with
alpha). A cine clip is the same with K > 1 frames stacked along the volume's K
axis: ``(K, H, W)`` or ``(K, H, W, C)``. Frame ``k`` is the voxel slice
``array[k]``: its rows are the volume's J axis and its columns the I axis, so
pixel ``(y, x)`` of a frame is voxel ``(I=x, J=y, K=k)``.

Rule for volumes with more than one slice: they are read as frames along K
(a CT or MR volume too, which then gives axial slices, not ultrasound frames).
Only a batch run treats such a volume as a cine clip and segments every frame.
An interactive run segments one frame and therefore requires the caller to name
the frame index (see :func:`check_image_node`).
"""

from __future__ import annotations

import enum

import numpy as np
import slicer

# Classes read as images, by exact class name: their subclasses (labelmaps,
# diffusion and tensor volumes) carry labels or tensors, not intensities.
_IMAGE_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode")
_COLOUR_COMPONENTS = (3, 4)


class VolumeKind(enum.Enum):
    """How ApplePerturb reads a node as an image."""

    SINGLE_FRAME = "single-frame"
    MULTI_FRAME = "multi-frame"
    NOT_AN_IMAGE = "not an image"


def describe_volume(volume_node) -> VolumeKind:
    """Classify a node as a single 2D frame, a stack of frames along K, or no image.

    Args:
        volume_node: any MRML node, or None.

    Returns:
        ``SINGLE_FRAME`` for a scalar or vector volume with one slice (K = 1),
        ``MULTI_FRAME`` for one with K > 1 slices, ``NOT_AN_IMAGE`` for
        anything else (None, a labelmap, a model or markups node, a volume
        without voxels, a volume with 2 or more than 4 components per voxel).
    """
    if _not_an_image_reason(volume_node) is not None:
        return VolumeKind.NOT_AN_IMAGE
    if frame_count(volume_node) == 1:
        return VolumeKind.SINGLE_FRAME
    return VolumeKind.MULTI_FRAME


def check_image_node(node, frame_index: int | None = None, batch: bool = False) -> VolumeKind:
    """Raise ValueError unless ``node`` can be segmented as requested.

    Args:
        node: the node the user selected as input image.
        frame_index: index of the frame along K to segment, or None.
        batch: True when every frame of a multi-frame volume is to be
            segmented (the volume is then a cine clip); False for an
            interactive run on one frame, which requires ``frame_index`` for
            a multi-frame volume.

    Returns:
        The node's :class:`VolumeKind` (never ``NOT_AN_IMAGE``).

    Raises:
        ValueError: with a message for the user that names the node, what is
            wrong and what to choose instead.
    """
    reason = _not_an_image_reason(node)
    if reason is not None:
        raise ValueError(reason)

    kind = describe_volume(node)
    count = frame_count(node)
    if kind is VolumeKind.MULTI_FRAME and not batch and frame_index is None:
        raise ValueError(
            f"'{node.GetName()}' has {count} slices of {_frame_size_text(node)}: "
            "ApplePerturb segments 2D ultrasound frames; choose one frame "
            "or a 2D image, or segment all frames as a cine clip (batch)."
        )
    if frame_index is not None and not 0 <= int(frame_index) < count:
        raise ValueError(
            f"Frame {frame_index} does not exist in '{node.GetName()}', which has "
            f"{count} frame(s): choose a frame from 0 to {count - 1}."
        )
    return kind


def frame_count(volume_node) -> int:
    """Return the number of frames along K (1 for a 2D image).

    Raises:
        ValueError: if the node is not an image (see :func:`check_image_node`).
    """
    reason = _not_an_image_reason(volume_node)
    if reason is not None:
        raise ValueError(reason)
    return int(volume_node.GetImageData().GetDimensions()[2])


def frame_size(volume_node) -> tuple[int, int]:
    """Return the frame size ``(H, W)`` in pixels: H along J, W along I."""
    frame_count(volume_node)  # validates the node
    width, height, _ = volume_node.GetImageData().GetDimensions()
    return int(height), int(width)


def frame_image(volume_node, frame_index: int = 0) -> np.ndarray:
    """Return one frame as an ``(H, W, 3)`` uint8 RGB array.

    Intensities: uint8 voxels are kept as they are. Voxels of any other type
    whose values are all whole numbers from 0 to 255 are cast to uint8 (int16
    ultrasound exports are common). Otherwise the voxels are rescaled linearly
    from the whole volume's min/max to 0..255, so all frames of a clip share
    one mapping; a constant volume of that kind maps to 0. Non-finite values
    (NaN, inf) map to 0.
    Grey volumes are repeated into 3 channels; the alpha channel of a
    4-component volume is dropped.

    Raises:
        ValueError: if the node is not an image or the frame does not exist.
    """
    check_image_node(volume_node, frame_index, batch=True)
    voxels = slicer.util.arrayFromVolume(volume_node)
    to_uint8 = _IntensityMapping(voxels)
    return _to_rgb(to_uint8(voxels[int(frame_index)]))


def image_frames(volume_node) -> list[np.ndarray]:
    """Return every frame along K as ``(H, W, 3)`` uint8 RGB arrays.

    Intensity mapping as in :func:`frame_image`, with one mapping for the
    whole volume. A 2D image gives a list of one frame.
    """
    check_image_node(volume_node, batch=True)
    voxels = slicer.util.arrayFromVolume(volume_node)
    to_uint8 = _IntensityMapping(voxels)
    return [_to_rgb(to_uint8(voxels[k])) for k in range(voxels.shape[0])]


def _not_an_image_reason(node) -> str | None:
    """Return a message for the user explaining why ``node`` is no image, or None."""
    if node is None:
        return "No image is selected: choose a 2D ultrasound image or a cine clip volume."

    name = node.GetName()
    class_name = node.GetClassName()
    if class_name == "vtkMRMLLabelMapVolumeNode":
        return (
            f"'{name}' is a labelmap (a segmentation stored as a volume), not an image: "
            "choose the ultrasound image it was drawn on."
        )
    if class_name == "vtkMRMLSequenceNode":
        return (
            f"'{name}' is a sequence, not a single image: choose the volume its "
            "sequence browser shows, or segment all its items in a batch run."
        )
    if class_name not in _IMAGE_CLASSES:
        kind = class_name.removeprefix("vtkMRML").removesuffix("Node")
        return (
            f"'{name}' is a {kind} node, not a grey or colour image: "
            "choose a 2D ultrasound image or a cine clip volume."
        )

    image_data = node.GetImageData()
    if image_data is None or min(image_data.GetDimensions()) < 1 or image_data.GetPointData().GetScalars() is None:
        return f"'{name}' contains no voxels: load the image again."

    components = image_data.GetNumberOfScalarComponents()
    if components != 1 and components not in _COLOUR_COMPONENTS:
        return (
            f"'{name}' has {components} values per pixel: ApplePerturb reads grey "
            "images (1 value) or colour images (3 values, RGB, or 4 with alpha)."
        )

    width, height, _ = image_data.GetDimensions()
    if width < 2 or height < 2:
        return (
            f"'{name}' has frames of {width}x{height} pixels along its I and J axes: "
            "ApplePerturb reads frames in the volume's IJ plane, at least 2x2 pixels. "
            "Reformat the image so that its frames lie in that plane."
        )
    return None


def _frame_size_text(volume_node) -> str:
    height, width = frame_size(volume_node)
    return f"{width}x{height}"


class _IntensityMapping:
    """Map frames of one volume to uint8, with the mapping chosen from the whole volume."""

    def __init__(self, volume: np.ndarray):
        self.offset = 0.0
        self.scale: float | None = 1.0  # None: every value maps to 0
        self.keep = volume.dtype == np.uint8
        if self.keep:
            return

        finite = volume[np.isfinite(volume)] if np.issubdtype(volume.dtype, np.floating) else volume.ravel()
        if finite.size == 0:
            self.scale = None
            return
        low = float(finite.min())
        high = float(finite.max())
        if low >= 0 and high <= 255 and np.array_equal(finite, np.round(finite)):
            return  # whole numbers 0..255: cast as they are
        self.offset = low
        self.scale = 255.0 / (high - low) if high > low else None

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if self.keep:
            return frame.copy()
        if self.scale is None:
            return np.zeros(frame.shape, np.uint8)
        values = frame.astype(np.float64)
        finite = np.isfinite(values)
        scaled = (np.where(finite, values, self.offset) - self.offset) * self.scale
        mapped = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
        mapped[~finite] = 0
        return mapped


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    """Turn an ``(H, W)`` or ``(H, W, C)`` uint8 frame into ``(H, W, 3)``."""
    if frame.ndim == 2:
        return np.repeat(frame[:, :, np.newaxis], 3, axis=2)
    if frame.shape[2] == 1:
        return np.repeat(frame, 3, axis=2)
    return np.ascontiguousarray(frame[:, :, :3])
