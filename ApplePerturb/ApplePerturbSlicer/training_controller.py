"""The panel's training section: starts training and evaluation, polls them from a timer, shows progress."""

import logging
from pathlib import Path

import qt
import slicer
from slicer.i18n import tr as _

#: How often the background processes' events are read, in milliseconds.
POLL_INTERVAL_MS = 250


def optionalPath(path) -> Path | None:
    """Return ``path`` as an absolute Path, or None for an empty field (stored as "" or ".")."""
    if path is None or str(path).strip() in ("", "."):
        return None
    return Path(path).expanduser().resolve()


def trainingOptionsFromParameters(node):
    """Return ``TrainingOptions`` from the panel's parameter node, filling in a default output file.

    The train/test split is stratified by the protected attribute, so both of
    its groups are represented in the test split the evaluation uses.

    Raises:
        FileNotFoundError: the cohort manifest does not exist.
    """
    from ApplePerturbLib.jobs import TrainingOptions

    cohort = optionalPath(node.cohortPath)
    if cohort is None or not cohort.is_file():
        raise FileNotFoundError(f"Cohort manifest {node.cohortPath} not found: choose the manifest CSV of a cohort.")
    out = optionalPath(node.trainingOutputPath)
    if out is None:
        out = cohort.parent / f"perturber-{node.attribute.name}-{node.backbone.name}.safetensors"
        node.trainingOutputPath = out
    checkpoint = optionalPath(node.checkpointPath)
    return TrainingOptions(
        cohort=cohort, attribute=node.attribute.name, out=out, backbone=node.backbone.name,
        checkpoint=checkpoint,
        epochs=node.epochs, alpha=node.alpha, beta=node.beta, age_threshold=node.ageThreshold,
        device=node.device.name,
    )


class TrainingController:
    """Training-section controller: runs ``TrainThenEvaluate`` for the panel and reports the result.

    Args:
        ui: the panel's widgets (``trainProgressBar``, ``trainStatusLabel``,
            ``latestLossLabel``, ``latestDiceLabel``, ``trainButton``, ``trainCancelButton``).
        logic: the module's ``ApplePerturbLogic``.
        onFinished: called with (perturber path or None, metrics.json path or
            None) when a run ends with at least a trained perturber.
    """

    def __init__(self, ui, logic, onFinished):
        self.ui = ui
        self.logic = logic
        self.onFinished = onFinished
        self._run = None
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._poll)

    @property
    def running(self) -> bool:
        return self._run is not None and not self._run.phase.is_final

    def start(self, node) -> None:
        """Start training with the parameter node's settings; the user confirms replacing an existing file.

        Raises:
            RuntimeError: a training run is already in progress.
            FileNotFoundError: the cohort manifest does not exist.
            OSError: the background Python process cannot be started.
        """
        if self.running:
            raise RuntimeError("A perturber is already being trained: wait for it or cancel it.")
        options = trainingOptionsFromParameters(node)
        if options.out.exists() and not slicer.util.confirmOkCancelDisplay(
                _("{path} exists. Replace it with the new perturber when training succeeds?").format(path=options.out)):
            return
        self.ui.latestLossLabel.text = "-"
        self.ui.latestDiceLabel.text = "-"
        self.ui.trainProgressBar.value = 0
        self._run = self.logic.start_training_and_evaluation(options)
        self._setRunning(True)
        self._show()
        self._timer.start()

    def cancel(self) -> None:
        """End the background process tree; waits up to a few seconds for it to stop."""
        if not self.running:
            return
        with slicer.util.WaitCursor():
            self._run.cancel()
        self._poll()

    def _poll(self) -> None:
        run = self._run
        if run is None:
            self._timer.stop()
            return
        run.poll()
        self._show()
        if not run.phase.is_final:
            return

        self._timer.stop()
        self._setRunning(False)
        if run.error_message is not None:
            slicer.util.errorDisplay(run.status_text, detailedText=run.error_message)
        if run.perturber_path is not None:
            self.onFinished(str(run.perturber_path), str(run.metrics_path) if run.metrics_path else None)

    def _show(self) -> None:
        run = self._run
        self.ui.trainProgressBar.value = run.progress
        self.ui.trainStatusLabel.text = run.status_text
        self.ui.latestLossLabel.text = run.loss_text
        self.ui.latestDiceLabel.text = run.dice_text

    def _setRunning(self, running: bool) -> None:
        self.ui.trainButton.enabled = not running
        self.ui.trainCancelButton.enabled = running
        logging.debug("Training controls %s", "locked" if running else "unlocked")
