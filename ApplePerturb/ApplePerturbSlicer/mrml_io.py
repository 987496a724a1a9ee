"""Masks in and out of Slicer segmentation nodes, and the module's public MRML functions.

Masks are bool ``(H, W)`` arrays on one frame of a volume: row y is the
volume's J index, column x its I index, and the frame is the slice K = k (see
``frames``). A segment written here is a binary labelmap on exactly the
reference volume's voxel grid (IJK-to-RAS matrix and extent). When the two
nodes are under different linear transforms, that grid is mapped into the
segmentation's node coordinates, so the segment overlays the image voxel for
voxel.

A cine clip (frames along K) gets one segmentation whose labelmap has K
slices: frame k's mask is slice k. :func:`write_frame_result` writes one frame
and leaves the other frames as they are, so a batch run that is cancelled keeps
every frame written so far.

This module imports only ``slicer`` (MRML), ``vtk`` and ``numpy``.
"""

from __future__ import annotations

import logging

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .frames import VolumeKind, check_image_node, describe_volume, frame_count, frame_image, frame_size, image_frames
from .geometry import propagate_box, roi_frame_index, roi_to_pixel_box, volume_ijk_to_node_matrix
from .results import metrics_to_plot, metrics_to_table, write_frame_row

__all__ = [
    "VolumeKind",
    "check_image_node",
    "describe_volume",
    "frame_count",
    "frame_image",
    "frame_size",
    "image_frames",
    "lesion_measurements",
    "mask_to_segmentation",
    "metrics_to_plot",
    "metrics_to_table",
    "propagate_box",
    "roi_frame_index",
    "roi_to_pixel_box",
    "segmentation_to_mask",
    "write_frame_result",
]

logger = logging.getLogger(__name__)

DEFAULT_SEGMENT_COLOR = (0.95, 0.55, 0.1)
_BINARY_LABELMAP = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()


def mask_to_segmentation(
    mask: np.ndarray,
    volume_node,
    segmentation_node,
    segment_name: str = "lesion",
    frame_index: int = 0,
    color: tuple[float, float, float] = DEFAULT_SEGMENT_COLOR,
) -> str:
    """Write a frame's mask into a segment named ``segment_name``.

    The segmentation's reference image geometry is set from ``volume_node``.
    A segment of that name is reused (its id and colour are kept) and its
    slice ``frame_index`` replaced; its other slices stay as they are.
    Otherwise a new segment with ``color`` (RGB, 0..1) is added.

    Args:
        mask: bool or 0/1 ``(H, W)`` array, the frame's size.
        volume_node: the image the mask was computed on.
        segmentation_node: a ``vtkMRMLSegmentationNode`` in the same scene.
        segment_name: name of the segment to write.
        frame_index: frame along K that the mask belongs to.
        color: colour of a newly added segment.

    Returns:
        The segment id.

    Raises:
        ValueError: for a node that is not an image, a missing frame, a mask
            of another shape, or a non-linear transform between the nodes.
        RuntimeError: if Slicer fails to add or write the segment.
    """
    check_image_node(volume_node, frame_index, batch=True)
    mask = _checked_mask(mask, volume_node)
    if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise ValueError("No segmentation node is selected to hold the result: create or choose one.")

    geometry = volume_ijk_to_node_matrix(volume_node, segmentation_node)
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    if segmentation_node.GetDisplayNode() is None and segmentation_node.GetScene() is not None:
        segmentation_node.CreateDefaultDisplayNodes()
    segment_id = _segment_id_for_name(segmentation_node, segment_name, color)

    if frame_count(volume_node) > 1:
        voxels = _segment_voxels(segmentation_node, segment_id, volume_node, geometry)
    else:
        voxels = np.zeros((1, *mask.shape), np.uint8)
    voxels[int(frame_index)] = mask

    labelmap = _oriented_labelmap(voxels, geometry)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(labelmap, segmentation_node, segment_id, logic.MODE_REPLACE, labelmap.GetExtent()):
        raise RuntimeError(f"Slicer could not write the mask into segment '{segment_name}' of '{segmentation_node.GetName()}'.")
    logger.debug("Wrote %d mask pixels to segment %s, frame %d", int(mask.sum()), segment_id, frame_index)
    return segment_id


def segmentation_to_mask(segmentation_node, segment_id: str, volume_node, frame_index: int = 0) -> np.ndarray:
    """Read one frame of a segment as a bool ``(H, W)`` mask on the volume's voxel grid.

    The segment's binary labelmap (converted from another representation if
    needed) is resampled onto ``volume_node``'s grid by nearest neighbour,
    which copies voxels exactly when the grids match, as for segments written
    by :func:`mask_to_segmentation`.

    Raises:
        ValueError: if the segment does not exist, or as :func:`mask_to_segmentation`.
    """
    check_image_node(volume_node, frame_index, batch=True)
    geometry = volume_ijk_to_node_matrix(volume_node, segmentation_node)
    voxels = _segment_voxels(segmentation_node, segment_id, volume_node, geometry)
    return voxels[int(frame_index)].astype(bool)


def lesion_measurements(mask: np.ndarray, volume_node, method: str = "auto") -> dict:
    """Measure the lesion area and perimeter of a frame's mask in millimetres.

    Pixel size comes from the volume's spacing (I spacing across columns,
    J spacing across rows); parent transforms are not applied.

    Args:
        mask: bool ``(H, W)`` mask on one frame of ``volume_node``.
        volume_node: the image; its spacing is used.
        method: perimeter method. "radiomics" uses PyRadiomics shape2D
            ``Perimeter``, the length of the marching-squares contour.
            "edges" counts the pixel edges between lesion and background,
            each scaled by its length in mm. It is exact for axis-aligned
            borders and longer on slanted ones (about 4/pi times the
            circumference for a circle). "auto" uses "radiomics" when
            PyRadiomics is importable, else "edges".

    Returns:
        ``{"area_mm2": pixels * spacing_x * spacing_y, "perimeter_mm": float,
        "perimeter_method": "radiomics" or "edges"}``; 0.0 for an empty mask.
    """
    if method not in ("auto", "radiomics", "edges"):
        raise ValueError(f"Unknown perimeter method '{method}': use 'auto', 'radiomics' or 'edges'.")
    check_image_node(volume_node, batch=True)
    mask = _checked_mask(mask, volume_node)
    spacing_x, spacing_y = (float(value) for value in volume_node.GetSpacing()[:2])

    if method == "auto":
        method = "radiomics" if _radiomics_available() else "edges"
    area = float(mask.sum()) * spacing_x * spacing_y
    if not mask.any():
        perimeter = 0.0
    elif method == "radiomics":
        perimeter = _radiomics_perimeter(mask, spacing_x, spacing_y)
    else:
        perimeter = _edge_perimeter(mask, spacing_x, spacing_y)
    return {"area_mm2": area, "perimeter_mm": perimeter, "perimeter_method": method}


def write_frame_result(
    mask: np.ndarray,
    volume_node,
    segmentation_node,
    frame_index: int,
    table_node=None,
    box: tuple[int, int, int, int] | None = None,
    segment_name: str = "lesion",
) -> str:
    """Write one finished frame of a batch run, keeping the frames written before.

    The mask goes into slice ``frame_index`` of the segment (see
    :func:`mask_to_segmentation`). With ``table_node``, the frame's row
    (area, perimeter, box prompt) is added or replaced (see
    ``results.write_frame_row``).

    Returns:
        The segment id.
    """
    segment_id = mask_to_segmentation(mask, volume_node, segmentation_node, segment_name, frame_index)
    if table_node is not None:
        write_frame_row(table_node, int(frame_index), lesion_measurements(mask, volume_node), box)
    return segment_id


def _checked_mask(mask, volume_node) -> np.ndarray:
    """Return ``mask`` as uint8 0/1 after checking its shape and values."""
    mask = np.asarray(mask)
    expected = frame_size(volume_node)
    if mask.shape != expected:
        raise ValueError(
            f"The mask has shape {mask.shape} but the frames of '{volume_node.GetName()}' "
            f"have shape {expected} (H, W): pass a mask computed on this image."
        )
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        raise ValueError(f"The mask must be bool or contain only 0 and 1, got values {np.unique(mask)[:5]}.")
    return mask.astype(np.uint8)


def _segment_id_for_name(segmentation_node, segment_name: str, color) -> str:
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(segment_name)
    if segment_id:
        return segment_id
    segment_id = segmentation.AddEmptySegment("", segment_name, list(color))
    if not segment_id:
        raise RuntimeError(
            f"Slicer could not add segment '{segment_name}' to '{segmentation_node.GetName()}': "
            "the segmentation converter rules are not registered."
        )
    return segment_id


def _segment_voxels(segmentation_node, segment_id: str, volume_node, geometry: vtk.vtkMatrix4x4) -> np.ndarray:
    """Return the segment as uint8 0/1 voxels ``(K, H, W)`` on the volume's grid."""
    segmentation = segmentation_node.GetSegmentation()
    if not segment_id or segmentation.GetSegment(segment_id) is None:
        names = [segmentation.GetSegment(sid).GetName() for sid in segmentation.GetSegmentIDs()]
        raise ValueError(
            f"Segment '{segment_id}' does not exist in '{segmentation_node.GetName()}' "
            f"(segments: {', '.join(names) or 'none'}): choose one of its segments."
        )
    if not segmentation.ContainsRepresentation(_BINARY_LABELMAP):
        segmentation_node.CreateBinaryLabelmapRepresentation()

    height, width = frame_size(volume_node)
    empty = np.zeros((frame_count(volume_node), height, width), np.uint8)
    segment_labelmap = slicer.vtkOrientedImageData()
    if not segmentation_node.GetBinaryLabelmapRepresentation(segment_id, segment_labelmap):
        raise RuntimeError(f"Slicer could not read segment '{segment_id}' of '{segmentation_node.GetName()}' as a labelmap.")
    extent = segment_labelmap.GetExtent()
    if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
        return empty  # an empty segment has an empty extent

    reference = _oriented_labelmap(empty, geometry)
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(segment_labelmap, reference, resampled, False, False)
    values = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars())
    return (values.reshape(empty.shape) > 0).astype(np.uint8)


def _oriented_labelmap(voxels: np.ndarray, geometry: vtk.vtkMatrix4x4):
    """Wrap uint8 voxels ``(K, H, W)`` as a ``vtkOrientedImageData`` with the given IJK-to-node matrix."""
    depth, height, width = voxels.shape
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetExtent(0, width - 1, 0, height - 1, 0, depth - 1)
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    scalars = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
    scalars[:] = np.ascontiguousarray(voxels, dtype=np.uint8).ravel()
    labelmap.SetGeometryFromImageToWorldMatrix(geometry)
    return labelmap


def _radiomics_available() -> bool:
    try:
        import radiomics.shape2D  # noqa: F401
    except ImportError:
        return False
    return True


def _radiomics_perimeter(mask: np.ndarray, spacing_x: float, spacing_y: float) -> float:
    import SimpleITK as sitk
    from radiomics import shape2D

    mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_image.SetSpacing((spacing_x, spacing_y))
    image = sitk.Cast(mask_image, sitk.sitkFloat32)
    features = shape2D.RadiomicsShape2D(image, mask_image, label=1)
    return float(features.getPerimeterFeatureValue())


def _edge_perimeter(mask: np.ndarray, spacing_x: float, spacing_y: float) -> float:
    padded = np.pad(mask.astype(bool), 1)
    vertical_edges = np.count_nonzero(padded[:, 1:] != padded[:, :-1])  # each is one pixel tall
    horizontal_edges = np.count_nonzero(padded[1:, :] != padded[:-1, :])  # each is one pixel wide
    return float(vertical_edges * spacing_y + horizontal_edges * spacing_x)
