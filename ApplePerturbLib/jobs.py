"""Run an ``apple-perturb`` command in a background process and read its progress.

A front end (the Slicer module, a notebook) starts training with
:class:`TrainingJob`, calls :meth:`BackgroundJob.poll` from a timer on its
main thread to receive progress events, and :meth:`BackgroundJob.cancel` to
stop it. The process runs ``python -m ApplePerturbLib <command> ...
--progress jsonl``: it writes one JSON object per line on stdout (``start``,
``progress``, ``epoch``, ``done``, ``error`` events), exits non-zero on
failure and, on SIGTERM, stops without writing a checkpoint.

The process gets its own process group (POSIX) or process group console
(Windows), so cancelling ends the whole process tree, data-loader workers
included. No Qt is used: two reader threads feed a ``queue.Queue`` and the
caller drains it.

Example::

    job = TrainingJob(TrainingOptions(cohort=Path("cohort/manifest.csv"), attribute="sex",
                                      out=Path("perturber.safetensors"), epochs=20))
    job.start()
    while job.state is JobState.RUNNING:
        for event in job.poll():
            ...  # update a progress bar
        time.sleep(0.2)
    print(job.state, job.result)
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STDERR_TAIL_LINES = 40
# Seconds the waiter thread gives the readers to reach the end of the pipes
# after the process exited; a surviving grandchild can hold them open.
_PIPE_DRAIN_SECONDS = 5.0


class JobState(enum.Enum):
    """Life cycle of a background job."""

    NOT_STARTED = "not started"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclasses.dataclass
class TrainingOptions:
    """Options of ``apple-perturb train``; None leaves the command line's default.

    Paths are passed as given, so relative paths resolve against the job's
    working directory. Defaults are not repeated here on purpose: the command
    line's ``--help`` is their one source.
    """

    cohort: Path
    attribute: str
    out: Path
    backbone: str | None = None
    checkpoint: Path | None = None
    epochs: int | None = None
    alpha: float | None = None
    beta: float | None = None
    seed: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    max_images: int | None = None
    age_threshold: float | None = None
    split_by: str | None = None
    test_fraction: float | None = None
    split_seed: int | None = None
    device: str | None = None
    cache: Path | None = None
    no_cache: bool = False

    def to_arguments(self) -> list[str]:
        """Return the ``train`` command's arguments, ``--progress jsonl`` included."""
        arguments = ["train"]
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            option = "--" + field.name.replace("_", "-")
            if isinstance(value, bool):
                if value:
                    arguments.append(option)
            elif value is not None:
                arguments += [option, str(value)]
        return arguments + ["--progress", "jsonl"]


class BackgroundJob:
    """One ``python -m ApplePerturbLib`` process with JSON-lines progress.

    Events returned by :meth:`poll` are the process's JSON objects (dicts
    with an ``event`` key) plus two made here: ``{"event": "log", "message":
    line}`` for a stdout line that is not a JSON event, and, last,
    ``{"event": "exit", "returncode": int, "state": JobState.value}``.

    Args:
        arguments: the command and its options, e.g. ``["evaluate", ...,
            "--progress", "jsonl"]``.
        executable: Python interpreter that runs the library (default
            ``sys.executable``; inside Slicer, its ``PythonSlicer``).
        python_path: folders put first on the child's ``PYTHONPATH``, e.g.
            the folder that contains ``ApplePerturbLib``.
        env: extra environment variables for the child.
        cwd: working directory of the child.
        command: the full command line, replacing ``[executable, "-m",
            "ApplePerturbLib", *arguments]`` (for other front ends and tests).
    """

    def __init__(self, arguments: list[str], executable: str | os.PathLike | None = None,
                 python_path: list[str | os.PathLike] | None = None, env: dict[str, str] | None = None,
                 cwd: str | os.PathLike | None = None, command: list[str] | None = None):
        interpreter = str(executable) if executable is not None else sys.executable
        self.command = list(command) if command is not None else [interpreter, "-m", "ApplePerturbLib", *arguments]
        self._python_path = [str(path) for path in python_path or []]
        self._extra_env = dict(env or {})
        self._cwd = cwd

        self._state = JobState.NOT_STARTED
        self._lock = threading.Lock()
        self._events: queue.Queue[dict] = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._process: subprocess.Popen | None = None
        self._cancel_requested = False
        self.done_event: dict | None = None
        self.error_event: dict | None = None
        self.returncode: int | None = None

    # -- public API --------------------------------------------------------

    @property
    def state(self) -> JobState:
        """Current state; it becomes final once the process has exited."""
        with self._lock:
            return self._state

    @property
    def pid(self) -> int | None:
        """Process id of the job (also its process group id on POSIX), or None before start."""
        return self._process.pid if self._process is not None else None

    @property
    def result(self) -> str | None:
        """The outcome: the file path from the ``done`` event after success, else the error message.

        For ``train`` and ``train-base`` the path is the checkpoint, for
        ``evaluate`` the ``metrics.json`` file. None while running.
        """
        state = self.state
        if state is JobState.SUCCEEDED:
            return self.checkpoint or (self.done_event or {}).get("metrics")
        if state in (JobState.FAILED, JobState.CANCELLED):
            return self.error_message
        return None

    @property
    def checkpoint(self) -> str | None:
        """Checkpoint path from the ``done`` event, or None."""
        return (self.done_event or {}).get("checkpoint")

    @property
    def error_message(self) -> str | None:
        """Why the job failed or stopped, or None when it has not."""
        state = self.state
        if state not in (JobState.FAILED, JobState.CANCELLED):
            return None
        if self.error_event is not None and self.error_event.get("message"):
            return str(self.error_event["message"])
        if state is JobState.CANCELLED:
            return "Cancelled by the user."
        tail = self.stderr_tail(12)
        if tail:
            return f"The process exited with code {self.returncode}:\n{tail}"
        if self.returncode == 0:
            return "The process exited without reporting a result (no 'done' event)."
        return f"The process exited with code {self.returncode} without an error message."

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        """Return the last ``lines`` lines the process wrote to stderr."""
        with self._lock:
            kept = list(self._stderr_tail)
        return "\n".join(kept[-lines:])

    def start(self) -> None:
        """Start the process and its reader threads.

        Raises:
            RuntimeError: if the job was started before.
            OSError: if the executable cannot be run (the state becomes FAILED).
        """
        with self._lock:
            if self._state is not JobState.NOT_STARTED:
                raise RuntimeError(f"This job was already started (state: {self._state.value}); create a new job.")
            self._state = JobState.RUNNING

        try:
            self._process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, encoding="utf-8", errors="replace", bufsize=1, cwd=self._cwd,
                env=self._child_environment(), **_new_process_group_options(),
            )
        except OSError as error:
            with self._lock:
                self._state = JobState.FAILED
                self._stderr_tail.append(f"Could not start {self.command[0]}: {error}")
            raise OSError(f"Could not start the background job with {self.command[0]!r}: {error}") from error

        logger.info("Started background job pid %d: %s", self._process.pid, " ".join(self.command[1:4]))
        stdout_reader = threading.Thread(target=self._read_stdout, name="apple-perturb-stdout", daemon=True)
        stderr_reader = threading.Thread(target=self._read_stderr, name="apple-perturb-stderr", daemon=True)
        stdout_reader.start()
        stderr_reader.start()
        threading.Thread(target=self._wait_for_exit, args=(stdout_reader, stderr_reader),
                         name="apple-perturb-waiter", daemon=True).start()

    def poll(self) -> list[dict]:
        """Return the events received since the last call, without blocking."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the job has finished or ``timeout`` seconds passed; return the state.

        Events stay queued for :meth:`poll`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state in (JobState.RUNNING, JobState.NOT_STARTED) and self._process is not None:
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        return self.state

    def cancel(self, timeout: float = 5.0) -> JobState:
        """Stop the whole process tree and return the state.

        POSIX: SIGTERM to the process group, so the library stops between
        batches and writes no checkpoint; after ``timeout`` seconds SIGKILL
        to the group. Windows: ``taskkill /T /F`` at once.
        NOTE: on Windows the library gets no chance to clean up, so a
        temporary file beside the checkpoint can remain.

        Blocks until the process tree has ended: for a process that obeys
        SIGTERM about as long as it needs to stop, and at most about
        ``3 * timeout`` seconds in all. Does nothing for a job that is not
        running.
        """
        process = self._process
        if process is None or self.state is not JobState.RUNNING:
            return self.state
        self._cancel_requested = True
        logger.info("Cancelling background job pid %d", process.pid)

        if os.name == "nt":
            subprocess.run(["taskkill", "/PID", str(process.pid), "/T", "/F"], capture_output=True, check=False)
        else:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("Background job pid %d ignored SIGTERM for %.1f s; sending SIGKILL", process.pid, timeout)
            # Members of the group that outlive the leader are killed too.
            _signal_group(process.pid, signal.SIGKILL)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.error("Background job pid %d did not exit after SIGKILL", process.pid)
        self.wait(timeout)
        return self.state

    # -- threads -----------------------------------------------------------

    def _read_stdout(self) -> None:
        for line in self._process.stdout:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            event = _parse_event(line)
            if event is None:
                self._events.put({"event": "log", "message": line})
                continue
            if event["event"] == "done":
                self.done_event = event
            elif event["event"] == "error":
                self.error_event = event
            self._events.put(event)

    def _read_stderr(self) -> None:
        for line in self._process.stderr:
            line = line.rstrip("\r\n")
            logger.debug("job stderr: %s", line)
            with self._lock:
                self._stderr_tail.append(line)

    def _wait_for_exit(self, stdout_reader: threading.Thread, stderr_reader: threading.Thread) -> None:
        returncode = self._process.wait()
        stdout_reader.join(_PIPE_DRAIN_SECONDS)
        stderr_reader.join(_PIPE_DRAIN_SECONDS)
        if stdout_reader.is_alive() or stderr_reader.is_alive():
            logger.warning("A child of background job pid %d still keeps its output pipes open", self._process.pid)

        if returncode == 0 and self.done_event is not None:
            state = JobState.SUCCEEDED  # also when a cancel came after the result was written
        elif self._cancel_requested:
            state = JobState.CANCELLED
        else:
            state = JobState.FAILED
        self.returncode = returncode
        with self._lock:
            self._state = state
        logger.info("Background job pid %d ended: %s (exit code %d)", self._process.pid, state.value, returncode)
        self._events.put({"event": "exit", "returncode": returncode, "state": state.value})

    def _child_environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self._extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONIOENCODING"] = "utf-8"
        if self._python_path:
            existing = env.get("PYTHONPATH")
            env["PYTHONPATH"] = os.pathsep.join(self._python_path + ([existing] if existing else []))
        return env


class TrainingJob(BackgroundJob):
    """Background ``apple-perturb train`` run; see :class:`BackgroundJob` for the other arguments."""

    def __init__(self, options: TrainingOptions, executable: str | os.PathLike | None = None, **kwargs: Any):
        self.options = options
        super().__init__(options.to_arguments(), executable, **kwargs)


def _parse_event(line: str) -> dict | None:
    """Return the event dict of a JSON-lines progress line, or None for any other line."""
    if not line.lstrip().startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return None
    return event


def _new_process_group_options() -> dict:
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _signal_group(process_group: int, signal_number: int) -> None:
    """Send a signal to every process of a group; a group that is already gone is fine."""
    try:
        os.killpg(process_group, signal_number)
    except ProcessLookupError:
        pass
    except PermissionError as error:
        logger.warning("Could not signal process group %d: %s", process_group, error)
