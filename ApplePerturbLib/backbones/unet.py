"""A MONAI U-Net backbone that ``apple-perturb train-base`` trains on a cohort.

The network is MONAI's ``BasicUNet`` (Ronneberger et al., MICCAI 2015,
doi:10.1007/978-3-319-24574-4_28). Its bottleneck is the latent APPLE
perturbs; the four skip connections reach the decoder unperturbed.
Preprocessing: resize to 256x256 ignoring the aspect ratio, ImageNet mean
and std. No box prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from monai.networks.nets import BasicUNet
from safetensors.torch import load_file

from ApplePerturbLib.backbones.base import Backbone, Encoded, file_sha256
from ApplePerturbLib.errors import CheckpointError
from ApplePerturbLib.checkpoint_files import read_safetensors_metadata, write_tagged_safetensors

UNET_FORMAT = "apple-perturb-unet"
UNET_FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_FEATURES = (16, 32, 64, 128, 256, 16)


class UNetBackbone(Backbone):
    """MONAI BasicUNet split at the bottleneck.

    With the default features and a 256x256 input the latent is 256x16x16.

    Args:
        features: BasicUNet's six feature counts, default (16, 32, 64, 128, 256, 16).
        input_size: side S of the square input, default 256 (a multiple of 16).
    """

    name = "unet"
    stretch = True
    requires_box = False

    def __init__(self, features: Sequence[int] = DEFAULT_FEATURES, input_size: int = 256):
        super().__init__()
        self.features = tuple(int(f) for f in features)
        self.input_size = self.logits_size = int(input_size)
        self.latent_shape = (self.features[4], self.input_size // 16, self.input_size // 16)
        self.net = BasicUNet(spatial_dims=2, in_channels=3, out_channels=1, features=self.features)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean.cpu()) / self.std.cpu()

    def encode(self, pixels: torch.Tensor) -> Encoded:
        net = self.net
        x0 = net.conv_0(pixels)
        x1 = net.down_1(x0)
        x2 = net.down_2(x1)
        x3 = net.down_3(x2)
        x4 = net.down_4(x3)
        return Encoded(latent=x4, context=[x0, x1, x2, x3])

    def decode(self, latent: torch.Tensor, context: Sequence[torch.Tensor], boxes: torch.Tensor | None) -> torch.Tensor:
        net = self.net
        x0, x1, x2, x3 = context
        u4 = net.upcat_4(latent, x3)
        u3 = net.upcat_3(u4, x2)
        u2 = net.upcat_2(u3, x1)
        u1 = net.upcat_1(u2, x0)
        return net.final_conv(u1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return Bx1xSxS logits of the whole network (used to train the base model)."""
        encoded = self.encode(pixels)
        return self.decode(encoded.latent, encoded.context, None)


def save_unet(backbone: UNetBackbone, path: str | Path, extra: dict | None = None) -> None:
    """Write the U-Net's weights and shape to one safetensors file, atomically."""
    metadata = {
        "format": UNET_FORMAT,
        "format_version": UNET_FORMAT_VERSION,
        "features": list(backbone.features),
        "input_size": backbone.input_size,
        **(extra or {}),
    }
    write_tagged_safetensors(path, backbone.net.state_dict(), metadata)


def load_unet(path: str | Path) -> UNetBackbone:
    """Load a U-Net written by ``save_unet`` (no code is executed while reading)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"U-Net file {path} not found; train one with 'apple-perturb train-base'.")
    metadata = read_safetensors_metadata(path, expected_format=UNET_FORMAT,
                                         hint="train one with 'apple-perturb train-base'")
    backbone = UNetBackbone(metadata["features"], metadata["input_size"])
    backbone.net.load_state_dict(load_file(str(path)))
    backbone.weights_sha256 = file_sha256(path)
    backbone.training_metadata = metadata
    return backbone.freeze()
