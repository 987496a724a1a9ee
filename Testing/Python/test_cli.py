"""The apple-perturb command line end to end on generated data, and its error messages."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ApplePerturbLib.cli import main
from ApplePerturbLib.cohort import read_manifest, write_manifest
from ApplePerturbLib.imageio import read_mask


@pytest.fixture(scope="module")
def trained(synthetic_manifest, tmp_path_factory):
    """A U-Net trained for one epoch and a perturber trained on it for two."""
    work = tmp_path_factory.mktemp("trained")
    unet, perturber = work / "unet.safetensors", work / "perturber.safetensors"
    assert main(["train-base", "--cohort", str(synthetic_manifest), "--out", str(unet), "--epochs", "1",
                 "--progress", "none"]) == 0
    assert main(["train", "--cohort", str(synthetic_manifest), "--backbone", "unet", "--checkpoint", str(unet),
                 "--attribute", "sex", "--out", str(perturber), "--epochs", "2", "--lr", "1e-2",
                 "--cache", str(work / "cache"), "--progress", "none"]) == 0
    return unet, perturber


def _evaluate(manifest, unet, perturber, out):
    code = main(["evaluate", "--cohort", str(manifest), "--backbone", "unet", "--checkpoint", str(unet),
                 "--perturber", str(perturber), "--out", str(out), "--save-masks", "--progress", "none"])
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


def test_evaluate_writes_metrics_for_both_models(synthetic_manifest, trained, tmp_path, capsys):
    unet, perturber = trained
    metrics = _evaluate(synthetic_manifest, unet, perturber, tmp_path / "eval")
    assert set(metrics["base"]["groups"]) == {"female", "male"}
    assert metrics["apple"]["n_images"] == metrics["base"]["n_images"] > 0
    assert 0 < metrics["perturbation_size"]["median"] <= metrics["perturbation_size"]["max"]
    assert metrics["attribute"] == "sex"
    rows = list(csv.DictReader(open(tmp_path / "eval" / "per_image.csv")))
    assert len(rows) == metrics["base"]["n_images"]
    assert np.mean([float(r["dice_base"]) for r in rows]) == pytest.approx(metrics["base"]["dsc_overall"], abs=1e-6)
    assert "DSC_delta" in capsys.readouterr().out


def test_perturber_reload_reproduces_masks(synthetic_manifest, trained, tmp_path):
    unet, perturber = trained
    _evaluate(synthetic_manifest, unet, perturber, tmp_path / "first")
    _evaluate(synthetic_manifest, unet, perturber, tmp_path / "second")
    first = sorted((tmp_path / "first" / "masks" / "apple").iterdir())
    assert first
    for path in first:
        assert np.array_equal(read_mask(path), read_mask(tmp_path / "second" / "masks" / "apple" / path.name))

    image = next(r.image for r in read_manifest(synthetic_manifest) if r.image.stem == first[0].stem)
    out = tmp_path / "one.png"
    assert main(["segment", str(image), "--backbone", "unet", "--checkpoint", str(unet),
                 "--perturber", str(perturber), "--out", str(out)]) == 0
    assert np.array_equal(read_mask(out), read_mask(first[0]))


def test_perturber_for_other_backbone_is_rejected(synthetic_manifest, trained, tmp_path, capsys):
    _, perturber = trained
    code = main(["evaluate", "--cohort", str(synthetic_manifest), "--backbone", "litemedsam",
                 "--perturber", str(perturber), "--out", str(tmp_path / "eval"), "--progress", "none"])
    assert code == 1
    message = capsys.readouterr().err
    assert "'unet'" in message
    assert "'litemedsam'" in message
    assert not (tmp_path / "eval").exists()


def test_training_emits_json_lines(synthetic_manifest, trained, tmp_path):
    unet, _ = trained
    out = tmp_path / "p.safetensors"
    completed = subprocess.run(
        [sys.executable, "-m", "ApplePerturbLib", "train", "--cohort", str(synthetic_manifest), "--backbone", "unet",
         "--checkpoint", str(unet), "--attribute", "age", "--out", str(out), "--epochs", "2", "--no-cache",
         "--progress", "jsonl"], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    events = [json.loads(line) for line in completed.stdout.splitlines()]
    assert events[0]["event"] == "start"
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(e["epochs"] == 2 and "loss_g" in e and "loss_d" in e and "dsc" in e for e in epochs)
    assert events[-1] == {"event": "done", "checkpoint": str(out), "seconds": events[-1]["seconds"],
                          "dsc": epochs[-1]["dsc"]}
    assert out.is_file()


def test_json_lines_error_event(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "ApplePerturbLib", "train", "--cohort", str(tmp_path / "absent.csv"),
         "--attribute", "sex", "--out", str(tmp_path / "p.safetensors"), "--progress", "jsonl"],
        capture_output=True, text=True, timeout=120)
    assert completed.returncode == 1
    event = json.loads(completed.stdout.splitlines()[-1])
    assert event["event"] == "error"
    assert "absent.csv" in event["message"]


@pytest.mark.parametrize("box, expected", [
    (["500", "10", "600", "50"], "outside"),
    (["10", "10", "10", "50"], "zero area"),
    (["40", "10", "20", "50"], "inverted"),
])
def test_segment_rejects_bad_box(synthetic_manifest, tmp_path, capsys, box, expected):
    image = read_manifest(synthetic_manifest)[0].image
    out = tmp_path / "mask.png"
    assert main(["segment", str(image), "--box", *box, "--out", str(out)]) == 1
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_segment_rejects_truncated_image(synthetic_manifest, tmp_path, capsys):
    image = read_manifest(synthetic_manifest)[0].image
    broken = tmp_path / "broken.png"
    broken.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    assert main(["segment", str(broken), "--box", "1", "1", "20", "20", "--out", str(tmp_path / "m.png")]) == 1
    assert "broken.png" in capsys.readouterr().err


def test_missing_backbone_checkpoint(synthetic_manifest, tmp_path, capsys):
    image = read_manifest(synthetic_manifest)[0].image
    assert main(["segment", str(image), "--backbone", "unet", "--checkpoint", str(tmp_path / "none.safetensors"),
                 "--out", str(tmp_path / "m.png")]) == 1
    assert "none.safetensors" in capsys.readouterr().err


def test_empty_cohort(tmp_path, capsys):
    (tmp_path / "manifest.csv").write_text("image,mask,case_id,sex,age\n")
    assert main(["train", "--cohort", str(tmp_path / "manifest.csv"), "--attribute", "sex",
                 "--out", str(tmp_path / "p.safetensors"), "--progress", "none"]) == 1
    assert "empty" in capsys.readouterr().err
    assert not (tmp_path / "p.safetensors").exists()


def test_single_group_training_split(synthetic_manifest, tmp_path, capsys):
    records = [r for r in read_manifest(synthetic_manifest)]
    only_female = [type(r)(r.image, r.mask, r.case_id, "F", r.age, r.spacing) for r in records]
    manifest = tmp_path / "female.csv"
    write_manifest(manifest, only_female)
    assert main(["train", "--cohort", str(manifest), "--attribute", "sex",
                 "--out", str(tmp_path / "p.safetensors"), "--progress", "none"]) == 1
    message = capsys.readouterr().err
    assert "sex" in message
    assert "female" in message
    assert not (tmp_path / "p.safetensors").exists()


@pytest.mark.slow
def test_litemedsam_train_and_evaluate(synthetic_manifest, tmp_path):
    perturber = tmp_path / "lite.safetensors"
    assert main(["train", "--cohort", str(synthetic_manifest), "--attribute", "sex", "--out", str(perturber),
                 "--epochs", "1", "--max-images", "6", "--cache", str(tmp_path / "cache"), "--progress", "none"]) == 0
    assert len(list((tmp_path / "cache" / "latents").glob("*.safetensors"))) == 6
    metrics = _evaluate_lite(synthetic_manifest, perturber, tmp_path / "eval")
    assert metrics["base"]["dsc_overall"] > 0.5
    assert metrics["perturber_metadata"]["backbone"] == "litemedsam"


def _evaluate_lite(manifest, perturber, out):
    assert main(["evaluate", "--cohort", str(manifest), "--perturber", str(perturber), "--out", str(out),
                 "--progress", "none"]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_ddti_folder_as_cohort(ddti_dir, trained, tmp_path, monkeypatch):
    import shutil

    from ApplePerturbLib.workflows import resolve_cohort

    source = tmp_path / "ddti"
    source.mkdir()
    for case in ("100", "101", "106"):
        for path in ddti_dir.glob(f"{case}.xml"):
            shutil.copy(path, source)
        for path in ddti_dir.glob(f"{case}_*.jpg"):
            shutil.copy(path, source)
    monkeypatch.setenv("APPLE_PERTURB_CACHE", str(tmp_path / "cache"))
    manifest = resolve_cohort(source)
    assert manifest.parent.parent == tmp_path / "cache" / "cohorts"
    assert len(read_manifest(manifest)) == len(list(source.glob("*.jpg")))
    stamp = manifest.stat().st_mtime_ns
    assert resolve_cohort(source) == manifest
    assert manifest.stat().st_mtime_ns == stamp

    unet, _ = trained
    assert main(["evaluate", "--cohort", str(source), "--backbone", "unet", "--checkpoint", str(unet),
                 "--attribute", "age", "--split", "all", "--out", str(tmp_path / "eval"), "--progress", "none"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["cohort_manifest_path"] == str(manifest.resolve())
    assert metrics["base"]["n_images"] == len(list(source.glob("*.jpg")))


def test_main_restores_sigterm_handler(tmp_path):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    main(["train", "--cohort", str(tmp_path / "absent.csv"), "--attribute", "sex",
          "--out", str(tmp_path / "p.safetensors"), "--progress", "none"])
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("options, expected", [
    (["--epochs", "0"], "--epochs 0"),
    (["--beta", "-1"], "--beta -1"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--lr", "-1"], "--lr -1"),
    (["--device", "foo"], "device 'foo'"),
])
def test_train_rejects_bad_option(synthetic_manifest, tmp_path, capsys, options, expected):
    out = tmp_path / "p.safetensors"
    code = main(["train", "--cohort", str(synthetic_manifest), "--attribute", "sex", "--out", str(out),
                 "--progress", "none", *options])
    assert code == 1
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_empty_test_split_is_named(synthetic_manifest, tmp_path, capsys):
    records = read_manifest(synthetic_manifest)
    one_case = [r for r in records if r.case_id == records[0].case_id]
    manifest = tmp_path / "one.csv"
    write_manifest(manifest, one_case)
    assert main(["evaluate", "--cohort", str(manifest), "--out", str(tmp_path / "eval"), "--progress", "none"]) == 1
    assert "test split is empty" in capsys.readouterr().err


def test_unexpected_error_gives_error_event(synthetic_manifest, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr("ApplePerturbLib.workflows.read_manifest", broken)
    code = main(["train", "--cohort", str(synthetic_manifest), "--attribute", "sex",
                 "--out", str(tmp_path / "p.safetensors"), "--progress", "jsonl"])
    assert code == 1
    event = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert event == {"event": "error", "message": "RuntimeError: simulated failure"}


def test_perturber_file_is_group_readable(trained):
    _, perturber = trained
    assert perturber.stat().st_mode & 0o044


def test_train_base_input_size(synthetic_manifest, tmp_path):
    from ApplePerturbLib.backbones import load_trained_backbone

    out = tmp_path / "small.safetensors"
    assert main(["train-base", "--cohort", str(synthetic_manifest), "--out", str(out), "--epochs", "1",
                 "--input-size", "64", "--max-images", "4", "--progress", "none"]) == 0
    model = load_trained_backbone(out)
    assert model.input_size == 64
    assert model.latent_shape == (256, 4, 4)


@pytest.mark.parametrize("size", ["50", "16", "0"])
def test_train_base_rejects_input_size(synthetic_manifest, tmp_path, capsys, size):
    out = tmp_path / "small.safetensors"
    code = main(["train-base", "--cohort", str(synthetic_manifest), "--out", str(out), "--input-size", size,
                 "--progress", "none"])
    assert code == 1
    assert f"--input-size {size}" in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_stops_when_asked(synthetic_manifest, trained, tmp_path):
    from ApplePerturbLib.errors import TrainingInterrupted
    from ApplePerturbLib.progress import Reporter
    from ApplePerturbLib.workflows import evaluate_on_cohort

    unet, perturber = trained
    polls = []

    def stop_at_third_image():
        polls.append(1)
        return len(polls) >= 3

    out = tmp_path / "eval"
    with pytest.raises(TrainingInterrupted, match="after 2 of"):
        evaluate_on_cohort(synthetic_manifest, "unet", unet, perturber, "test", out, Reporter(),
                           should_stop=stop_at_third_image)
    assert not (out / "metrics.json").exists()
    assert not (out / "per_image.csv").exists()


def test_evaluate_with_cached_latents(synthetic_manifest, trained, tmp_path):
    unet, perturber = trained
    exact = _evaluate(synthetic_manifest, unet, perturber, tmp_path / "exact")
    cache = tmp_path / "cache"
    runs = []
    for name in ("first", "second"):
        out = tmp_path / name
        assert main(["evaluate", "--cohort", str(synthetic_manifest), "--backbone", "unet", "--checkpoint", str(unet),
                     "--perturber", str(perturber), "--out", str(out), "--cached-latents", "--cache", str(cache),
                     "--progress", "none"]) == 0
        runs.append(json.loads((out / "metrics.json").read_text()))
    assert exact["latents"] == "computed"
    assert runs[0]["latents"] == "float16 cache"
    assert len(list((cache / "latents").glob("*.safetensors"))) == exact["base"]["n_images"]
    for condition in ("base", "apple"):
        assert runs[1][condition]["dsc_overall"] == runs[0][condition]["dsc_overall"]
        assert runs[0][condition]["dsc_overall"] == pytest.approx(exact[condition]["dsc_overall"], abs=5e-3)


def test_ctrl_c_exits_130_with_message(synthetic_manifest, tmp_path, capsys, monkeypatch):
    from ApplePerturbLib import commands

    def interrupted(args, reporter, should_stop):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "run", interrupted)
    code = main(["import-ddti", str(tmp_path), str(tmp_path / "out")])
    assert code == 130
    assert "interrupted (Ctrl-C)" in capsys.readouterr().err
