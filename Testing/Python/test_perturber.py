"""Perturber checkpoints: metadata, weights-only loading, mismatch errors, atomic writes."""

import errno
import json

import pytest
import torch

from ApplePerturbLib.apple.networks import AttributeDiscriminator, PerturbationGenerator
from ApplePerturbLib.backbones.unet import UNetBackbone, save_unet
from ApplePerturbLib.errors import CheckpointError, PerturberMismatchError
from ApplePerturbLib.perturber import load_perturber, read_perturber_metadata, save_perturber


def _unet(features=(4, 4, 8, 8, 16, 4), input_size=64, seed=0):
    torch.manual_seed(seed)
    unet = UNetBackbone(features=features, input_size=input_size).freeze()
    unet.weights_sha256 = f"sha-of-seed-{seed}"
    return unet


def _save(path, backbone, **metadata):
    torch.manual_seed(1)
    generator = PerturbationGenerator(backbone.latent_shape[0])
    torch.nn.init.normal_(generator.dec3.weight)
    discriminator = AttributeDiscriminator(backbone.latent_shape[0], 2)
    save_perturber(path, generator, discriminator, backbone,
                   {"attribute": "sex", "groups": ["female", "male"], **metadata})
    return generator


def test_round_trip_gives_same_perturbation(tmp_path):
    backbone = _unet()
    generator = _save(tmp_path / "p.safetensors", backbone, alpha=1.0, beta=0.1)
    perturber = load_perturber(tmp_path / "p.safetensors", backbone)
    latent = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        assert torch.equal(perturber.perturb(latent), latent + generator.eval()(latent))
    assert perturber.metadata["beta"] == 0.1
    assert perturber.metadata["backbone"] == "unet"
    assert perturber.metadata["latent_shape"] == [16, 4, 4]
    assert perturber.metadata["backbone_sha256"] == "sha-of-seed-0"


def test_other_latent_shape_is_rejected(tmp_path):
    _save(tmp_path / "p.safetensors", _unet())
    other = _unet(features=(4, 4, 8, 8, 32, 4))
    with pytest.raises(PerturberMismatchError) as raised:
        load_perturber(tmp_path / "p.safetensors", other)
    assert "(16, 4, 4)" in str(raised.value)
    assert "(32, 4, 4)" in str(raised.value)


def test_other_backbone_weights_are_rejected(tmp_path):
    _save(tmp_path / "p.safetensors", _unet(seed=0))
    with pytest.raises(PerturberMismatchError, match="SHA-256"):
        load_perturber(tmp_path / "p.safetensors", _unet(seed=1))


def test_other_backbone_name_is_rejected(tmp_path, litemedsam):
    _save(tmp_path / "p.safetensors", _unet())
    with pytest.raises(PerturberMismatchError, match="'unet'.*'litemedsam'"):
        load_perturber(tmp_path / "p.safetensors", litemedsam)


def test_backbone_file_is_not_a_perturber(tmp_path):
    save_unet(_unet(), tmp_path / "unet.safetensors")
    with pytest.raises(CheckpointError, match="not a 'apple-perturb-perturber' file"):
        read_perturber_metadata(tmp_path / "unet.safetensors")


def test_pickle_file_is_not_a_perturber(tmp_path):
    torch.save({"generator": torch.zeros(3)}, tmp_path / "p.pt")
    with pytest.raises(CheckpointError, match="p.pt"):
        read_perturber_metadata(tmp_path / "p.pt")


def test_missing_perturber_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_perturber_metadata(tmp_path / "absent.safetensors")


def test_disk_full_leaves_old_checkpoint_intact(tmp_path, monkeypatch):
    backbone = _unet()
    path = tmp_path / "p.safetensors"
    _save(path, backbone, beta=1.0)
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("ApplePerturbLib.checkpoint_files.save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _save(path, backbone, beta=2.0)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors"]
    assert json.loads(json.dumps(read_perturber_metadata(path)))["beta"] == 1.0


def test_perturbation_size_of_constant_shift(synthetic_manifest):
    from ApplePerturbLib.cohort import read_manifest
    from ApplePerturbLib.evaluate import segment_record
    from ApplePerturbLib.imageio import read_image
    from ApplePerturbLib.perturber import Perturber

    torch.manual_seed(0)
    backbone = UNetBackbone(features=(4, 4, 8, 8, 16, 4), input_size=64).freeze()
    generator = PerturbationGenerator(16).eval()
    with torch.no_grad():
        generator.dec3.bias.fill_(0.5)  # the last layer starts at zero, so G_p now adds exactly 0.5 everywhere
    perturber = Perturber(generator, AttributeDiscriminator(16, 2), {})
    record = read_manifest(synthetic_manifest)[0]
    output = segment_record(backbone, [perturber], record)
    with torch.no_grad():
        latent = backbone.encode(backbone.prepare(read_image(record.image)).pixels).latent
    expected = 0.5 * latent.numel() ** 0.5 / float(latent.norm())
    assert output.perturbation_sizes == pytest.approx([expected], rel=1e-5)
