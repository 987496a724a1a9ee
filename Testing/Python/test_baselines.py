"""Comparison methods: FEBS scaling factors and loss, train-base with FEBS, InD training and evaluation."""

import csv
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ApplePerturbLib import cli
from ApplePerturbLib.apple.losses import segmentation_loss
from ApplePerturbLib.backbones import build_backbone, load_trained_backbone
from ApplePerturbLib.backbones.unet import UNetBackbone, save_unet
from ApplePerturbLib.baselines.febs import (febs_segmentation_loss, group_scaling_factors, image_scaling_factors,
                                            soft_dice_loss)
from ApplePerturbLib.baselines.decoder_ind import load_mask_decoder
from ApplePerturbLib.baselines.ind import INDEX_NAME, group_file_name, train_ind
from ApplePerturbLib.base_training import BaseTrainingConfig
from ApplePerturbLib.progress import Reporter
from ApplePerturbLib.cohort import group_of, read_manifest, write_manifest
from ApplePerturbLib.errors import CheckpointError, InvalidInputError, TrainingInterrupted
from ApplePerturbLib.evaluate import segment_record
from ApplePerturbLib.metrics import dice_score
from ApplePerturbLib.synthetic import make_synthetic_cohort
from ApplePerturbLib.workflows import CohortSplit

TANH_1 = math.tanh(1.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# FEBS scaling factors -----------------------------------------------------------------------------

def test_febs_equal_losses_equal_factors():
    factors = group_scaling_factors({0: 0.3, 1: 0.3})
    assert factors[0] == pytest.approx(TANH_1)
    assert factors[1] == pytest.approx(TANH_1)


def test_febs_worst_group_gets_smallest_factor():
    factors = group_scaling_factors({0: 0.2, 1: 0.4})
    assert factors[0] == pytest.approx(math.tanh(1.0))
    assert factors[1] == pytest.approx(math.tanh(0.5))
    assert factors[1] < factors[0]


def test_febs_gamma_sharpens_ratio():
    assert group_scaling_factors({0: 0.2, 1: 0.4}, gamma=2.0)[1] == pytest.approx(math.tanh(0.25))
    assert group_scaling_factors({0: 0.2, 1: 0.4}, gamma=0.0)[1] == pytest.approx(TANH_1)


def test_febs_single_or_no_group_is_plain():
    assert group_scaling_factors({1: 0.5}) == {1: 1.0}
    assert group_scaling_factors({}) == {}


def test_febs_zero_loss_group_stays_finite():
    factors = group_scaling_factors({0: 0.0, 1: 0.5})
    assert factors[0] == pytest.approx(TANH_1)
    assert 0.0 <= factors[1] < 1e-4
    assert group_scaling_factors({0: 0.0, 1: 0.0}) == {0: pytest.approx(TANH_1), 1: pytest.approx(TANH_1)}


@pytest.mark.parametrize("losses, gamma", [({0: -0.1, 1: 0.2}, 1.0), ({0: math.nan, 1: 0.2}, 1.0),
                                           ({0: 0.1, 1: 0.2}, -1.0), ({0: 0.1, 1: 0.2}, math.inf)])
def test_febs_rejects_invalid_values(losses, gamma):
    with pytest.raises(InvalidInputError):
        group_scaling_factors(losses, gamma)


def test_febs_missing_group_does_not_zero_factors():
    # Groups 0 and 2 of 3 present: group 1's absence must not enter the minimum.
    losses = torch.tensor([0.2, 0.2, 0.6, 0.6])
    factors = image_scaling_factors(losses, torch.tensor([0, 0, 2, 2]))
    assert torch.allclose(factors, torch.tensor([TANH_1, TANH_1, math.tanh(1 / 3), math.tanh(1 / 3)]))


def test_febs_one_group_and_unknown_use_factor_one():
    factors = image_scaling_factors(torch.tensor([0.2, 0.7, 0.5]), torch.tensor([0, 0, -1]))
    assert torch.equal(factors, torch.ones(3))
    mixed = image_scaling_factors(torch.tensor([0.2, 0.4, 0.9]), torch.tensor([0, 1, -1]))
    assert mixed[2] == 1.0
    assert mixed[1] < mixed[0] < 1.0


def test_febs_group_loss_is_mean_of_its_images():
    factors = image_scaling_factors(torch.tensor([0.1, 0.3, 0.4]), torch.tensor([0, 0, 1]))
    assert factors[2] == pytest.approx(math.tanh(0.2 / 0.4))


def test_febs_shape_mismatch_rejected():
    with pytest.raises(InvalidInputError, match="one Dice loss and one group per image"):
        image_scaling_factors(torch.tensor([0.1, 0.2]), torch.tensor([0, 1, 1]))


def _batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 1, 16, 16, generator=generator)
    target = (torch.rand(4, 1, 16, 16, generator=generator) > 0.6).float()
    return logits, target


def test_febs_loss_with_one_group_equals_plain_loss():
    logits, target = _batch()
    plain = segmentation_loss(logits, target)
    assert torch.allclose(febs_segmentation_loss(logits, target, torch.tensor([1, 1, 1, 1])), plain)
    assert torch.allclose(febs_segmentation_loss(logits, target, torch.tensor([-1, -1, 0, 0])), plain)


def test_febs_loss_scales_probabilities_of_each_group():
    logits, target = _batch(1)
    logits.requires_grad_(True)
    groups = torch.tensor([0, 0, 1, 1])
    loss = febs_segmentation_loss(logits, target, groups, gamma=1.0)

    probability = torch.sigmoid(logits.detach())
    per_image = soft_dice_loss(probability, target)
    l0, l1 = float(per_image[:2].mean()), float(per_image[2:].mean())
    w0, w1 = math.tanh(min(l0, l1) / l0), math.tanh(min(l0, l1) / l1)
    scale = torch.tensor([w0, w0, w1, w1]).view(4, 1, 1, 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits.detach(), target)
    expected = 0.5 * (bce + soft_dice_loss(probability * scale, target).mean())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() > segmentation_loss(logits.detach(), target).item()
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


# train-base with FEBS ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_synthetic_cohort(tmp_path_factory.mktemp("baselines") / "cohort", n_cases=8, seed=4,
                                 image_size=(64, 96))


def test_train_base_febs_cli(cohort, tmp_path, capsys):
    out = tmp_path / "febs.safetensors"
    code = cli.main(["train-base", "--cohort", str(cohort), "--out", str(out), "--loss", "febs", "--attribute", "sex",
                     "--febs-gamma", "2", "--epochs", "1", "--max-images", "6", "--device", "cpu",
                     "--progress", "none"])
    assert code == 0, capsys.readouterr().err
    metadata = build_backbone("unet", out).training_metadata
    assert metadata["training"]["loss"] == "febs"
    assert metadata["training"]["febs_gamma"] == 2.0
    assert metadata["training"]["febs_attribute"] == "sex"
    assert sum(metadata["train_group_counts"].values()) == metadata["train_images"]
    assert metadata["train_group_counts"]["female"] > 0
    assert metadata["train_group_counts"]["male"] > 0


def test_train_base_febs_needs_attribute(cohort, tmp_path, capsys):
    code = cli.main(["train-base", "--cohort", str(cohort), "--out", str(tmp_path / "x.safetensors"),
                     "--loss", "febs", "--epochs", "1", "--progress", "none"])
    assert code == 1
    assert "needs --attribute" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


# InD ----------------------------------------------------------------------------------------------

def _tiny_base(path: Path, split: CohortSplit) -> Path:
    torch.manual_seed(0)
    save_unet(UNetBackbone(features=(4, 4, 8, 8, 16, 4), input_size=64).freeze(), path,
              {"architecture": "unet", "split": asdict(split)})
    return path


@pytest.fixture(scope="module")
def ind_run(cohort, tmp_path_factory):
    """Base U-Net, an InD folder trained from it, and a manifest where two cases have unknown sex."""
    folder = tmp_path_factory.mktemp("ind")
    split = CohortSplit()
    base = _tiny_base(folder / "base.safetensors", split)
    records = read_manifest(cohort)
    # Two cases of unknown sex form a stratum of 2, so the split puts one of them on the test side.
    unknown_cases = sorted({r.case_id for r in records})[:2]
    edited = [replace(r, sex=None) if r.case_id in unknown_cases else r for r in records]
    manifest = cohort.parent / "manifest_unknown_sex.csv"
    write_manifest(manifest, edited)
    code = cli.main(["train-ind", "--cohort", str(manifest), "--base", str(base), "--attribute", "sex",
                     "--out", str(folder / "ind"), "--epochs", "1", "--lr", "1e-2", "--device", "cpu",
                     "--progress", "none"])
    assert code == 0
    return {"folder": folder / "ind", "base": base, "manifest": manifest, "split": split}


def test_ind_writes_group_models_and_index(ind_run):
    folder = ind_run["folder"]
    index = json.loads((folder / INDEX_NAME).read_text())
    assert index["attribute"] == "sex"
    assert set(index["groups"]) == {"female", "male"}
    assert index["architecture"] == "unet"
    base = load_trained_backbone(folder / "base.safetensors")
    pixels = torch.randn(1, 3, 64, 64)
    outputs = {"base": base(pixels)}
    for name, entry in index["groups"].items():
        model = load_trained_backbone(folder / entry["file"])
        assert entry["file"] == group_file_name(name)
        assert model.weights_sha256 == entry["sha256"]
        assert model.training_metadata["ind_group"] == name
        outputs[name] = model(pixels)
    assert not torch.equal(outputs["female"], outputs["base"])
    assert not torch.equal(outputs["male"], outputs["base"])
    assert not torch.equal(outputs["female"], outputs["male"])


def test_ind_group_counts_match_training_split(ind_run):
    index = json.loads((ind_run["folder"] / INDEX_NAME).read_text())
    train = ind_run["split"].select(read_manifest(ind_run["manifest"]), "train")
    for name, entry in index["groups"].items():
        assert entry["train_images"] == sum(1 for r in train if group_of(r, "sex") == name)


def test_evaluate_ind_picks_group_models(ind_run, tmp_path, capsys):
    folder = ind_run["folder"]
    out = tmp_path / "eval"
    code = cli.main(["evaluate-ind", "--cohort", str(ind_run["manifest"]), "--ind", str(folder), "--split", "test",
                     "--out", str(out), "--device", "cpu", "--progress", "none"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "InD" in printed
    assert "needs every image's attribute at inference" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "ind"
    assert metrics["method_name"] == "InD"
    assert metrics["requires_attribute_at_inference"] is True
    with open(out / "per_image.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    unknown_rows = [r for r in rows if r["group"] == "unknown"]
    assert metrics["images_by_model"]["base"] == len(unknown_rows) > 0

    index = json.loads((folder / INDEX_NAME).read_text())
    base = load_trained_backbone(folder / "base.safetensors")
    models = {name: load_trained_backbone(folder / entry["file"]) for name, entry in index["groups"].items()}
    records = {r.image.name: r for r in read_manifest(ind_run["manifest"])}
    for row in rows:
        record = records[row["image"]]
        group_model = models.get(row["group"], base)
        expected_ind = segment_record(group_model, None, record)
        expected_base = segment_record(base, None, record)
        assert float(row["dice_apple"]) == pytest.approx(dice_score(expected_ind.base, expected_ind.truth), abs=1e-6)
        assert float(row["dice_base"]) == pytest.approx(dice_score(expected_base.base, expected_base.truth), abs=1e-6)
    for row in unknown_rows:
        assert row["dice_apple"] == row["dice_base"]
    # The fine-tuned group models segment differently from the base model.
    assert any(r["dice_apple"] != r["dice_base"] for r in rows if r["group"] != "unknown")
    assert metrics["apple"]["n_images"] == len(rows)


def test_evaluate_ind_rejects_changed_model(ind_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "ind"
    shutil.copytree(ind_run["folder"], copy)
    index = json.loads((copy / INDEX_NAME).read_text())
    shutil.copyfile(copy / "base.safetensors", copy / index["groups"]["male"]["file"])
    code = cli.main(["evaluate-ind", "--cohort", str(ind_run["manifest"]), "--ind", str(copy),
                     "--out", str(tmp_path / "eval"), "--device", "cpu", "--progress", "none"])
    assert code == 1
    assert "changed since" in capsys.readouterr().err
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_evaluate_ind_needs_index(tmp_path, cohort, capsys):
    code = cli.main(["evaluate-ind", "--cohort", str(cohort), "--ind", str(tmp_path), "--out", str(tmp_path / "e"),
                     "--progress", "none"])
    assert code == 1
    assert "ind.json not found" in capsys.readouterr().err


def test_train_ind_needs_two_groups(cohort, tmp_path, capsys):
    only_female = [replace(r, sex="F") for r in read_manifest(cohort)]
    manifest = cohort.parent / "manifest_female.csv"
    write_manifest(manifest, only_female)
    base = _tiny_base(tmp_path / "base.safetensors", CohortSplit())
    code = cli.main(["train-ind", "--cohort", str(manifest), "--base", str(base), "--attribute", "sex",
                     "--out", str(tmp_path / "ind"), "--epochs", "1", "--progress", "none"])
    assert code == 1
    assert "InD needs images of at least 2 groups" in capsys.readouterr().err
    assert not (tmp_path / "ind" / INDEX_NAME).exists()


def test_train_ind_rejects_perturber_as_base(cohort, tmp_path, capsys):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    code = cli.main(["train-ind", "--cohort", str(cohort), "--base", str(tmp_path / "junk.safetensors"),
                     "--attribute", "sex", "--out", str(tmp_path / "ind"), "--progress", "none"])
    assert code == 1
    assert "not a safetensors file" in capsys.readouterr().err


def test_group_file_names_are_safe():
    assert group_file_name("female") == "female.safetensors"
    assert group_file_name("<50") == "lt50.safetensors"
    assert group_file_name(">=50") == "ge50.safetensors"
    assert group_file_name(">=62.5") == "ge62p5.safetensors"
    assert np.all([ch.isalnum() or ch in "._" for ch in group_file_name(">=62.5")])


# InD for promptable backbones: one mask decoder per group ---------------------------------------

@pytest.fixture(scope="module")
def decoder_ind_run(cohort, tiny_sam_file, tmp_path_factory):
    """An InD folder of a tiny random-weight SAM: one fine-tuned mask decoder per sex."""
    folder = tmp_path_factory.mktemp("decoder_ind")
    code = cli.main(["train-ind", "--cohort", str(cohort), "--backbone", "sam_vit_b", "--checkpoint",
                     str(tiny_sam_file), "--attribute", "sex", "--out", str(folder / "ind"), "--epochs", "2",
                     "--lr", "1e-2", "--cache", str(folder / "cache"), "--device", "cpu", "--progress", "none"])
    assert code == 0
    return folder / "ind"


def _decoder_output(backbone, latent):
    box = torch.tensor([[8.0, 8.0, 900.0, 900.0]])
    with torch.no_grad():
        return backbone.decode(latent, [], box)


def test_decoder_ind_fine_tunes_only_the_decoder(decoder_ind_run, tiny_sam_file):
    index = json.loads((decoder_ind_run / INDEX_NAME).read_text())
    assert index["architecture"] == "sam_vit_b"
    assert index["fine_tuned"] == "mask decoder"
    assert set(index["groups"]) == {"female", "male"}
    assert not (decoder_ind_run / "base.safetensors").exists()
    base = build_backbone("sam_vit_b", tiny_sam_file)
    assert index["base"]["sha256"] == base.weights_sha256
    latent = torch.randn(1, 256, 64, 64)
    outputs = {"base": _decoder_output(base, latent)}
    for name, entry in index["groups"].items():
        model = build_backbone("sam_vit_b", tiny_sam_file)
        metadata = load_mask_decoder(decoder_ind_run / entry["file"], model)
        assert metadata["ind_group"] == name
        assert not any(p.requires_grad for p in model.parameters())
        for key, value in base.image_encoder.state_dict().items():
            assert torch.equal(model.image_encoder.state_dict()[key], value), key
        outputs[name] = _decoder_output(model, latent)
    assert not torch.equal(outputs["female"], outputs["base"])
    assert not torch.equal(outputs["male"], outputs["base"])
    assert not torch.equal(outputs["female"], outputs["male"])


def test_evaluate_ind_with_decoders(decoder_ind_run, cohort, tiny_sam_file, tmp_path):
    out = tmp_path / "eval"
    code = cli.main(["evaluate-ind", "--cohort", str(cohort), "--ind", str(decoder_ind_run), "--out", str(out),
                     "--device", "cpu", "--progress", "none"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backbone"] == "sam_vit_b"
    index = json.loads((decoder_ind_run / INDEX_NAME).read_text())
    models = {}
    for name, entry in index["groups"].items():
        models[name] = build_backbone("sam_vit_b", tiny_sam_file)
        load_mask_decoder(decoder_ind_run / entry["file"], models[name])
    records = {r.image.name: r for r in read_manifest(cohort)}
    with open(out / "per_image.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert rows
    for row in rows[:4]:
        expected = segment_record(models[row["group"]], None, records[row["image"]])
        assert float(row["dice_apple"]) == pytest.approx(dice_score(expected.base, expected.truth), abs=1e-6)


def test_decoder_from_other_weights_rejected(decoder_ind_run, tmp_path):
    from conftest import write_tiny_sam

    other = build_backbone("sam_vit_b", write_tiny_sam(tmp_path / "other.pth", seed=1))
    with pytest.raises(CheckpointError, match="fine-tuned from sam_vit_b weights"):
        load_mask_decoder(decoder_ind_run / "female.safetensors", other)


def test_evaluate_ind_rejects_changed_backbone_weights(decoder_ind_run, cohort, tmp_path, capsys):
    import shutil

    from conftest import write_tiny_sam

    copy = tmp_path / "ind"
    shutil.copytree(decoder_ind_run, copy)
    index = json.loads((copy / INDEX_NAME).read_text())
    index["base"]["checkpoint"] = str(write_tiny_sam(tmp_path / "other.pth", seed=1))
    (copy / INDEX_NAME).write_text(json.dumps(index))
    code = cli.main(["evaluate-ind", "--cohort", str(cohort), "--ind", str(copy), "--out", str(tmp_path / "eval"),
                     "--device", "cpu", "--progress", "none"])
    assert code == 1
    assert "changed since" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_fine_tune_stops_with_decoder_frozen(tiny_sam_file, cohort, tmp_path):
    from ApplePerturbLib.base_training import BaseTrainingConfig
    from ApplePerturbLib.baselines.decoder_ind import fine_tune_mask_decoder
    from ApplePerturbLib.errors import TrainingInterrupted
    from ApplePerturbLib.latents import encode_cohort
    from ApplePerturbLib.progress import Reporter

    backbone = build_backbone("sam_vit_b", tiny_sam_file)
    samples = encode_cohort(backbone, read_manifest(cohort)[:2], None, Reporter())
    with pytest.raises(TrainingInterrupted):
        fine_tune_mask_decoder(backbone, samples, BaseTrainingConfig(epochs=1), should_stop=lambda: True)
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not backbone.mask_decoder.training


@pytest.mark.parametrize("extra, message", [
    (["--base", "b.safetensors", "--backbone", "litemedsam"], "not allowed with argument"),
    (["--base", "b.safetensors", "--checkpoint", "w.pth"], "--checkpoint goes with --backbone"),
    (["--backbone", "litemedsam", "--epochs", "0"], "--epochs 0"),
])
def test_train_ind_option_errors(cohort, tmp_path, capsys, extra, message):
    try:
        code = cli.main(["train-ind", "--cohort", str(cohort), "--attribute", "sex", "--out", str(tmp_path / "ind"),
                         "--progress", "none", *extra])
    except SystemExit as stop:  # argparse rejects the option pair itself
        code = stop.code
    assert code != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ind").exists()


def test_evaluate_ind_cached_matches_computed(decoder_ind_run, cohort, tmp_path):
    results = {}
    for name, extra in (("computed", []), ("cached", ["--cached-latents", "--cache", str(tmp_path / "cache")])):
        out = tmp_path / name
        assert cli.main(["evaluate-ind", "--cohort", str(cohort), "--ind", str(decoder_ind_run), "--out", str(out),
                         "--device", "cpu", "--progress", "none", *extra]) == 0
        results[name] = json.loads((out / "metrics.json").read_text())
    assert any((tmp_path / "cache" / "latents").iterdir())
    assert results["computed"]["latents"] == "computed"
    assert results["cached"]["latents"] == "float16 cache"
    for condition in ("base", "apple"):
        computed, cached = results["computed"][condition], results["cached"][condition]
        assert cached["n_images"] == computed["n_images"]
        assert cached["dsc_overall"] == pytest.approx(computed["dsc_overall"], abs=5e-3)


def _edited_copy(folder: Path, tmp_path: Path, edit) -> Path:
    import shutil

    copy = tmp_path / "ind"
    shutil.copytree(folder, copy)
    index = json.loads((copy / INDEX_NAME).read_text())
    edit(index)
    (copy / INDEX_NAME).write_text(json.dumps(index))
    return copy


def _swap_groups(index):
    index["groups"]["female"], index["groups"]["male"] = index["groups"]["male"], index["groups"]["female"]


def _other_split(index):
    index["split"]["split_seed"] = 5


def _other_attribute(index):
    index["attribute"] = "age"


def _shipped_weights(index):
    index["base"]["checkpoint"] = None


@pytest.mark.parametrize("edit, message", [
    (_swap_groups, "lists it for group"),
    (_other_split, "fine-tuned on the split"),
    (_other_attribute, "lists groups"),
])
@pytest.mark.parametrize("run", ["ind_run", "decoder_ind_run"])
def test_evaluate_ind_rejects_edited_index(request, run, edit, message, cohort, tmp_path, capsys):
    folder = request.getfixturevalue(run)
    folder = folder["folder"] if isinstance(folder, dict) else folder
    manifest = request.getfixturevalue("ind_run")["manifest"] if run == "ind_run" else cohort
    copy = _edited_copy(folder, tmp_path, edit)
    code = cli.main(["evaluate-ind", "--cohort", str(manifest), "--ind", str(copy), "--out", str(tmp_path / "eval"),
                     "--device", "cpu", "--progress", "none"])
    assert code == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_evaluate_ind_sam_without_weights_file(decoder_ind_run, cohort, tmp_path, capsys):
    copy = _edited_copy(decoder_ind_run, tmp_path, _shipped_weights)
    code = cli.main(["evaluate-ind", "--cohort", str(cohort), "--ind", str(copy), "--out", str(tmp_path / "eval"),
                     "--device", "cpu", "--progress", "none"])
    assert code == 1
    assert "names no weights file for sam_vit_b" in capsys.readouterr().err


def test_interrupted_rerun_keeps_finished_folder(ind_run, tmp_path, capsys):
    import shutil

    folder = tmp_path / "ind"
    shutil.copytree(ind_run["folder"], folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    polls = []

    def stop_after_some_batches():
        polls.append(1)
        return len(polls) > 2

    with pytest.raises(TrainingInterrupted):
        train_ind(ind_run["manifest"], ind_run["base"], "sex", folder, BaseTrainingConfig(epochs=2), Reporter(),
                  device="cpu", should_stop=stop_after_some_batches)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ind"]


def test_train_ind_out_is_a_file(ind_run, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("keep me")
    code = cli.main(["train-ind", "--cohort", str(ind_run["manifest"]), "--base", str(ind_run["base"]),
                     "--attribute", "sex", "--out", str(out), "--progress", "none"])
    assert code == 1
    assert "is a file" in capsys.readouterr().err
    assert out.read_text() == "keep me"


def test_ind_records_model_input_size(ind_run):
    index = json.loads((ind_run["folder"] / INDEX_NAME).read_text())
    assert index["training"]["input_size"] == 64


def test_ind_masks_feed_downstream_errors(ind_run, tmp_path):
    from ApplePerturbLib.analysis.radiomics_errors import compute_error_table

    out = tmp_path / "eval"
    assert cli.main(["evaluate-ind", "--cohort", str(ind_run["manifest"]), "--ind", str(ind_run["folder"]),
                     "--out", str(out), "--save-masks", "--device", "cpu", "--progress", "none"]) == 0
    table = compute_error_table(out, ind_run["manifest"])
    with open(out / "per_image.csv", newline="") as stream:
        assert table.images == [row["image"] for row in csv.DictReader(stream)]
