"""TransUNet backbone: shapes, latent grid, encode/decode split, files, perturbation, train-base."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ApplePerturbLib import cli
from ApplePerturbLib.apple.networks import PerturbationGenerator
from ApplePerturbLib.apple.trainer import TrainingConfig, train_perturber
from ApplePerturbLib.backbones import build_backbone, load_trained_backbone
from ApplePerturbLib.backbones.transunet import TransUNetBackbone, load_transunet, save_transunet
from ApplePerturbLib.backbones.unet import UNetBackbone, save_unet
from ApplePerturbLib.cohort import read_manifest
from ApplePerturbLib.errors import CheckpointError, InvalidInputError
from ApplePerturbLib.latents import LatentCache, group_indices
from ApplePerturbLib.perturber import load_perturber, save_perturber
from ApplePerturbLib.segment import Segmenter
from ApplePerturbLib.synthetic import make_synthetic_cohort

TINY = dict(features=(8, 8, 16, 16), hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32,
            decoder_channels=(16, 8, 8, 4))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny(seed=0) -> TransUNetBackbone:
    torch.manual_seed(seed)
    return TransUNetBackbone(input_size=64, **TINY).freeze()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_shapes_and_latent_grid():
    backbone = _tiny()
    pixels = torch.randn(2, 3, 64, 64)
    encoded = backbone.encode(pixels)
    assert backbone.latent_shape == (16, 4, 4)
    assert encoded.latent.shape == (2, 16, 4, 4)
    assert [tuple(c.shape) for c in encoded.context] == [(2, 16, 8, 8), (2, 8, 16, 16), (2, 8, 32, 32)]
    assert backbone(pixels).shape == (2, 1, 64, 64)


def test_default_size_and_parameter_count():
    backbone = TransUNetBackbone().freeze()
    parameters = sum(p.numel() for p in backbone.parameters())
    assert 2_000_000 <= parameters <= 5_000_000
    assert backbone.latent_shape == (256, 16, 16)
    assert (backbone.name, backbone.input_size, backbone.stretch, backbone.requires_box) == ("transunet", 256, True, False)
    assert backbone.encode(torch.zeros(1, 3, 256, 256)).latent.shape == (1, 256, 16, 16)


def test_latent_is_transformer_output_in_row_major_grid():
    backbone = _tiny()
    net = backbone.net
    pixels = torch.randn(1, 3, 64, 64)
    embedded = net.patch_embedding(net.stage3(net.stage2(net.stage1(net.root(pixels)))))
    tokens = net.norm(net.transformer(embedded.flatten(2).transpose(1, 2) + net.position_embedding))
    latent = backbone.encode(pixels).latent
    # Token k sits at grid row k // 4, column k % 4.
    assert torch.allclose(latent[0, :, 1, 2], tokens[0, 1 * 4 + 2], atol=1e-6)
    assert torch.allclose(latent.flatten(2).transpose(1, 2), tokens, atol=1e-6)
    net.transformer = torch.nn.Identity()
    assert not torch.allclose(backbone.encode(pixels).latent, latent)


def test_latent_is_token_map_after_final_norm():
    backbone = _tiny()
    encoded = backbone.encode(torch.randn(1, 3, 64, 64))
    tokens = encoded.latent.flatten(2).transpose(1, 2)[0]
    # LayerNorm (weight 1, bias 0 at initialisation) gives each token zero mean and unit variance.
    assert torch.allclose(tokens.mean(dim=1), torch.zeros(16), atol=1e-5)
    assert torch.allclose(tokens.var(dim=1, unbiased=False), torch.ones(16), atol=1e-3)


def test_encode_decode_equals_forward():
    backbone = _tiny()
    pixels = torch.randn(3, 3, 64, 64)
    encoded = backbone.encode(pixels)
    assert torch.equal(backbone.decode(encoded.latent, encoded.context, None), backbone(pixels))


def test_decode_uses_latent_and_skips():
    backbone = _tiny()
    encoded = backbone.encode(torch.randn(1, 3, 64, 64))
    logits = backbone.decode(encoded.latent, encoded.context, None)
    assert not torch.equal(logits, backbone.decode(encoded.latent + 1.0, encoded.context, None))
    zero_skips = [torch.zeros_like(c) for c in encoded.context]
    assert not torch.equal(logits, backbone.decode(encoded.latent, zero_skips, None))


def test_save_load_round_trip(tmp_path):
    backbone = _tiny()
    path = tmp_path / "transunet.safetensors"
    save_transunet(backbone, path, {"note": "test"})
    loaded = load_transunet(path)
    pixels = torch.randn(2, 3, 64, 64)
    assert torch.equal(backbone(pixels), loaded(pixels))
    assert loaded.weights_sha256 == _sha256(path)
    assert loaded.training_metadata["architecture"] == "transunet"
    assert loaded.training_metadata["network"]["hidden_size"] == 16
    assert loaded.training_metadata["note"] == "test"
    assert not any(p.requires_grad for p in loaded.parameters())
    assert list(tmp_path.iterdir()) == [path]


def test_other_seed_other_output(tmp_path):
    pixels = torch.randn(1, 3, 64, 64)
    assert not torch.equal(_tiny(0)(pixels), _tiny(1)(pixels))


def test_build_and_dispatch_by_file(tmp_path):
    save_transunet(_tiny(), tmp_path / "t.safetensors")
    torch.manual_seed(0)
    save_unet(UNetBackbone(features=(4, 4, 8, 8, 16, 4), input_size=64), tmp_path / "u.safetensors")
    assert build_backbone("transunet", tmp_path / "t.safetensors").name == "transunet"
    assert load_trained_backbone(tmp_path / "t.safetensors").name == "transunet"
    assert load_trained_backbone(tmp_path / "u.safetensors").name == "unet"
    with pytest.raises(InvalidInputError, match="needs --checkpoint"):
        build_backbone("transunet")


def test_load_rejects_wrong_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_transunet(tmp_path / "missing.safetensors")
    save_unet(UNetBackbone(features=(4, 4, 8, 8, 16, 4), input_size=64), tmp_path / "u.safetensors")
    with pytest.raises(CheckpointError, match="apple-perturb-unet"):
        load_transunet(tmp_path / "u.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_transunet(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_trained_backbone(tmp_path / "junk.safetensors")


def test_load_rejects_truncated_weights(tmp_path):
    path = tmp_path / "t.safetensors"
    save_transunet(_tiny(), path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    tensors.pop(next(iter(tensors)))
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="inconsistent settings or weights"):
        load_transunet(path)


@pytest.mark.parametrize("settings, message", [
    ({"input_size": 100}, "multiple of 16"),
    ({"hidden_size": 30, "num_heads": 4}, "not divisible"),
    ({"features": (8, 8, 16)}, "4 positive"),
    ({"num_layers": 0}, "1 or more"),
    ({"depth": 3}, "unknown TransUNet setting"),
])
def test_invalid_settings_rejected(settings, message):
    with pytest.raises(InvalidInputError, match=message):
        TransUNetBackbone(**{**TINY, "input_size": 64, **settings})


def test_segmenter_returns_original_size_mask():
    segmenter = Segmenter(_tiny())
    segmenter.set_image(np.random.default_rng(0).integers(0, 255, (90, 130), dtype=np.uint8))
    mask = segmenter.predict()
    assert mask.shape == (90, 130)
    assert mask.dtype == bool


def test_generator_on_transunet_latent():
    backbone = _tiny()
    encoded = backbone.encode(torch.randn(2, 3, 64, 64))
    generator = PerturbationGenerator(backbone.latent_shape[0])
    delta = generator(encoded.latent)
    assert delta.shape == encoded.latent.shape
    logits = backbone.decode(encoded.latent + delta, encoded.context, None)
    assert logits.shape == (2, 1, 64, 64)


def test_perturber_trains_and_reloads_on_transunet(tmp_path):
    manifest = make_synthetic_cohort(tmp_path / "cohort", n_cases=4, seed=1, image_size=(64, 96))
    backbone = _tiny()
    checkpoint = tmp_path / "t.safetensors"
    save_transunet(backbone, checkpoint)
    backbone = load_transunet(checkpoint)
    records = read_manifest(manifest)
    samples = [s for _, s in LatentCache(backbone).iterate(records) if s is not None]
    groups = group_indices(records, "sex", 50.0)
    result = train_perturber(backbone, samples, groups, 2, TrainingConfig(epochs=1, batch_size=4))
    assert result.generator.dec3.weight.abs().sum() > 0  # the zero-initialised last layer was updated
    path = tmp_path / "perturber.safetensors"
    save_perturber(path, result.generator, result.discriminator, backbone, {"groups": ["female", "male"]})
    perturber = load_perturber(path, backbone)
    latent = samples[0].latent[None].float()
    assert torch.equal(perturber.perturb(latent), latent + result.generator(latent))


def test_train_base_cli_trains_transunet(tmp_path, capsys):
    manifest = make_synthetic_cohort(tmp_path / "cohort", n_cases=6, seed=2, image_size=(64, 96))
    out = tmp_path / "base.safetensors"
    code = cli.main(["train-base", "--cohort", str(manifest), "--out", str(out), "--architecture", "transunet",
                     "--epochs", "1", "--max-images", "4", "--device", "cpu", "--progress", "none"])
    assert code == 0
    assert "wrote transunet" in capsys.readouterr().out
    backbone = build_backbone("transunet", out)
    assert backbone.latent_shape == (256, 16, 16)
    assert backbone.training_metadata["architecture"] == "transunet"
    assert backbone.training_metadata["train_images"] == 4
