"""Train a perturber in a background process, then evaluate it, and turn their events into panel text.

:class:`TrainThenEvaluate` chains two ``apple-perturb`` processes: ``train``,
then, if it succeeds, ``evaluate`` on the test split of the same cohort with
the new perturber. The caller polls it from a timer on its main thread (the
Slicer module uses a ``qt.QTimer``) and shows :attr:`progress`,
:attr:`status_text`, :attr:`loss_text` and :attr:`dice_text`.

This module imports only the standard library and ``ApplePerturbLib.jobs``
(itself standard library only), so it loads without torch.
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Callable

from ApplePerturbLib.jobs import BackgroundJob, JobState, TrainingJob, TrainingOptions

logger = logging.getLogger(__name__)

#: Shares of the progress bar (0..100): encoding latents, training epochs, evaluation.
ENCODING_SHARE = 10
TRAINING_SHARE = 75
EVALUATION_SHARE = 15


class Phase(enum.Enum):
    """Stage of a :class:`TrainThenEvaluate` run."""

    NOT_STARTED = "not started"
    TRAINING = "training"
    EVALUATING = "evaluating"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (Phase.FINISHED, Phase.FAILED, Phase.CANCELLED)


def evaluation_folder_for(perturber: Path) -> Path:
    """Return the folder the evaluation of ``perturber`` is written to: ``<stem>_evaluation`` beside it."""
    perturber = Path(perturber)
    return perturber.with_name(f"{perturber.stem}_evaluation")


def evaluation_arguments(options: TrainingOptions, perturber: Path, folder: Path) -> list[str]:
    """Return the ``evaluate`` arguments for the test split of ``options.cohort`` with ``perturber``.

    The split itself is read from the perturber's metadata by the library, so
    evaluation uses exactly the cases training left out.
    """
    arguments = ["evaluate", "--cohort", str(options.cohort), "--perturber", str(perturber),
                 "--split", "test", "--out", str(folder)]
    if options.backbone:
        arguments += ["--backbone", options.backbone]
    if options.checkpoint:
        arguments += ["--checkpoint", str(options.checkpoint)]
    if options.device:
        arguments += ["--device", options.device]
    return arguments + ["--progress", "jsonl"]


class TrainThenEvaluate:
    """Train a perturber, then evaluate it, each in its own background process.

    Args:
        options: the training options; ``options.out`` is the perturber file.
        job_kwargs: keyword arguments for both jobs (``executable``,
            ``python_path``, ``env``, ``cwd``), see ``ApplePerturbLib.jobs``.
        make_job: builds a job from (command arguments, job_kwargs); the
            default runs ``python -m ApplePerturbLib``. Tests pass their own.
    """

    def __init__(self, options: TrainingOptions, job_kwargs: dict | None = None,
                 make_job: Callable[[list[str], dict], BackgroundJob] | None = None):
        self.options = options
        self.job_kwargs = dict(job_kwargs or {})
        self._make_job = make_job
        self.phase = Phase.NOT_STARTED
        self.job: BackgroundJob | None = None
        self.progress = 0
        self.status_text = ""
        self.loss_text = "-"
        self.dice_text = "-"
        self.perturber_path: Path | None = None
        self.metrics_path: Path | None = None
        self.error_message: str | None = None

    def start(self) -> None:
        """Start training.

        Raises:
            OSError: if the Python interpreter cannot be started.
        """
        if self.phase is not Phase.NOT_STARTED:
            raise RuntimeError(f"This run was already started ({self.phase.value}); create a new one.")
        self.phase = Phase.TRAINING
        self.status_text = "Starting training..."
        self.job = self._new_job(self.options.to_arguments())
        self._start_job()

    def poll(self) -> bool:
        """Process the events received since the last call; return whether anything changed."""
        if self.job is None or self.phase.is_final:
            return False
        events = self.job.poll()
        for event in events:
            self._handle(event)
        return bool(events)

    def cancel(self) -> None:
        """Stop the running process tree; no partial perturber is written."""
        if self.job is None or self.phase.is_final:
            return
        self.job.cancel(timeout=3.0)
        for event in self.job.poll():
            self._handle(event)
        if not self.phase.is_final:
            self._finish(Phase.CANCELLED, "Cancelled.")

    def _new_job(self, arguments: list[str]) -> BackgroundJob:
        if self._make_job is not None:
            return self._make_job(arguments, self.job_kwargs)
        if arguments and arguments[0] == "train":
            return TrainingJob(self.options, **self.job_kwargs)
        return BackgroundJob(arguments, **self.job_kwargs)

    def _start_job(self) -> None:
        try:
            self.job.start()
        except OSError as error:
            self._finish(Phase.FAILED, f"Could not start the background process: {error}")
            raise

    def _handle(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "progress":
            self._on_progress(event)
        elif kind == "epoch":
            self._on_epoch(event)
        elif kind == "start":
            self.status_text = f"{self.phase.value.capitalize()} on {event.get('images', '?')} images..."
        elif kind == "log":
            logger.info("apple-perturb: %s", event.get("message"))
        elif kind == "error":
            logger.error("apple-perturb %s failed: %s", self.phase.value, event.get("message"))
        elif kind == "exit":
            self._on_exit()

    def _on_progress(self, event: dict) -> None:
        done, total = int(event.get("done", 0)), max(int(event.get("total", 1)), 1)
        if self.phase is Phase.TRAINING:
            self.progress = round(ENCODING_SHARE * done / total)
        else:
            self.progress = ENCODING_SHARE + TRAINING_SHARE + round(EVALUATION_SHARE * done / total)
        self.status_text = f"{self.phase.value.capitalize()}: {event.get('phase', 'images')} {done}/{total}"

    def _on_epoch(self, event: dict) -> None:
        epoch, epochs = int(event.get("epoch", 0)), max(int(event.get("epochs", 1)), 1)
        self.progress = ENCODING_SHARE + round(TRAINING_SHARE * epoch / epochs)
        self.status_text = f"Training: epoch {epoch}/{epochs}"
        self.loss_text = f"L_G {_number(event.get('loss_g'))}, L_D {_number(event.get('loss_d'))}"
        self.dice_text = _number(event.get("dsc"))

    def _on_exit(self) -> None:
        state = self.job.state
        if state is JobState.SUCCEEDED and self.phase is Phase.TRAINING:
            self.perturber_path = Path(self.job.checkpoint or self.options.out)
            self._start_evaluation()
        elif state is JobState.SUCCEEDED:
            self.metrics_path = Path(self.job.result)
            self.progress = 100
            self._finish(Phase.FINISHED, f"Finished: perturber {self.perturber_path.name}, metrics loaded.")
        elif state is JobState.CANCELLED:
            self._finish(Phase.CANCELLED, "Cancelled; no perturber was written." if self.phase is Phase.TRAINING
                         else "Evaluation cancelled; the perturber was kept.")
        else:
            self.error_message = self.job.error_message
            self._finish(Phase.FAILED, f"{self.phase.value.capitalize()} failed: {self.error_message}")

    def _start_evaluation(self) -> None:
        self.phase = Phase.EVALUATING
        self.progress = ENCODING_SHARE + TRAINING_SHARE
        self.status_text = "Evaluating on the test split..."
        folder = evaluation_folder_for(self.perturber_path)
        self.job = self._new_job(evaluation_arguments(self.options, self.perturber_path, folder))
        self._start_job()

    def _finish(self, phase: Phase, text: str) -> None:
        self.phase = phase
        self.status_text = text
        log = logger.error if phase is Phase.FAILED else logger.info
        log("Perturber training run %s: %s", phase.value, text)


def _number(value) -> str:
    return "-" if value is None else f"{float(value):.4f}"
