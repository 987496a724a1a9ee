"""Tests of the Slicer MRML plumbing with real MRML nodes from the slicer-core wheel."""

from __future__ import annotations

import math

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")

from slicer_scene import add_linear_transform, add_roi, add_volume, mrml_scene  # noqa: E402,F401

from ApplePerturbSlicer import mrml_io  # noqa: E402
from ApplePerturbSlicer.mrml_io import VolumeKind  # noqa: E402

SPACED = np.array([[0.3, 0, 0, 12.0], [0, 0.3, 0, -7.0], [0, 0, 2.0, 4.0], [0, 0, 0, 1]])
# I runs towards -R and J towards -A, as in an LPS-stored image shown in RAS.
FLIPPED = np.array([[-0.3, 0, 0, 12.0], [0, -0.5, 0, -7.0], [0, 0, 1.5, 4.0], [0, 0, 0, 1]])


def _ras_of_pixel(ijk_to_ras: np.ndarray, i: float, j: float, k: float) -> np.ndarray:
    return (ijk_to_ras @ np.array([i, j, k, 1.0]))[:3]


def _roi_on_pixels(scene, ijk_to_ras, x0, y0, x1, y1, k=0, thickness_voxels=1.0, name="ROI", parent=None):
    """Add an ROI whose faces pass through the centres of pixels (x0, y0) and (x1, y1) of frame k."""
    corner_a = _ras_of_pixel(ijk_to_ras, x0, y0, k - thickness_voxels / 2)
    corner_b = _ras_of_pixel(ijk_to_ras, x1, y1, k + thickness_voxels / 2)
    return add_roi(scene, (corner_a + corner_b) / 2, np.abs(corner_b - corner_a), name, parent)


def _random_masks(count, shape, seed=0):
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(count):
        mask = np.zeros(shape, bool)
        y, x = rng.integers(2, shape[0] - 12), rng.integers(2, shape[1] - 12)
        mask[y:y + rng.integers(3, 10), x:x + rng.integers(3, 10)] = True
        mask ^= rng.random(shape) > 0.97  # isolated pixels test exactness
        masks.append(mask)
    return masks


# -- frames ------------------------------------------------------------------


def test_scalar_volume_single_frame(mrml_scene):
    voxels = np.random.default_rng(1).integers(0, 256, (1, 30, 40), dtype=np.uint8)
    volume = add_volume(mrml_scene, voxels)
    assert mrml_io.describe_volume(volume) is VolumeKind.SINGLE_FRAME
    assert mrml_io.frame_count(volume) == 1
    assert mrml_io.frame_size(volume) == (30, 40)
    frames = mrml_io.image_frames(volume)
    assert len(frames) == 1
    assert frames[0].shape == (30, 40, 3)
    assert frames[0].dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(frames[0][:, :, channel], voxels[0])


def test_rgb_vector_volume_frame(mrml_scene):
    voxels = np.random.default_rng(2).integers(0, 256, (1, 30, 40, 3), dtype=np.uint8)
    volume = add_volume(mrml_scene, voxels, vector=True)
    assert mrml_io.describe_volume(volume) is VolumeKind.SINGLE_FRAME
    np.testing.assert_array_equal(mrml_io.frame_image(volume), voxels[0])


def test_rgba_vector_volume_drops_alpha(mrml_scene):
    voxels = np.random.default_rng(3).integers(0, 256, (1, 20, 24, 4), dtype=np.uint8)
    volume = add_volume(mrml_scene, voxels, vector=True)
    np.testing.assert_array_equal(mrml_io.frame_image(volume), voxels[0, :, :, :3])


def test_multi_frame_volume_frames(mrml_scene):
    voxels = np.random.default_rng(4).integers(0, 256, (5, 20, 24), dtype=np.uint8)
    volume = add_volume(mrml_scene, voxels, FLIPPED)
    assert mrml_io.describe_volume(volume) is VolumeKind.MULTI_FRAME
    assert mrml_io.frame_count(volume) == 5
    frames = mrml_io.image_frames(volume)
    assert len(frames) == 5
    for k in range(5):
        np.testing.assert_array_equal(frames[k][:, :, 1], voxels[k])
    np.testing.assert_array_equal(mrml_io.frame_image(volume, 3)[:, :, 0], voxels[3])


def test_rgb_multi_frame_volume(mrml_scene):
    voxels = np.random.default_rng(5).integers(0, 256, (3, 10, 12, 3), dtype=np.uint8)
    volume = add_volume(mrml_scene, voxels, vector=True)
    frames = mrml_io.image_frames(volume)
    assert [frame.shape for frame in frames] == [(10, 12, 3)] * 3
    np.testing.assert_array_equal(frames[2], voxels[2])


def test_int16_in_byte_range_is_cast(mrml_scene):
    voxels = np.random.default_rng(6).integers(3, 250, (1, 10, 12)).astype(np.int16)
    volume = add_volume(mrml_scene, voxels)
    np.testing.assert_array_equal(mrml_io.frame_image(volume)[:, :, 0], voxels[0].astype(np.uint8))


def test_wide_range_rescaled_per_volume(mrml_scene):
    voxels = np.zeros((2, 4, 5), np.int16)
    voxels[0] = -1000
    voxels[1] = 3000
    voxels[1, 0, 0] = 1000  # half way
    volume = add_volume(mrml_scene, voxels)
    first, second = mrml_io.image_frames(volume)
    assert (first == 0).all()
    assert second[0, 0, 0] == 128  # (1000 + 1000) / 4000 * 255 = 127.5, rounded to even
    assert second[1, 1, 0] == 255


def test_float_nan_maps_to_zero(mrml_scene):
    voxels = np.linspace(0.0, 1.0, 20, dtype=np.float32).reshape(1, 4, 5)
    voxels[0, 2, 2] = np.nan
    volume = add_volume(mrml_scene, voxels)
    frame = mrml_io.frame_image(volume)[:, :, 0]
    assert frame[2, 2] == 0
    assert frame[0, 0] == 0
    assert frame[3, 4] == 255


def test_describe_rejects_non_images(mrml_scene):
    labelmap = add_volume(mrml_scene, np.zeros((1, 8, 8), np.uint8))
    labelmap_node = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lesion label")
    labelmap_node.SetAndObserveImageData(labelmap.GetImageData())
    model = mrml_scene.AddNewNodeByClass("vtkMRMLModelNode", "surface")
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    two_components = add_volume(mrml_scene, np.zeros((1, 8, 8, 2), np.uint8), vector=True, name="flow")

    for node in (None, labelmap_node, model, empty, two_components):
        assert mrml_io.describe_volume(node) is VolumeKind.NOT_AN_IMAGE

    with pytest.raises(ValueError, match="No image is selected"):
        mrml_io.check_image_node(None)
    with pytest.raises(ValueError, match="'lesion label' is a labelmap"):
        mrml_io.check_image_node(labelmap_node)
    with pytest.raises(ValueError, match="'surface' is a Model node"):
        mrml_io.check_image_node(model)
    with pytest.raises(ValueError, match="'empty' contains no voxels"):
        mrml_io.check_image_node(empty)
    with pytest.raises(ValueError, match="'flow' has 2 values per pixel"):
        mrml_io.frame_count(two_components)


def test_sequence_and_thin_volumes_rejected(mrml_scene):
    sequence = mrml_scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
    assert mrml_io.describe_volume(sequence) is VolumeKind.NOT_AN_IMAGE
    with pytest.raises(ValueError, match="'cine' is a sequence, not a single image"):
        mrml_io.check_image_node(sequence)
    # Frames of one row: a 2D image stored in the IK plane.
    column = add_volume(mrml_scene, np.zeros((20, 1, 30), np.uint8), name="sagittal line")
    assert mrml_io.describe_volume(column) is VolumeKind.NOT_AN_IMAGE
    with pytest.raises(ValueError, match="'sagittal line' has frames of 30x1 pixels"):
        mrml_io.check_image_node(column, batch=True)


def test_ct_like_volume_needs_frame_index(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((120, 64, 48), np.int16), name="CT chest")
    with pytest.raises(ValueError, match=r"'CT chest' has 120 slices of 48x64: .* choose one frame"):
        mrml_io.check_image_node(volume)
    assert mrml_io.check_image_node(volume, frame_index=7) is VolumeKind.MULTI_FRAME
    assert mrml_io.check_image_node(volume, batch=True) is VolumeKind.MULTI_FRAME
    with pytest.raises(ValueError, match="Frame 120 does not exist"):
        mrml_io.check_image_node(volume, frame_index=120)
    with pytest.raises(ValueError, match="Frame -1 does not exist"):
        mrml_io.frame_image(volume, -1)


def test_single_frame_rejects_other_frame(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="Frame 1 does not exist"):
        mrml_io.check_image_node(volume, frame_index=1)


# -- ROI to box prompt -------------------------------------------------------


def test_roi_box_plain_volume(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 40, 50), np.uint8))
    roi = add_roi(mrml_scene, (20, 10, 0), (10, 8, 1))
    assert mrml_io.roi_to_pixel_box(roi, volume) == (15, 6, 25, 14)


def test_roi_box_spaced_volume(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 40, 50), np.uint8), SPACED)
    roi = _roi_on_pixels(mrml_scene, SPACED, 10, 5, 30, 20)
    assert mrml_io.roi_to_pixel_box(roi, volume) == (10, 5, 30, 20)


def test_roi_box_between_pixel_centres(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 40, 50), np.uint8), SPACED)
    # Faces 0.4 pixel inside the pixel centres 10 and 30: pixels 10 and 30 are left out.
    roi = _roi_on_pixels(mrml_scene, SPACED, 10.4, 5.4, 29.6, 19.6)
    assert mrml_io.roi_to_pixel_box(roi, volume) == (11, 6, 29, 19)


def test_roi_box_flipped_volume(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 40, 50), np.uint8), FLIPPED)
    roi = _roi_on_pixels(mrml_scene, FLIPPED, 10, 5, 30, 20)
    center = roi.GetCenter()
    # The ROI's low RAS corner is at the high pixel indices.
    assert center[0] < FLIPPED[0, 3]
    assert mrml_io.roi_to_pixel_box(roi, volume) == (10, 5, 30, 20)


def test_roi_box_parent_transform_on_roi(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 40, 50), np.uint8), SPACED)
    shift = np.eye(4)
    shift[:3, 3] = (3.0, -1.5, 0.0)  # 10 and -5 pixels of 0.3 mm
    transform = add_linear_transform(mrml_scene, shift)
    # In node coordinates the ROI sits on pixels (10..30, 5..20); the transform moves it in world.
    roi = _roi_on_pixels(mrml_scene, SPACED, 10, 5, 30, 20, parent=transform)
    assert mrml_io.roi_to_pixel_box(roi, volume) == (20, 0, 40, 15)


def test_roi_box_transforms_on_both(mrml_scene):
    volume_shift = np.eye(4)
    volume_shift[:3, 3] = (-3.0, 0.0, 0.0)
    volume = add_volume(mrml_scene, np.zeros((1, 40, 50), np.uint8), SPACED)
    volume.SetAndObserveTransformNodeID(add_linear_transform(mrml_scene, volume_shift, "probe").GetID())
    roi_shift = np.eye(4)
    roi_shift[:3, 3] = (3.0, 0.0, 0.0)
    roi = _roi_on_pixels(mrml_scene, SPACED, 10, 5, 30, 20, parent=add_linear_transform(mrml_scene, roi_shift, "roi"))
    # World shift of the ROI +3 mm, of the image -3 mm: 20 pixels apart, clipped at 49.
    assert mrml_io.roi_to_pixel_box(roi, volume) == (30, 5, 49, 20)


def test_roi_box_rotated_parent(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 60, 60), np.uint8))
    rotation = np.eye(4)
    rotation[:2, :2] = [[0, -1], [1, 0]]  # 90 degrees about S: (x, y) -> (-y, x)
    rotation[:3, 3] = (40.0, 0.0, 0.0)
    roi = add_roi(mrml_scene, (10, 10, 0), (20, 6, 1), parent_transform=add_linear_transform(mrml_scene, rotation))
    # World corners: x = 40 - y in 7..13 -> 27..33; y = x in 0..20.
    assert mrml_io.roi_to_pixel_box(roi, volume) == (27, 0, 33, 20)


def test_roi_box_clipped_to_image(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 40, 50), np.uint8))
    roi = add_roi(mrml_scene, (45, -2, 0), (20, 20, 1))
    assert mrml_io.roi_to_pixel_box(roi, volume) == (35, 0, 49, 8)


def test_roi_box_on_cine_frame(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((6, 40, 50), np.uint8), FLIPPED, name="clip")
    roi = _roi_on_pixels(mrml_scene, FLIPPED, 10, 5, 30, 20, k=3, thickness_voxels=0.2)
    assert mrml_io.roi_frame_index(roi, volume) == 3
    assert mrml_io.roi_to_pixel_box(roi, volume, frame_index=3) == (10, 5, 30, 20)
    with pytest.raises(ValueError, match="lies on frame 3 of 'clip', not on frame 1"):
        mrml_io.roi_to_pixel_box(roi, volume, frame_index=1)
    with pytest.raises(ValueError, match="choose one frame"):
        mrml_io.roi_to_pixel_box(roi, volume)


def test_roi_off_the_image_plane(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 40, 50), np.uint8), name="thyroid")
    roi = add_roi(mrml_scene, (20, 10, 5), (10, 8, 1))
    with pytest.raises(ValueError, match="lies off the image plane of 'thyroid'"):
        mrml_io.roi_to_pixel_box(roi, volume)
    with pytest.raises(ValueError, match="not on any of the 1 frame"):
        mrml_io.roi_frame_index(roi, volume)


def test_roi_outside_image(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 40, 50), np.uint8))
    roi = add_roi(mrml_scene, (100, 10, 0), (10, 8, 1))
    with pytest.raises(ValueError, match="does not overlap the image .* move it onto the lesion"):
        mrml_io.roi_to_pixel_box(roi, volume)


def test_roi_too_small(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 40, 50), np.uint8))
    roi = add_roi(mrml_scene, (20.5, 10, 0), (0.8, 8, 1))
    with pytest.raises(ValueError, match="covers less than 2 pixels"):
        mrml_io.roi_to_pixel_box(roi, volume)


def test_roi_not_placed(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 40, 50), np.uint8))
    roi = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "new ROI")
    with pytest.raises(ValueError, match="'new ROI' is not placed"):
        mrml_io.roi_to_pixel_box(roi, volume)
    with pytest.raises(ValueError, match="No box ROI is selected"):
        mrml_io.roi_to_pixel_box(None, volume)
    fiducials = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    with pytest.raises(ValueError, match="No box ROI is selected"):
        mrml_io.roi_to_pixel_box(fiducials, volume)


# -- masks and segmentations -------------------------------------------------


def _new_segmentation(scene, name="result"):
    return scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)


def test_mask_round_trip_plain(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 30, 40), np.uint8))
    segmentation = _new_segmentation(mrml_scene)
    mask = _random_masks(1, (30, 40))[0]
    segment_id = mrml_io.mask_to_segmentation(mask, volume, segmentation)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    assert segmentation.GetSegmentation().GetSegment(segment_id).GetName() == "lesion"
    np.testing.assert_array_equal(mrml_io.segmentation_to_mask(segmentation, segment_id, volume), mask)
    # Slicer's own exporter gives the same voxels on the reference grid.
    exported = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)
    np.testing.assert_array_equal(exported[0] > 0, mask)


@pytest.mark.parametrize("ijk_to_ras", [SPACED, FLIPPED], ids=["spaced", "flipped"])
def test_mask_round_trip_cine(mrml_scene, ijk_to_ras):
    volume = add_volume(mrml_scene, np.zeros((4, 30, 40), np.uint8), ijk_to_ras)
    segmentation = _new_segmentation(mrml_scene)
    masks = _random_masks(4, (30, 40), seed=7)
    for k in (2, 0, 3, 1):
        segment_id = mrml_io.mask_to_segmentation(masks[k], volume, segmentation, frame_index=k)
    for k in range(4):
        np.testing.assert_array_equal(mrml_io.segmentation_to_mask(segmentation, segment_id, volume, k), masks[k])
    exported = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)
    np.testing.assert_array_equal(exported > 0, np.stack(masks))


def test_mask_round_trip_transformed_volume(mrml_scene):
    matrix = np.eye(4)
    matrix[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    matrix[:3, 3] = (5.0, -3.0, 2.0)
    volume = add_volume(mrml_scene, np.zeros((2, 30, 40), np.uint8), FLIPPED)
    volume.SetAndObserveTransformNodeID(add_linear_transform(mrml_scene, matrix).GetID())
    segmentation = _new_segmentation(mrml_scene)
    masks = _random_masks(2, (30, 40), seed=8)
    for k in range(2):
        segment_id = mrml_io.mask_to_segmentation(masks[k], volume, segmentation, frame_index=k)
    for k in range(2):
        np.testing.assert_array_equal(mrml_io.segmentation_to_mask(segmentation, segment_id, volume, k), masks[k])
    exported = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)
    np.testing.assert_array_equal(exported > 0, np.stack(masks))


def test_mask_round_trip_transformed_segmentation(mrml_scene):
    shift = np.eye(4)
    shift[:3, 3] = (1.2, -0.6, 4.0)
    volume = add_volume(mrml_scene, np.zeros((2, 30, 40), np.uint8), SPACED)
    segmentation = _new_segmentation(mrml_scene)
    segmentation.SetAndObserveTransformNodeID(add_linear_transform(mrml_scene, shift).GetID())
    masks = _random_masks(2, (30, 40), seed=13)
    for k in range(2):
        segment_id = mrml_io.mask_to_segmentation(masks[k], volume, segmentation, frame_index=k)
    for k in range(2):
        np.testing.assert_array_equal(mrml_io.segmentation_to_mask(segmentation, segment_id, volume, k), masks[k])
    exported = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)
    np.testing.assert_array_equal(exported > 0, np.stack(masks))


def test_mask_nonlinear_transform_rejected(mrml_scene):
    import vtk

    source = vtk.vtkPoints()
    target = vtk.vtkPoints()
    for point, moved in (((0, 0, 0), (0, 0, 0)), ((10, 0, 0), (11, 1, 0)), ((0, 10, 0), (0, 10, 0)), ((0, 0, 10), (0, 0, 10))):
        source.InsertNextPoint(point)
        target.InsertNextPoint(moved)
    warp = vtk.vtkThinPlateSplineTransform()
    warp.SetSourceLandmarks(source)
    warp.SetTargetLandmarks(target)
    warp.SetBasisToR()
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    transform.SetAndObserveTransformToParent(warp)
    volume = add_volume(mrml_scene, np.zeros((1, 30, 40), np.uint8), name="frame")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    segmentation = _new_segmentation(mrml_scene)
    with pytest.raises(ValueError, match="between 'frame' and 'result' is not linear"):
        mrml_io.mask_to_segmentation(np.zeros((30, 40), bool), volume, segmentation)


def test_mask_on_rgb_volume(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 30, 40, 3), np.uint8), SPACED, vector=True)
    segmentation = _new_segmentation(mrml_scene)
    mask = _random_masks(1, (30, 40), seed=9)[0]
    segment_id = mrml_io.mask_to_segmentation(mask, volume, segmentation)
    np.testing.assert_array_equal(mrml_io.segmentation_to_mask(segmentation, segment_id, volume), mask)


def test_mask_replaces_segment_of_same_name(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 30, 40), np.uint8))
    segmentation = _new_segmentation(mrml_scene)
    first, second = _random_masks(2, (30, 40), seed=10)
    other_id = mrml_io.mask_to_segmentation(first, volume, segmentation, segment_name="thyroid", color=(0, 1, 0))
    lesion_id = mrml_io.mask_to_segmentation(first, volume, segmentation, color=(1, 0, 0))
    assert mrml_io.mask_to_segmentation(second, volume, segmentation) == lesion_id
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 2
    np.testing.assert_array_equal(mrml_io.segmentation_to_mask(segmentation, lesion_id, volume), second)
    np.testing.assert_array_equal(mrml_io.segmentation_to_mask(segmentation, other_id, volume), first)
    assert segmentation.GetSegmentation().GetSegment(lesion_id).GetColor() == (1.0, 0.0, 0.0)
    mrml_io.mask_to_segmentation(np.zeros((30, 40), bool), volume, segmentation)
    assert not mrml_io.segmentation_to_mask(segmentation, lesion_id, volume).any()


def test_segmentation_reference_geometry(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 30, 40), np.uint8), FLIPPED)
    segmentation = _new_segmentation(mrml_scene)
    mrml_io.mask_to_segmentation(np.ones((30, 40), bool), volume, segmentation)
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert segmentation.GetNodeReference(role) is volume
    assert segmentation.GetDisplayNode() is not None


def test_mask_errors(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((2, 30, 40), np.uint8), name="clip")
    segmentation = _new_segmentation(mrml_scene)
    with pytest.raises(ValueError, match=r"shape \(40, 30\) but the frames of 'clip' have shape \(30, 40\)"):
        mrml_io.mask_to_segmentation(np.zeros((40, 30), bool), volume, segmentation)
    with pytest.raises(ValueError, match="only 0 and 1"):
        mrml_io.mask_to_segmentation(np.full((30, 40), 2), volume, segmentation)
    with pytest.raises(ValueError, match="Frame 2 does not exist"):
        mrml_io.mask_to_segmentation(np.zeros((30, 40), bool), volume, segmentation, frame_index=2)
    with pytest.raises(ValueError, match="No segmentation node"):
        mrml_io.mask_to_segmentation(np.zeros((30, 40), bool), volume, volume)
    with pytest.raises(ValueError, match=r"Segment 'nothing' does not exist in 'result' \(segments: none\)"):
        mrml_io.segmentation_to_mask(segmentation, "nothing", volume)
    mrml_io.mask_to_segmentation(np.zeros((30, 40), bool), volume, segmentation)
    with pytest.raises(ValueError, match="segments: lesion"):
        mrml_io.segmentation_to_mask(segmentation, "", volume)


def test_segmentation_file_round_trip(mrml_scene, tmp_path):
    volume = add_volume(mrml_scene, np.zeros((3, 30, 40), np.uint8), FLIPPED)
    segmentation = _new_segmentation(mrml_scene)
    masks = _random_masks(3, (30, 40), seed=11)
    for k in range(3):
        mrml_io.mask_to_segmentation(masks[k], volume, segmentation, frame_index=k)
    path = tmp_path / "result.seg.nrrd"
    storage = segmentation.CreateDefaultStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(segmentation)
    assert path.stat().st_size > 0

    loaded = _new_segmentation(mrml_scene, "loaded")
    reader = slicer.vtkMRMLSegmentationStorageNode()
    reader.SetFileName(str(path))
    assert reader.ReadData(loaded)
    loaded_id = loaded.GetSegmentation().GetSegmentIdBySegmentName("lesion")
    assert loaded_id
    for k in range(3):
        np.testing.assert_array_equal(mrml_io.segmentation_to_mask(loaded, loaded_id, volume, k), masks[k])


def test_frame_writing_keeps_earlier_frames(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((6, 30, 40), np.uint8), SPACED, name="clip")
    segmentation = _new_segmentation(mrml_scene)
    table = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode", "frames")
    masks = _random_masks(6, (30, 40), seed=12)
    stop_after = 2
    for k, mask in enumerate(masks):
        box = (k, k + 1, k + 10, k + 11)
        segment_id = mrml_io.write_frame_result(mask, volume, segmentation, k, table_node=table, box=box)
        if k == stop_after:
            break  # the user cancelled the run

    for k in range(6):
        expected = masks[k] if k <= stop_after else np.zeros((30, 40), bool)
        np.testing.assert_array_equal(mrml_io.segmentation_to_mask(segmentation, segment_id, volume, k), expected)
    vtk_table = table.GetTable()
    assert vtk_table.GetNumberOfRows() == 3
    frames = slicer.util.arrayFromTableColumn(table, "frame")
    np.testing.assert_array_equal(frames, [0, 1, 2])
    areas = slicer.util.arrayFromTableColumn(table, "area_mm2")
    np.testing.assert_allclose(areas, [mask.sum() * 0.09 for mask in masks[:3]])
    np.testing.assert_array_equal(slicer.util.arrayFromTableColumn(table, "x1"), [10, 11, 12])

    # Running frame 1 again replaces its row instead of adding one.
    mrml_io.write_frame_result(masks[5], volume, segmentation, 1, table_node=table)
    assert vtk_table.GetNumberOfRows() == 3
    assert slicer.util.arrayFromTableColumn(table, "area_mm2")[1] == pytest.approx(masks[5].sum() * 0.09)
    assert slicer.util.arrayFromTableColumn(table, "x0")[1] == -1
    np.testing.assert_array_equal(mrml_io.segmentation_to_mask(segmentation, segment_id, volume, 1), masks[5])
    np.testing.assert_array_equal(mrml_io.segmentation_to_mask(segmentation, segment_id, volume, 2), masks[2])


def test_propagate_box():
    mask = np.zeros((30, 40), bool)
    mask[10:15, 20:26] = True
    assert mrml_io.propagate_box(mask, 3, (30, 40)) == (17, 7, 28, 17)
    assert mrml_io.propagate_box(mask, 0, (30, 40)) == (20, 10, 25, 14)
    assert mrml_io.propagate_box(mask, 20, (30, 40)) == (0, 0, 39, 29)
    assert mrml_io.propagate_box(np.zeros((30, 40), bool), 3, (30, 40)) is None
    assert mrml_io.propagate_box(None, 3, (30, 40)) is None
    with pytest.raises(ValueError, match="margin_px must be 0 or more"):
        mrml_io.propagate_box(mask, -1, (30, 40))
    with pytest.raises(ValueError, match="2D"):
        mrml_io.propagate_box(mask[None], 1, (30, 40))


# -- measurements ------------------------------------------------------------


def test_lesion_measurements_rectangle(mrml_scene):
    spacing = np.diag([0.5, 0.25, 1.0, 1.0])
    volume = add_volume(mrml_scene, np.zeros((1, 30, 40), np.uint8), spacing)
    mask = np.zeros((30, 40), bool)
    mask[10:20, 5:25] = True  # 20 columns x 10 rows = 10 mm x 2.5 mm

    edges = mrml_io.lesion_measurements(mask, volume, method="edges")
    assert edges["area_mm2"] == pytest.approx(25.0)
    assert edges["perimeter_mm"] == pytest.approx(25.0)
    assert edges["perimeter_method"] == "edges"

    pytest.importorskip("radiomics")
    contour = mrml_io.lesion_measurements(mask, volume, method="radiomics")
    assert contour["area_mm2"] == pytest.approx(25.0)
    assert 0.9 * 25.0 < contour["perimeter_mm"] < 25.0  # the contour cuts the corners
    assert mrml_io.lesion_measurements(mask, volume)["perimeter_method"] == "radiomics"


def test_lesion_measurements_circle_methods_differ(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 101, 101), np.uint8))
    rows, columns = np.mgrid[:101, :101]
    mask = (rows - 50) ** 2 + (columns - 50) ** 2 <= 40 ** 2
    edges = mrml_io.lesion_measurements(mask, volume, method="edges")["perimeter_mm"]
    assert edges == pytest.approx(4 * 2 * 40.5, rel=0.02)  # a staircase circle is as long as its square
    pytest.importorskip("radiomics")
    contour = mrml_io.lesion_measurements(mask, volume, method="radiomics")["perimeter_mm"]
    # The marching-squares contour of a pixelated circle is a few per cent longer than 2 pi r.
    assert 2 * math.pi * 40 < contour < 1.1 * 2 * math.pi * 40
    assert contour < 0.85 * edges


def test_lesion_measurements_empty_and_errors(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((1, 10, 12), np.uint8))
    empty = mrml_io.lesion_measurements(np.zeros((10, 12), bool), volume)
    assert empty["area_mm2"] == 0.0
    assert empty["perimeter_mm"] == 0.0
    with pytest.raises(ValueError, match="Unknown perimeter method 'snake'"):
        mrml_io.lesion_measurements(np.zeros((10, 12), bool), volume, method="snake")
    with pytest.raises(ValueError, match="shape"):
        mrml_io.lesion_measurements(np.zeros((12, 10), bool), volume)


# -- metrics table and chart -------------------------------------------------


@pytest.fixture
def evaluation_metrics():
    metrics = pytest.importorskip("ApplePerturbLib.metrics")
    groups = ["female"] * 4 + ["male"] * 3 + [None]
    base = metrics.fairness_metrics([0.9, 0.8, 0.85, 0.95, 0.6, 0.7, 0.65, 0.5], groups, ["female", "male"])
    apple = metrics.fairness_metrics([0.88, 0.8, 0.84, 0.9, 0.72, 0.75, 0.7, 0.55], groups, ["female", "male"])
    return {"base": base, "apple": apple, "attribute": "sex"}


def _table_rows(table_node) -> dict[str, dict[str, float]]:
    table = table_node.GetTable()
    columns = [table.GetColumnName(index) for index in range(table.GetNumberOfColumns())]
    rows = {}
    for row in range(table.GetNumberOfRows()):
        label = table.GetValueByName(row, "metric").ToString()
        rows[label] = {name: table.GetValueByName(row, name).ToDouble() for name in columns if name not in ("metric", "better")}
    return rows


def test_metrics_table_values(mrml_scene, evaluation_metrics):
    table = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode", "fairness")
    mrml_io.metrics_to_table(evaluation_metrics, table)
    rows = _table_rows(table)
    base, apple = evaluation_metrics["base"], evaluation_metrics["apple"]

    assert list(rows)[:2] == ["images (n)", "Dice overall"]
    assert rows["images (n)"]["base"] == 8
    assert rows["n (female)"]["base"] == 4
    assert rows["n (male)"]["APPLE"] == 3
    assert rows["Dice (female)"]["base"] == pytest.approx(base["groups"]["female"]["dsc"])
    assert rows["Dice (male)"]["APPLE"] == pytest.approx(apple["groups"]["male"]["dsc"])
    delta = rows["DSC_delta (max - min group Dice)"]
    assert delta["base"] == pytest.approx(base["dsc_delta"])
    assert delta["APPLE"] == pytest.approx(apple["dsc_delta"])
    assert delta["change"] == pytest.approx(apple["dsc_delta"] - base["dsc_delta"])
    assert rows["DSC_std (std of group Dice)"]["base"] == pytest.approx(base["dsc_std"])
    assert rows["DSC_skew"]["APPLE"] == pytest.approx(apple["dsc_skew"])
    assert rows["ES-Dice"]["change"] == pytest.approx(apple["es_dice"] - base["es_dice"])
    assert table.GetAttribute("ApplePerturb.attribute") == "sex"


def test_metrics_table_without_apple(mrml_scene, evaluation_metrics):
    table = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode")
    mrml_io.metrics_to_table({**evaluation_metrics, "apple": None}, table)
    names = [table.GetColumnName(index) for index in range(table.GetNumberOfColumns())]
    assert names == ["metric", "better", "base"]
    assert _table_rows(table)["ES-Dice"]["base"] == pytest.approx(evaluation_metrics["base"]["es_dice"])


def test_metrics_table_missing_group_value(mrml_scene):
    metrics = pytest.importorskip("ApplePerturbLib.metrics")
    base = metrics.fairness_metrics([0.8, 0.7], ["female", "female"], ["female", "male"])
    table = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode")
    mrml_io.metrics_to_table({"base": base, "apple": None, "attribute": "sex"}, table)
    rows = _table_rows(table)
    assert rows["n (male)"]["base"] == 0
    assert math.isnan(rows["Dice (male)"]["base"])


def test_metrics_table_bad_input(mrml_scene, evaluation_metrics):
    table = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode")
    with pytest.raises(ValueError, match="no 'base' entry"):
        mrml_io.metrics_to_table({"apple": None}, table)
    broken = {key: value for key, value in evaluation_metrics["base"].items() if key != "es_dice"}
    with pytest.raises(ValueError, match="'base' metrics lack es_dice"):
        mrml_io.metrics_to_table({"base": broken}, table)


def test_metrics_plot_series(mrml_scene, evaluation_metrics):
    table = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode", "group Dice")
    chart = mrml_scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "fairness chart")
    series = mrml_io.metrics_to_plot(evaluation_metrics, table, chart)

    assert len(series) == 2
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    for node, column in zip(series, ("base", "APPLE")):
        assert node.GetPlotType() == node.PlotTypeBar
        assert node.GetYColumnName() == column
        assert node.GetLabelColumnName() == "group"
        assert node.GetTableNode() is table
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, "APPLE"),
                               [evaluation_metrics["apple"]["groups"][g]["dsc"] for g in ("female", "male")])
    assert chart.GetYAxisRange() == (0.0, 1.0)

    again = mrml_io.metrics_to_plot(evaluation_metrics, table, chart)
    assert [node.GetID() for node in again] == [node.GetID() for node in series]
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 2

    mrml_io.metrics_to_plot({**evaluation_metrics, "apple": None}, table, chart)
    assert chart.GetNumberOfPlotSeriesNodes() == 1


def test_metrics_plot_needs_scene(mrml_scene, evaluation_metrics):
    table = slicer.vtkMRMLTableNode()
    chart = slicer.vtkMRMLPlotChartNode()
    with pytest.raises(ValueError, match="same MRML scene"):
        mrml_io.metrics_to_plot(evaluation_metrics, table, chart)
