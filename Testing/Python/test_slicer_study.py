"""Batch segmentation plumbing (ApplePerturbSlicer.study) on real MRML nodes from slicer-core.

The frame segmenter here is a real but simple one: pixels whose 5x5 mean is
darker than a threshold, inside the box prompt. It lets the tests check the propagation
order, the boxes each frame receives, what is written into segmentations,
sequences and tables, and the error cases, in milliseconds per frame.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("slicer", reason="slicer-core is needed for MRML nodes")
import slicer  # noqa: E402
from slicer_scene import add_roi, add_volume, mrml_scene  # noqa: E402,F401

from ApplePerturbSlicer.mrml_io import segmentation_to_mask  # noqa: E402
from ApplePerturbSlicer.study import PromptMode, image_volumes, iter_study, plan_study  # noqa: E402
from ApplePerturbSlicer.synthetic_image import syntheticFrame  # noqa: E402


def threshold_segmenter(calls):
    """Return a frame segmenter that keeps dark pixels inside the box and records each call."""

    def segment(volume, frame_index, box):
        calls.append((volume.GetName(), frame_index, box))
        frame = ndimage.uniform_filter(slicer.util.arrayFromVolume(volume)[frame_index].astype(float), size=5)
        dark = frame < 90  # lesion mean about 38, tissue mean about 150
        if box is None:
            return dark
        mask = np.zeros(frame.shape, bool)
        x0, y0, x1, y1 = box
        mask[y0:y1 + 1, x0:x1 + 1] = dark[y0:y1 + 1, x0:x1 + 1]
        return mask

    return segment


def moving_lesion_clip(count=4, step=8):
    """Frames (K, 128, 128) with a lesion moving down by ``step`` pixels per frame, and its masks."""
    pairs = [syntheticFrame((128, 128), center=(64, 40 + step * k), radii=(18, 12), seed=k) for k in range(count)]
    frames, truths = zip(*pairs)
    return np.stack(frames), list(truths)


def roi_around(mask, frame=0, margin=4, spacing=(1.0, 1.0, 1.0)):
    """Centre (RAS) and size (mm) of an ROI around a mask on a volume with IJK-to-RAS diag(spacing)."""
    rows, columns = np.nonzero(mask)
    low = np.array([columns.min() - margin, rows.min() - margin, frame - 0.4]) * spacing
    high = np.array([columns.max() + margin, rows.max() + margin, frame + 0.4]) * spacing
    return (low + high) / 2, high - low


def dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_propagation_follows_moving_lesion(mrml_scene):
    frames, truths = moving_lesion_clip()
    volume = add_volume(mrml_scene, frames, name="clip")
    roi = add_roi(mrml_scene, *roi_around(truths[0]))
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")

    clips = plan_study(volume, segmentation, roi, PromptMode.PROPAGATE)
    calls = []
    outcomes = list(iter_study(clips, threshold_segmenter(calls), PromptMode.PROPAGATE, margin_px=6))

    assert [o.prompt for o in outcomes] == ["ROI", "propagated", "propagated", "propagated"]
    assert [o.done for o in outcomes] == [1, 2, 3, 4]
    assert all(o.total == 4 for o in outcomes)
    segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName("lesion")
    for k, truth in enumerate(truths):
        mask = segmentation_to_mask(segmentation, segment_id, volume, k)
        assert dice(mask, truth) > 0.8, f"frame {k}"
    # Each propagated box is the previous mask's box grown by the margin: it moves down with the lesion.
    propagated_tops = [box[1] for _, _, box in calls[1:]]
    assert propagated_tops == sorted(propagated_tops)
    assert propagated_tops[-1] - propagated_tops[0] >= 12


def test_same_roi_box_on_every_frame(mrml_scene):
    frames, truths = moving_lesion_clip(count=3, step=4)
    volume = add_volume(mrml_scene, frames, name="clip")
    roi = add_roi(mrml_scene, *roi_around(truths[1], frame=1, margin=12))
    clips = plan_study(volume, None, roi, PromptMode.ROI)
    calls = []
    list(iter_study(clips, threshold_segmenter(calls), PromptMode.ROI))

    assert clips[0].start == 1, "the clip starts on the frame the ROI was drawn on"
    assert [frame for _, frame, _ in calls] == [1, 2, 0]
    assert len({box for _, _, box in calls}) == 1
    assert clips[0].tasks[0].segmentation.GetName().startswith("clip lesion")


def test_table_gets_one_row_per_frame(mrml_scene):
    frames, truths = moving_lesion_clip(count=3)
    volume = add_volume(mrml_scene, frames, name="clip")
    volume.SetSpacing(0.5, 0.25, 1.0)
    roi = add_roi(mrml_scene, *roi_around(truths[0], spacing=(0.5, 0.25, 1.0)))
    clips = plan_study(volume, None, roi, PromptMode.PROPAGATE)
    outcomes = list(iter_study(clips, threshold_segmenter([]), PromptMode.PROPAGATE))

    table = clips[0].table.GetTable()
    assert table.GetNumberOfRows() == 3
    areas = [table.GetColumnByName("area_mm2").GetValue(row) for row in range(3)]
    expected = [float(o.measurements["area_mm2"]) for o in sorted(outcomes, key=lambda o: o.position)]
    assert areas == pytest.approx(expected)
    assert areas[0] == pytest.approx(truths[0].sum() * 0.5 * 0.25, rel=0.2)


def test_empty_previous_mask_falls_back_to_roi(mrml_scene):
    frames, truths = moving_lesion_clip(count=3)
    frames[1] = 200  # frame 1 has no dark lesion: its mask is empty
    volume = add_volume(mrml_scene, frames, name="clip")
    roi = add_roi(mrml_scene, *roi_around(truths[0], margin=20))
    clips = plan_study(volume, None, roi, PromptMode.PROPAGATE)
    outcomes = list(iter_study(clips, threshold_segmenter([]), PromptMode.PROPAGATE))
    assert [o.prompt for o in outcomes] == ["ROI", "propagated", "ROI (previous mask empty)"]


def test_list_of_images_gets_one_segmentation_each(mrml_scene):
    images = []
    for seed in range(3):
        frame, truth = syntheticFrame((96, 96), center=(48, 48), radii=(15, 10), seed=seed)
        images.append(add_volume(mrml_scene, frame[np.newaxis], name=f"image {seed}"))
    roi = add_roi(mrml_scene, *roi_around(truth, margin=6))
    clips = plan_study(images, None, roi, PromptMode.ROI)
    outcomes = list(iter_study(clips, threshold_segmenter([]), PromptMode.ROI))
    assert [clip.name for clip in clips] == ["image 0", "image 1", "image 2"]
    segmentations = {clip.tasks[0].segmentation.GetID() for clip in clips}
    assert len(segmentations) == 3
    assert [o.total for o in outcomes] == [3, 3, 3]


def test_sequence_items_are_segmented_into_a_segmentation_sequence(mrml_scene):
    frames, truths = moving_lesion_clip(count=3)
    sequence = mrml_scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
    for k in range(3):
        item = slicer.vtkMRMLScalarVolumeNode()
        item.SetName(f"frame {k}")
        slicer.util.updateVolumeFromArray(item, frames[k][np.newaxis])
        sequence.SetDataNodeAtValue(item, str(k))
    browser = mrml_scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    proxy = add_volume(mrml_scene, frames[0][np.newaxis], name="cine proxy")
    browser.AddProxyNode(proxy, sequence, False)
    roi = add_roi(mrml_scene, *roi_around(truths[0]))

    clips = plan_study(proxy, None, roi, PromptMode.PROPAGATE)
    outcomes = list(iter_study(clips, threshold_segmenter([]), PromptMode.PROPAGATE, margin_px=6))

    assert len(outcomes) == 3
    output = clips[0].tasks[0].sequence
    assert output.GetNumberOfDataNodes() == 3
    assert browser.IsSynchronizedSequenceNode(output, True)
    for k, truth in enumerate(truths):
        item = output.GetDataNodeAtValue(str(k))
        segment_id = item.GetSegmentation().GetSegmentIdBySegmentName("lesion")
        mask = segmentation_to_mask(item, segment_id, sequence.GetNthDataNode(k), 0)
        assert dice(mask, truth) > 0.8, f"item {k}"


def test_no_prompt_mode_passes_no_box(mrml_scene):
    frames, _ = moving_lesion_clip(count=2)
    volume = add_volume(mrml_scene, frames, name="clip")
    clips = plan_study(volume, None, None, PromptMode.NONE)
    calls = []
    list(iter_study(clips, threshold_segmenter(calls), PromptMode.NONE))
    assert [box for _, _, box in calls] == [None, None]


def test_missing_roi_raises(mrml_scene):
    frames, _ = moving_lesion_clip(count=2)
    volume = add_volume(mrml_scene, frames, name="clip")
    with pytest.raises(ValueError, match="place an ROI"):
        plan_study(volume, None, None, PromptMode.PROPAGATE)


def test_roi_off_the_image_raises_before_writing(mrml_scene):
    frames, _ = moving_lesion_clip(count=2)
    volume = add_volume(mrml_scene, frames, name="clip")
    roi = add_roi(mrml_scene, (900.0, 900.0, 0.0), (10.0, 10.0, 0.8))
    nodes_before = mrml_scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="does not overlap"):
        plan_study(volume, None, roi, PromptMode.ROI)
    assert mrml_scene.GetNumberOfNodes() == nodes_before, "nodes created before the error are removed"


def test_error_in_second_image_removes_first_outputs(mrml_scene):
    frames, truths = moving_lesion_clip(count=1)
    first = add_volume(mrml_scene, frames, name="first")
    second = add_volume(mrml_scene, frames, name="second")
    second.SetOrigin(500.0, 500.0, 0.0)  # the ROI lies on the first image only
    roi = add_roi(mrml_scene, *roi_around(truths[0]))
    nodes_before = mrml_scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="second"):
        plan_study([first, second], None, roi, PromptMode.ROI)
    assert mrml_scene.GetNumberOfNodes() == nodes_before


def test_negative_margin_raises(mrml_scene):
    frames, truths = moving_lesion_clip(count=2)
    volume = add_volume(mrml_scene, frames, name="clip")
    roi = add_roi(mrml_scene, *roi_around(truths[0]))
    clips = plan_study(volume, None, roi, PromptMode.PROPAGATE)
    with pytest.raises(ValueError, match="margin"):
        next(iter_study(clips, threshold_segmenter([]), PromptMode.PROPAGATE, margin_px=-1))


def test_labelmap_is_not_an_image(mrml_scene):
    frames, _ = moving_lesion_clip(count=1)
    image = add_volume(mrml_scene, frames, name="image")
    labelmap = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(labelmap, np.zeros((1, 8, 8), np.uint8))
    assert image_volumes(mrml_scene) == [image]
    with pytest.raises(ValueError, match="labelmap"):
        plan_study(labelmap, None, None, PromptMode.NONE)


def test_cancel_keeps_written_frames(mrml_scene):
    frames, truths = moving_lesion_clip(count=4)
    volume = add_volume(mrml_scene, frames, name="clip")
    roi = add_roi(mrml_scene, *roi_around(truths[0]))
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    clips = plan_study(volume, segmentation, roi, PromptMode.PROPAGATE)
    steps = iter_study(clips, threshold_segmenter([]), PromptMode.PROPAGATE)
    next(steps)
    next(steps)
    steps.close()
    segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName("lesion")
    written = [segmentation_to_mask(segmentation, segment_id, volume, k).any() for k in range(4)]
    assert written == [True, True, False, False]
