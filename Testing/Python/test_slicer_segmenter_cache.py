"""The Slicer module's model cache (ApplePerturbSlicer.segmenter_cache) with real backbones and perturber files.

A tiny U-Net written with the library's own saver gives fast, real models and
perturbers; LiteMedSAM with its shipped weights checks the interactive path
the module's self-test relies on (encode once, decode per box).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ApplePerturb"))

from ApplePerturbLib.apple.networks import AttributeDiscriminator, PerturbationGenerator  # noqa: E402
from ApplePerturbLib.backbones import build_backbone  # noqa: E402
from ApplePerturbLib.backbones.unet import UNetBackbone, save_unet  # noqa: E402
from ApplePerturbLib.errors import PerturberMismatchError  # noqa: E402
from ApplePerturbLib.metrics import dice_score  # noqa: E402
from ApplePerturbLib.perturber import save_perturber  # noqa: E402
from ApplePerturbSlicer.segmenter_cache import (  # noqa: E402
    ModelKey,
    SegmenterCache,
    inference_context,
    resolve_device,
)
from ApplePerturbSlicer.synthetic_image import syntheticFrame  # noqa: E402


@pytest.fixture(scope="module")
def unet_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("unet") / "unet.safetensors"
    save_unet(UNetBackbone(features=(4, 4, 8, 8, 16, 4), input_size=64).freeze(), path)
    return path


def write_perturber(path: Path, unet_file: Path, seed: int = 1) -> Path:
    backbone = build_backbone("unet", unet_file)
    torch.manual_seed(seed)
    generator = PerturbationGenerator(backbone.latent_shape[0])
    torch.nn.init.normal_(generator.dec3.weight, std=5.0)  # a perturbation large enough to change masks
    save_perturber(path, generator, AttributeDiscriminator(backbone.latent_shape[0], 2), backbone,
                   {"attribute": "sex", "groups": ["female", "male"]})
    return path


def image_loader(image, calls):
    def load():
        calls.append(1)
        return image
    return load


def test_same_image_is_encoded_once(unet_file):
    cache = SegmenterCache()
    key = ModelKey.create("unet", unet_file, None, "cpu")
    image, _ = syntheticFrame((64, 80), center=(40, 30), radii=(12, 9), seed=0)
    loads = []
    first = cache.predict(key, ("image", 0, 1), image_loader(image, loads), None)
    second = cache.predict(key, ("image", 0, 1), image_loader(image, loads), None)
    assert first.shape == (64, 80)
    assert first.dtype == bool
    assert np.array_equal(first, second)
    assert loads == [1]
    assert cache.encode_count == 1

    cache.predict(key, ("image", 1, 1), image_loader(image, loads), None)
    assert cache.encode_count == 2, "another frame must be encoded"
    cache.forget_image(("image", 1, 1))
    cache.predict(key, ("image", 1, 1), image_loader(image, loads), None)
    assert cache.encode_count == 3, "a forgotten image must be encoded again"


def test_perturber_changes_mask_and_unperturbed_matches_plain_backbone(unet_file, tmp_path):
    perturber = write_perturber(tmp_path / "p.safetensors", unet_file)
    cache = SegmenterCache()
    plain = ModelKey.create("unet", unet_file, None, "cpu")
    apple = ModelKey.create("unet", unet_file, perturber, "cpu")
    image, _ = syntheticFrame((64, 64), center=(32, 32), radii=(12, 9), seed=2)
    loads = []

    base = cache.predict(plain, "img", image_loader(image, loads), None)
    unperturbed = cache.predict(apple, "img", image_loader(image, loads), None, perturbed=False)
    perturbed = cache.predict(apple, "img", image_loader(image, loads), None, perturbed=True)
    assert np.array_equal(base, unperturbed)
    assert not np.array_equal(unperturbed, perturbed), "a perturbation this large must change the mask"
    assert len(cache) == 2
    assert cache.encode_count == 2, "each model encodes the image once; perturbed and unperturbed share it"


def test_rewritten_perturber_file_gives_new_key(unet_file, tmp_path):
    path = write_perturber(tmp_path / "p.safetensors", unet_file, seed=1)
    before = ModelKey.create("unet", unet_file, path, "cpu")
    write_perturber(path, unet_file, seed=2)
    os.utime(path, ns=(before.perturber[2] + 10**9, before.perturber[2] + 10**9))
    after = ModelKey.create("unet", unet_file, path, "cpu")
    assert before != after
    assert before.perturber_path == after.perturber_path == str(path.resolve())


def test_least_recently_used_model_is_dropped(unet_file, tmp_path):
    cache = SegmenterCache(max_models=1)
    image, _ = syntheticFrame((64, 64), center=(32, 32), radii=(12, 9), seed=2)
    plain = ModelKey.create("unet", unet_file, None, "cpu")
    apple = ModelKey.create("unet", unet_file, write_perturber(tmp_path / "p.safetensors", unet_file), "cpu")
    cache.predict(plain, "img", lambda: image, None)
    cache.predict(apple, "img", lambda: image, None)
    assert len(cache) == 1
    cache.predict(plain, "img", lambda: image, None)
    assert cache.encode_count == 3, "the dropped model was built and encoded again"


def test_mismatched_perturber_is_rejected(unet_file, tmp_path):
    torch.manual_seed(5)
    other_unet = tmp_path / "other.safetensors"
    save_unet(UNetBackbone(features=(4, 4, 8, 8, 32, 4), input_size=64).freeze(), other_unet)
    perturber = write_perturber(tmp_path / "p.safetensors", unet_file)
    key = ModelKey.create("unet", other_unet, perturber, "cpu")
    with pytest.raises(PerturberMismatchError):
        SegmenterCache().segmenter(key)


def test_failed_encode_is_not_cached(unet_file):
    cache = SegmenterCache()
    key = ModelKey.create("unet", unet_file, None, "cpu")
    with pytest.raises(ValueError):
        cache.predict(key, "img", lambda: np.zeros((32, 32), np.float32), None)  # float images are rejected
    image, _ = syntheticFrame((32, 32), center=(16, 16), radii=(6, 5), seed=0)
    assert cache.predict(key, "img", lambda: image, None).shape == (32, 32)


def test_missing_files_raise_with_their_role(tmp_path):
    with pytest.raises(FileNotFoundError, match="perturber file"):
        ModelKey.create("litemedsam", None, tmp_path / "absent.safetensors", "cpu")
    with pytest.raises(FileNotFoundError, match="backbone checkpoint"):
        ModelKey.create("sam_vit_b", tmp_path / "absent.pth", None, "cpu")
    assert ModelKey.create("litemedsam", "", ".", "cpu").perturber is None


def test_device_resolution():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("AUTO") in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") != "cuda"
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown"):
        resolve_device("tpu")
    with pytest.raises(ValueError):
        SegmenterCache(max_models=0)


def test_cpu_runs_without_autocast():
    with inference_context("cpu", mixed_precision=True):
        assert not torch.is_autocast_enabled()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_runs_under_float16_autocast():
    with inference_context("cuda", mixed_precision=True):
        assert torch.is_autocast_enabled("cuda")
        assert torch.get_autocast_dtype("cuda") == torch.float16
    with inference_context("cuda", mixed_precision=False):
        assert not torch.is_autocast_enabled("cuda")


@pytest.mark.slow
def test_litemedsam_box_on_synthetic_lesion():
    """The module's self-test case: Dice > 0.7 from a box, and a moved box costs no new encode."""
    image, truth = syntheticFrame((256, 256), center=(128, 120), radii=(50, 34), seed=1)
    rows, columns = np.nonzero(truth)
    box = (columns.min() - 8, rows.min() - 8, columns.max() + 8, rows.max() + 8)
    cache = SegmenterCache()
    key = ModelKey.create("litemedsam", None, None, "cpu")

    mask = cache.predict(key, "synthetic", lambda: image, [box])
    assert dice_score(mask, truth) > 0.7
    moved = cache.predict(key, "synthetic", lambda: image, [(box[0] + 2, box[1], box[2] + 2, box[3])])
    assert dice_score(moved, truth) > 0.7
    assert cache.encode_count == 1
