"""Backbones: SAM loading path, LiteMedSAM on real DDTI, U-Net files, coordinate frames."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ApplePerturbLib.backbones import build_backbone
from ApplePerturbLib.backbones.sam_family import sam_encoder_config
from ApplePerturbLib.backbones.unet import UNetBackbone, load_unet, save_unet
from ApplePerturbLib.boxes import boxes_from_mask
from ApplePerturbLib.errors import CheckpointError, InvalidInputError
from ApplePerturbLib.metrics import dice_score
from ApplePerturbLib.segment import Segmenter

from conftest import TINY_SAM, write_tiny_sam


def _ellipse_image(height=120, width=200):
    rows, cols = np.mgrid[:height, :width]
    inside = ((rows - 60) / 25) ** 2 + ((cols - 90) / 40) ** 2 <= 1
    rng = np.random.default_rng(0)
    image = np.clip(150 + rng.normal(0, 20, (height, width)) - 100 * inside, 0, 255).astype(np.uint8)
    return image, inside


def test_tiny_sam_reloads_with_identical_output(tiny_sam_file, tmp_path):
    image, _ = _ellipse_image()
    first = Segmenter(build_backbone("sam_vit_b", tiny_sam_file))
    second = Segmenter(build_backbone("sam_vit_b", tiny_sam_file))
    first.set_image(image)
    second.set_image(image)
    assert torch.equal(first._encoded.latent, second._encoded.latent)
    assert first._encoded.latent.shape == (1, 256, 64, 64)
    assert np.array_equal(first.predict([(50, 35, 130, 85)]), second.predict([(50, 35, 130, 85)]))


def test_sam_config_read_from_weights(tiny_sam_file):
    state_dict = torch.load(tiny_sam_file, weights_only=True)
    assert sam_encoder_config(state_dict) == TINY_SAM


def test_other_seed_gives_other_sam_output(tiny_sam_file, tmp_path):
    image, _ = _ellipse_image()
    other = write_tiny_sam(tmp_path / "other.pth", seed=1)
    first, second = build_backbone("sam_vit_b", tiny_sam_file), build_backbone("sam_vit_b", other)
    assert first.weights_sha256 != second.weights_sha256
    prepared = first.prepare(image)
    assert not torch.equal(first.encode(prepared.pixels).latent, second.encode(prepared.pixels).latent)


def test_sam_needs_checkpoint():
    with pytest.raises(CheckpointError, match="--checkpoint"):
        build_backbone("sam_vit_b")


@pytest.mark.parametrize("content", [b"", b"not a pytorch file at all", b"PK\x03\x04broken zip"])
def test_wrong_kind_of_weights_file(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="weights.pth"):
        build_backbone("medsam", path)


def test_unet_file_is_not_a_sam_checkpoint(tmp_path):
    torch.save(UNetBackbone(features=(4, 4, 8, 8, 16, 4), input_size=64).net.state_dict(), tmp_path / "unet.pth")
    with pytest.raises(CheckpointError, match="not a SAM or MedSAM checkpoint"):
        build_backbone("sam_vit_b", tmp_path / "unet.pth")


def test_unknown_backbone_name():
    with pytest.raises(InvalidInputError, match="unknown backbone 'sam2'"):
        build_backbone("sam2")


def test_unet_round_trip(tmp_path):
    unet = UNetBackbone(features=(4, 4, 8, 8, 16, 4), input_size=64).freeze()
    save_unet(unet, tmp_path / "unet.safetensors")
    loaded = load_unet(tmp_path / "unet.safetensors")
    pixels = torch.rand(1, 3, 64, 64)
    assert torch.equal(unet(pixels), loaded(pixels))
    assert loaded.latent_shape == (16, 4, 4)
    assert loaded.weights_sha256 == unet_sha(tmp_path / "unet.safetensors")


def unet_sha(path: Path) -> str:
    from ApplePerturbLib.backbones.base import file_sha256

    return file_sha256(path)


def test_unet_rejects_perturber_file_as_backbone(tmp_path):
    path = tmp_path / "random.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="random.safetensors"):
        load_unet(path)


def test_box_and_mask_frames_round_trip(litemedsam):
    image, inside = _ellipse_image(120, 200)
    prepared = litemedsam.prepare(image)
    assert prepared.pixels.shape == (1, 3, 256, 256)
    assert prepared.content_size == (154, 256)
    box = litemedsam.boxes_to_input_frame([(0, 0, 199, 119)], prepared)
    assert torch.allclose(box, torch.tensor([[0.0, 0.0, 199 * 1.28, 119 * 154 / 120]]))
    target = litemedsam.target_in_logits_frame(inside, prepared)
    mask = litemedsam.logits_to_mask(target * 20 - 10, prepared)
    assert dice_score(mask, inside) > 0.97
    assert target[..., 154:, :].sum() == 0


@pytest.mark.slow
def test_litemedsam_segments_real_ddti_nodule(litemedsam, ddti_dir, tmp_path):
    from ApplePerturbLib.ddti import import_ddti
    import shutil

    source = tmp_path / "ddti"
    source.mkdir()
    for name in ("100.xml", "100_1.jpg"):
        shutil.copy(ddti_dir / name, source / name)
    import_ddti(source, tmp_path / "cohort")
    from ApplePerturbLib.cohort import read_manifest
    from ApplePerturbLib.imageio import read_image, read_mask

    record = read_manifest(tmp_path / "cohort" / "manifest.csv")[0]
    image, truth = read_image(record.image), read_mask(record.mask)
    segmenter = Segmenter(litemedsam)
    segmenter.set_image(image)
    predicted = segmenter.predict(boxes_from_mask(truth))
    assert dice_score(predicted, truth) > 0.7
