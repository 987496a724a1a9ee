"""Training followed by evaluation (ApplePerturbSlicer.training_flow) with real background processes.

The processes are small Python scripts that speak the command line's
JSON-lines protocol, so the chaining, progress, failure and cancel paths run
through the real ``BackgroundJob`` in seconds instead of a real training run.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ApplePerturb"))

from ApplePerturbLib.jobs import BackgroundJob, JobState, TrainingOptions  # noqa: E402
from ApplePerturbSlicer.training_flow import (  # noqa: E402
    Phase,
    TrainThenEvaluate,
    evaluation_arguments,
    evaluation_folder_for,
)


def script_job(scripts: dict[str, str], started: list):
    """Return a job factory that runs ``scripts[command]`` (Python source) for each command."""

    def make_job(arguments, job_kwargs):
        started.append(arguments)
        return BackgroundJob(arguments, command=[sys.executable, "-c", textwrap.dedent(scripts[arguments[0]])])

    return make_job


def emit_lines(*events, exit_code=0, sleep=0.0):
    lines = "\n".join(f"print({json.dumps(json.dumps(event))}, flush=True)" for event in events)
    return f"import sys, time\n{lines}\ntime.sleep({sleep})\nsys.exit({exit_code})\n"


def run_until_final(run: TrainThenEvaluate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not run.phase.is_final:
        run.poll()
        assert time.monotonic() < deadline, f"run did not finish: {run.phase}, {run.status_text}"
        time.sleep(0.05)


@pytest.fixture
def options(tmp_path):
    return TrainingOptions(cohort=tmp_path / "manifest.csv", attribute="sex", out=tmp_path / "p.safetensors",
                           backbone="sam_vit_b", checkpoint=tmp_path / "sam.pth", epochs=2, device="cpu")


def test_training_then_evaluation(options, tmp_path):
    metrics = tmp_path / "p_evaluation" / "metrics.json"
    scripts = {
        "train": emit_lines({"event": "start", "images": 8},
                            {"event": "progress", "phase": "encoding images", "done": 8, "total": 8},
                            {"event": "epoch", "epoch": 1, "epochs": 2, "loss_g": 0.5, "loss_d": 0.69, "dsc": 0.8},
                            {"event": "epoch", "epoch": 2, "epochs": 2, "loss_g": 0.4, "loss_d": 0.7, "dsc": 0.85},
                            {"event": "done", "checkpoint": str(options.out)}),
        "evaluate": emit_lines({"event": "progress", "phase": "segmenting images", "done": 3, "total": 3},
                               {"event": "done", "metrics": str(metrics)}),
    }
    started = []
    run = TrainThenEvaluate(options, make_job=script_job(scripts, started))
    run.start()
    run_until_final(run)

    assert run.phase is Phase.FINISHED, run.status_text
    assert run.perturber_path == options.out
    assert run.metrics_path == metrics
    assert run.progress == 100
    assert run.loss_text == "L_G 0.4000, L_D 0.7000"
    assert run.dice_text == "0.8500"
    assert [arguments[0] for arguments in started] == ["train", "evaluate"]
    assert started[1] == evaluation_arguments(options, options.out, evaluation_folder_for(options.out))


def test_training_failure_stops_before_evaluation(options):
    scripts = {"train": emit_lines({"event": "error", "message": "cohort manifest.csv not found"}, exit_code=1)}
    started = []
    run = TrainThenEvaluate(options, make_job=script_job(scripts, started))
    run.start()
    run_until_final(run)
    assert run.phase is Phase.FAILED
    assert "cohort manifest.csv not found" in run.status_text
    assert run.perturber_path is None
    assert len(started) == 1


def test_evaluation_failure_keeps_perturber(options):
    scripts = {"train": emit_lines({"event": "done", "checkpoint": str(options.out)}),
               "evaluate": emit_lines({"event": "error", "message": "no test images"}, exit_code=1)}
    run = TrainThenEvaluate(options, make_job=script_job(scripts, []))
    run.start()
    run_until_final(run)
    assert run.phase is Phase.FAILED
    assert run.status_text.startswith("Evaluating failed")
    assert run.perturber_path == options.out
    assert run.metrics_path is None


def test_exit_without_done_is_a_failure(options):
    run = TrainThenEvaluate(options, make_job=script_job({"train": emit_lines()}, []))
    run.start()
    run_until_final(run)
    assert run.phase is Phase.FAILED


def test_cancel_during_training(options):
    scripts = {"train": emit_lines({"event": "start", "images": 8}, sleep=60)}
    run = TrainThenEvaluate(options, make_job=script_job(scripts, []))
    run.start()
    deadline = time.monotonic() + 30
    while run.job.state is JobState.RUNNING and not run.status_text.startswith("Training on"):
        run.poll()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    run.cancel()
    assert time.monotonic() - started < 10
    assert run.phase is Phase.CANCELLED
    assert "no perturber" in run.status_text
    assert run.job.state is JobState.CANCELLED


def test_start_twice_raises(options):
    run = TrainThenEvaluate(options, make_job=script_job({"train": emit_lines()}, []))
    run.start()
    with pytest.raises(RuntimeError, match="already started"):
        run.start()
    run_until_final(run)


def test_unstartable_interpreter_fails(options, tmp_path):
    run = TrainThenEvaluate(options, job_kwargs={"executable": tmp_path / "no-such-python"})
    with pytest.raises(OSError):
        run.start()
    assert run.phase is Phase.FAILED


def test_default_jobs_run_the_library_command_line(options, tmp_path):
    run = TrainThenEvaluate(options, job_kwargs={"executable": "/opt/python", "python_path": [tmp_path]})
    job = run._new_job(options.to_arguments())
    assert job.command[:4] == ["/opt/python", "-m", "ApplePerturbLib", "train"]
    assert job.command[-2:] == ["--progress", "jsonl"]
    evaluation = run._new_job(evaluation_arguments(options, options.out, tmp_path / "eval"))
    assert evaluation.command[3] == "evaluate"


def test_evaluation_arguments_name_model_and_split(options, tmp_path):
    arguments = evaluation_arguments(options, tmp_path / "p.safetensors", tmp_path / "eval")
    text = " ".join(arguments)
    assert arguments[0] == "evaluate"
    assert f"--cohort {options.cohort}" in text
    assert f"--perturber {tmp_path / 'p.safetensors'}" in text
    assert "--split test" in text
    assert "--backbone sam_vit_b" in text
    assert f"--checkpoint {options.checkpoint}" in text
    assert "--device cpu" in text
    assert arguments[-2:] == ["--progress", "jsonl"]
    assert evaluation_folder_for(Path("/data/perturber-sex.safetensors")) == Path("/data/perturber-sex_evaluation")


def test_command_lines_parse_with_the_real_parser(options, tmp_path):
    from ApplePerturbLib.cli import build_parser

    options.split_by, options.age_threshold, options.alpha, options.beta = "sex", 45.0, 0.5, 2.0
    train = build_parser().parse_args(options.to_arguments())
    assert (train.command, train.backbone, train.epochs, train.split_by) == ("train", "sam_vit_b", 2, "sex")
    evaluate = build_parser().parse_args(evaluation_arguments(options, options.out, tmp_path / "eval"))
    assert (evaluate.command, evaluate.split, evaluate.perturber) == ("evaluate", "test", options.out)
    assert evaluate.out == tmp_path / "eval"
