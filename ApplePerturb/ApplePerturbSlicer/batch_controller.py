"""The panel's batch section: runs a batch segmentation one frame per timer tick, with progress and Cancel.

Each frame runs on Slicer's main thread because it writes MRML nodes. A
zero-interval ``qt.QTimer`` steps the logic's frame iterator, so the GUI
handles clicks (Cancel among them) between frames.
NOTE: the GUI still pauses while one frame is encoded (about 1-2 s for
LiteMedSAM on a laptop CPU, well under 0.1 s on a GPU).
"""

import logging

import qt
import slicer
from slicer.i18n import tr as _


class BatchController:
    """Batch-section controller: steps ``ApplePerturbLogic.iter_segment_study`` from a timer, shows progress.

    Args:
        ui: the panel's widgets (``batchProgressBar``, ``batchStatusLabel``,
            ``batchRunButton``, ``batchCancelButton``).
        logic: the module's ``ApplePerturbLogic``.
    """

    def __init__(self, ui, logic):
        self.ui = ui
        self.logic = logic
        self._steps = None
        self._cancelRequested = False
        self._done = 0
        self._total = 0
        self._timer = qt.QTimer()
        self._timer.setInterval(0)
        self._timer.connect("timeout()", self._step)

    @property
    def running(self) -> bool:
        return self._steps is not None

    def start(self, inputs, segmentation, promptMode, roi, marginPx) -> None:
        """Validate the inputs, create the outputs and start segmenting; input errors raise here.

        Raises:
            RuntimeError: a batch run is already in progress.
            ValueError: for invalid inputs (see ``ApplePerturbLogic.segment_study``).
        """
        if self.running:
            raise RuntimeError("A batch segmentation is already running: wait for it or cancel it.")
        self._steps = self.logic.iter_segment_study(inputs, segmentation, promptMode, roi, marginPx)
        self._cancelRequested = False
        self._done, self._total = 0, 0
        self.ui.batchProgressBar.maximum = 0  # busy indicator until the first frame reports the total
        self.ui.batchStatusLabel.text = _("Loading the model and segmenting the first frame...")
        self._setRunning(True)
        self._timer.start()

    def cancel(self) -> None:
        """Stop after the frame being segmented; frames already written are kept."""
        if self.running:
            self._cancelRequested = True

    def _step(self) -> None:
        if self._cancelRequested:
            self._finish(_("Cancelled after {done} of {total} frames; finished frames are kept.").format(
                done=self._done, total=self._total))
            return
        try:
            outcome = next(self._steps)
        except StopIteration:
            self._finish(_("Segmented {total} frames.").format(total=self._done))
            return
        except Exception as error:  # noqa: BLE001 - any failure ends the run and is shown to the user.
            logging.exception("Batch segmentation failed after %d frames", self._done)
            self._finish(_("Failed after {done} frames: {error}").format(done=self._done, error=error))
            slicer.util.errorDisplay(_("Batch segmentation failed: {error}").format(error=error))
            return

        self._done, self._total = outcome.done, outcome.total
        self.ui.batchProgressBar.maximum = outcome.total
        self.ui.batchProgressBar.value = outcome.done
        self.ui.batchStatusLabel.text = _("{clip}: frame {position} ({prompt}), {area:.1f} mm\u00b2").format(
            clip=outcome.clip, position=outcome.position, prompt=outcome.prompt,
            area=outcome.measurements.get("area_mm2", 0.0))

    def _finish(self, message: str) -> None:
        self._timer.stop()
        if self._steps is not None:
            self._steps.close()
        self._steps = None
        self.ui.batchProgressBar.maximum = max(self._total, 1)
        self.ui.batchProgressBar.value = self._done
        self.ui.batchStatusLabel.text = message
        logging.info("Batch segmentation: %s", message)
        self._setRunning(False)

    def _setRunning(self, running: bool) -> None:
        self.ui.batchRunButton.enabled = not running
        self.ui.batchCancelButton.enabled = running
        self.ui.segmentButton.enabled = not running
