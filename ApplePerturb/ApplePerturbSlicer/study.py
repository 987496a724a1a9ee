"""Batch segmentation of a study: every frame of a cine clip, every item of a sequence, or a list of images.

A study is split into clips. A clip is an ordered list of frames that a box
can be propagated along:

- a multi-frame volume (frames along K) is one clip, written into one
  segmentation whose slice k contains frame k's mask;
- a sequence (a ``vtkMRMLSequenceNode`` of volumes, or the proxy volume of a
  sequence browser) is one clip. Every item gets its own segmentation, stored
  as an item of an output segmentation sequence;
- every other volume of a list is a clip of its own.

:func:`iter_study` segments one frame per step and yields after each, so a
caller on Slicer's main thread can run it from a timer and keep the GUI
responsive, and a cancelled run keeps every frame written so far.

This module imports only ``slicer`` (MRML), ``vtk`` and ``numpy``.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import slicer

from .mrml_io import (
    VolumeKind,
    check_image_node,
    describe_volume,
    frame_count,
    frame_size,
    lesion_measurements,
    mask_to_segmentation,
    propagate_box,
    roi_frame_index,
    roi_to_pixel_box,
)
from .results import write_frame_row

logger = logging.getLogger(__name__)

Box = tuple[int, int, int, int]
#: Segments one frame: (volume node, frame index along K, box or None) -> bool HxW mask.
SegmentFrame = Callable[[object, int, "Box | None"], np.ndarray]


class PromptMode(enum.Enum):
    """Prompt source of each frame in a batch run."""

    ROI = "Same box on every frame"
    PROPAGATE = "Propagate from the previous frame"
    NONE = "No prompt (U-Net, TransUNet)"

    def label(self) -> str:
        return self.value


@dataclass
class FrameTask:
    """One frame to segment and where its mask goes.

    Attributes:
        volume: the volume node the frame is read from.
        frame_index: slice K of that volume.
        position: index of the frame in its clip (the table row's "frame").
        segmentation: segmentation node that receives the mask.
        sequence: output segmentation sequence for sequence clips, else None.
        index_value: the sequence item's index value, for sequence clips.
    """

    volume: object
    frame_index: int
    position: int
    segmentation: object
    sequence: object = None
    index_value: str = ""


@dataclass
class Clip:
    """Frames a box can be propagated along, the start frame of the ROI box, and a result table."""

    name: str
    tasks: list[FrameTask]
    start: int = 0
    roi_box: Box | None = None
    table: object = None
    browser: object = None


@dataclass
class FrameOutcome:
    """Result of one step of :func:`iter_study`: the frame, its prompt and its measurements."""

    clip: str
    position: int
    done: int
    total: int
    box: Box | None
    prompt: str
    measurements: dict = field(default_factory=dict)


def plan_study(inputs, output_segmentation, roi, prompt_mode: PromptMode, scene=None,
               with_tables: bool = True) -> list[Clip]:
    """Split the inputs into clips, create their outputs, and compute the ROI boxes.

    Args:
        inputs: a volume node (one or more frames along K), a sequence node of
            volumes, the proxy volume of a sequence browser, or a list of volumes.
        output_segmentation: segmentation node for a single volume or the proxy
            of a sequence clip; None creates one per clip. A list of several
            volumes always gets one new segmentation per volume.
        roi: markups ROI node; required unless ``prompt_mode`` is NONE.
        prompt_mode: see :class:`PromptMode`.
        scene: MRML scene for new nodes, default ``slicer.mrmlScene``.
        with_tables: add a per-frame measurement table to each clip.

    Raises:
        ValueError: for a missing ROI, an input that is not an image, or an
            ROI that does not overlap the start frame of a clip. Nodes created
            before the error are removed again.
    """
    scene = scene or slicer.mrmlScene
    if prompt_mode is not PromptMode.NONE and roi is None:
        raise ValueError(f"Prompt mode '{prompt_mode.value}' needs a box: place an ROI around the lesion.")
    volumes = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if not volumes:
        raise ValueError("No image to segment: choose a volume, a sequence or a list of volumes.")

    single = len(volumes) == 1
    nodes_before = _node_ids(scene)
    clips = []
    try:
        for volume in volumes:
            browser, sequence = _sequence_of(volume, scene)
            segmentation = output_segmentation if single else None
            if sequence is not None:
                clip = _sequence_clip(sequence, browser, volume, segmentation, roi, scene)
            else:
                clip = _volume_clip(volume, segmentation, roi, scene)
            if prompt_mode is PromptMode.NONE:
                clip.roi_box = None
            if with_tables:
                clip.table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{clip.name} lesion measurements")
            clips.append(clip)
    except ValueError:
        for node_id in _node_ids(scene) - nodes_before:
            node = scene.GetNodeByID(node_id)
            if node is not None:
                scene.RemoveNode(node)
        raise
    return clips


def _node_ids(scene) -> set[str]:
    return {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}


def image_volumes(scene) -> list:
    """Return the scene's scalar and vector volumes that read as images (no labelmaps or tensor volumes)."""
    volumes = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        volume = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if describe_volume(volume) is not VolumeKind.NOT_AN_IMAGE:
            volumes.append(volume)
    return volumes


def iter_study(clips: Sequence[Clip], segment_frame: SegmentFrame, prompt_mode: PromptMode,
               margin_px: int = 10, segment_name: str = "lesion") -> Iterator[FrameOutcome]:
    """Segment every frame of every clip, one frame per step.

    Propagation runs from each clip's start frame (where the ROI was drawn)
    forward to its last frame, then backward to its first, each frame
    prompted by the previous one's mask box grown by ``margin_px`` pixels.
    When the previous mask is empty, the frame falls back to the ROI box.

    Yields:
        A :class:`FrameOutcome` after each frame is written.
    """
    if margin_px < 0:
        raise ValueError(f"The propagation margin is {margin_px} pixels; use 0 or more.")
    total = sum(len(clip.tasks) for clip in clips)
    done = 0
    for clip in clips:
        masks: dict[int, np.ndarray] = {}
        for position, previous in _propagation_order(len(clip.tasks), clip.start):
            task = clip.tasks[position]
            box, prompt = _prompt_for(task, clip, prompt_mode, masks.get(previous), margin_px)
            mask = np.asarray(segment_frame(task.volume, task.frame_index, box), dtype=bool)
            masks[position] = mask
            measurements = _write(task, clip, mask, box, segment_name)
            done += 1
            yield FrameOutcome(clip.name, position, done, total, box, prompt, measurements)
        _finish_clip(clip)


def _propagation_order(count: int, start: int) -> list[tuple[int, int | None]]:
    """Return (position, previous position or None) pairs: start..last, then start-1..0."""
    forward = [(position, position - 1 if position > start else None) for position in range(start, count)]
    backward = [(position, position + 1) for position in range(start - 1, -1, -1)]
    return forward + backward


def _prompt_for(task: FrameTask, clip: Clip, prompt_mode: PromptMode, previous_mask, margin_px: int):
    if prompt_mode is PromptMode.NONE:
        return None, "none"
    if prompt_mode is PromptMode.PROPAGATE and previous_mask is not None:
        box = propagate_box(previous_mask, margin_px, frame_size(task.volume))
        if box is not None:
            return box, "propagated"
        logger.warning("%s frame %d: the previous frame's mask is empty; using the ROI box", clip.name, task.position)
        return clip.roi_box, "ROI (previous mask empty)"
    return clip.roi_box, "ROI"


def _write(task: FrameTask, clip: Clip, mask: np.ndarray, box, segment_name: str) -> dict:
    mask_to_segmentation(mask, task.volume, task.segmentation, segment_name, task.frame_index)
    if task.sequence is not None:
        task.sequence.SetDataNodeAtValue(task.segmentation, task.index_value)
    measurements = lesion_measurements(mask, task.volume)
    if clip.table is not None:
        write_frame_row(clip.table, task.position, measurements, box)
    return measurements


def _finish_clip(clip: Clip) -> None:
    """Show the output sequence's item of the browser's current frame (sequence clips only)."""
    task = clip.tasks[0]
    if task.sequence is None:
        return
    try:
        slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(clip.browser)
    except AttributeError:
        pass  # outside the Slicer application there is no sequences module to refresh the proxy


def _sequence_of(node, scene):
    """Return (browser, sequence) for a sequence node or a browser's proxy volume, else (None, None)."""
    if node is not None and node.IsA("vtkMRMLSequenceNode"):
        return None, node
    if node is None or scene is None:
        return None, None
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
        browser = scene.GetNthNodeByClass(index, "vtkMRMLSequenceBrowserNode")
        if browser.IsProxyNodeID(node.GetID()):
            return browser, browser.GetSequenceNode(node)
    return None, None


def _volume_clip(volume, segmentation, roi, scene) -> Clip:
    check_image_node(volume, batch=True)
    if segmentation is None:
        segmentation = _new_segmentation(scene, f"{volume.GetName()} lesion", volume)
    count = frame_count(volume)
    tasks = [FrameTask(volume, k, k, segmentation) for k in range(count)]
    clip = Clip(volume.GetName(), tasks)
    if roi is not None:
        clip.start = roi_frame_index(roi, volume) if count > 1 else 0
        clip.roi_box = roi_to_pixel_box(roi, volume, clip.start)
    return clip


def _sequence_clip(sequence, browser, proxy_volume, proxy_segmentation, roi, scene) -> Clip:
    """Build one clip over the items of a sequence of single-frame volumes."""
    count = sequence.GetNumberOfDataNodes()
    if count == 0:
        raise ValueError(f"The sequence '{sequence.GetName()}' has no items: record or load frames first.")
    output = _output_sequence(sequence, browser, proxy_segmentation, scene)
    output.SetIndexName(sequence.GetIndexName())
    output.SetIndexUnit(sequence.GetIndexUnit())
    output.SetIndexType(sequence.GetIndexType())

    tasks = []
    for position in range(count):
        item = sequence.GetNthDataNode(position)
        check_image_node(item, 0)
        tasks.append(FrameTask(item, 0, position, slicer.vtkMRMLSegmentationNode(), output,
                               sequence.GetNthIndexValue(position)))
    clip = Clip(sequence.GetName(), tasks, browser=browser)
    clip.start = browser.GetSelectedItemNumber() if browser is not None else 0
    clip.start = min(max(clip.start, 0), count - 1)
    if roi is not None:
        # The proxy volume has the selected item's geometry and the parent transform of the displayed image.
        reference = proxy_volume if browser is not None else tasks[clip.start].volume
        clip.roi_box = roi_to_pixel_box(roi, reference, 0)

    if browser is not None and not browser.IsSynchronizedSequenceNode(output):
        if proxy_segmentation is None:
            proxy_segmentation = _new_segmentation(scene, f"{sequence.GetName()} lesion", proxy_volume)
        browser.AddSynchronizedSequenceNode(output)
        browser.AddProxyNode(proxy_segmentation, output, False)
    return clip


def _output_sequence(sequence, browser, proxy_segmentation, scene):
    """Return the segmentation sequence of an earlier run on this browser (emptied), else a new one."""
    if browser is not None and proxy_segmentation is not None and browser.IsProxyNodeID(proxy_segmentation.GetID()):
        output = browser.GetSequenceNode(proxy_segmentation)
        if output is not None and output.GetDataNodeClassName() == "vtkMRMLSegmentationNode":
            output.RemoveAllDataNodes()
            return output
    return scene.AddNewNodeByClass("vtkMRMLSequenceNode", scene.GenerateUniqueName(f"{sequence.GetName()} lesion"))


def _new_segmentation(scene, name: str, reference_volume):
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    segmentation.CreateDefaultDisplayNodes()
    if reference_volume is not None and not reference_volume.IsA("vtkMRMLSequenceNode"):
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    return segmentation
