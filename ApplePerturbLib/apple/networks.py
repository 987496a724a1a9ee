"""The two small networks APPLE trains: ``G_p`` and ``D_p``.

Xu et al., "Fair ultrasound diagnosis via adversarial protected attribute
aware perturbations on latent embeddings", npj Digital Medicine 8, 2025,
doi:10.1038/s41746-025-01641-y.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm rather than InstanceNorm: a tiny latent (e.g. 3x3) shrinks to
    # 1x1 after two stride-2 convolutions, where InstanceNorm fails in training.
    return nn.GroupNorm(num_groups=min(8, channels), num_channels=channels)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with normalisation and an identity shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), _norm(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1), _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UpBlock(nn.Module):
    """Upsample to an exact size, then 3x3 convolution, normalisation, ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), _norm(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class PerturbationGenerator(nn.Module):
    """``G_p``: maps a latent ``f_o`` (BxCxhxw) to a perturbation ``delta`` of the same shape.

    A 3-layer convolutional encoder (32, 64, 128 channels; the last two
    stride 2), 4 residual blocks at 128 channels, and a 3-layer decoder (64,
    32, C channels). The decoder upsamples to the sizes the encoder recorded,
    so the output has exactly the input's spatial size for any h, w (64x64
    SAM embeddings, a 16x16 U-Net bottleneck, odd sizes).

    The first and last convolutions are 3x3 (not 7x7 as in image-to-image
    generators) to keep the cost on a 256x64x64 latent small. The last layer
    starts at zero, so training begins from the unperturbed model.

    Args:
        latent_channels: C, the latent's channel count.
        num_residual_blocks: residual blocks in the middle, default 4.

    Example:
        >>> generator = PerturbationGenerator(256)
        >>> generator(torch.zeros(2, 256, 64, 64)).shape
        torch.Size([2, 256, 64, 64])
    """

    def __init__(self, latent_channels: int, num_residual_blocks: int = 4):
        super().__init__()
        self.latent_channels = latent_channels
        self.enc1 = nn.Sequential(nn.Conv2d(latent_channels, 32, 3, padding=1), _norm(32), nn.ReLU(inplace=True))
        self.enc2 = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), _norm(64), nn.ReLU(inplace=True))
        self.enc3 = nn.Sequential(nn.Conv2d(64, 128, 3, stride=2, padding=1), _norm(128), nn.ReLU(inplace=True))
        self.residual = nn.Sequential(*[ResidualBlock(128) for _ in range(num_residual_blocks)])
        self.dec1 = UpBlock(128, 64)
        self.dec2 = UpBlock(64, 32)
        self.dec3 = nn.Conv2d(32, latent_channels, 3, padding=1)
        nn.init.zeros_(self.dec3.weight)
        nn.init.zeros_(self.dec3.bias)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(latent)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)

        r = self.residual(e3)

        d1 = self.dec1(r, e2.shape[-2:])
        d2 = self.dec2(d1, e1.shape[-2:])
        return self.dec3(d2)


class AttributeDiscriminator(nn.Module):
    """``D_p``: predicts the sensitive attribute's class from a (perturbed) latent.

    Global average pooling turns the BxCxhxw latent into a C-vector first,
    because flattening a 256x64x64 map would need a 1M-input Linear layer.
    Then 3 Linear-BatchNorm blocks (C -> 256 -> 128 -> num_classes), ReLU
    between them; the output is unnormalised logits, Bxnum_classes. As any
    BatchNorm network in training mode, it needs batches of 2 or more.

    Args:
        latent_channels: C, the latent's channel count.
        num_classes: number of attribute groups, e.g. 2 for female/male.
        hidden: the two hidden widths, default (256, 128).
    """

    def __init__(self, latent_channels: int, num_classes: int, hidden: tuple[int, int] = (256, 128)):
        super().__init__()
        self.num_classes = num_classes
        self.blocks = nn.Sequential(
            nn.Linear(latent_channels, hidden[0]), nn.BatchNorm1d(hidden[0]), nn.ReLU(inplace=True),
            nn.Linear(hidden[0], hidden[1]), nn.BatchNorm1d(hidden[1]), nn.ReLU(inplace=True),
            nn.Linear(hidden[1], num_classes), nn.BatchNorm1d(num_classes),
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        pooled = latent.mean(dim=(-2, -1))
        return self.blocks(pooled)
