"""A TransUNet backbone that ``apple-perturb train-base --architecture transunet`` trains on a cohort.

TransUNet is from Chen et al., "TransUNet: Transformers Make Strong Encoders
for Medical Image Segmentation", arXiv:2102.04306, 2021. A CNN reduces the
image to 1/16 of its side, and a Vision Transformer runs over the feature
map's pixels as tokens. A cascaded upsampler (CUP) decodes the token grid with
the CNN's skip connections. The latent APPLE perturbs is the transformer's
output token map reshaped to a CxHxW grid, with C the token width: 256x16x16
for a 256x256 input with the defaults. The three skips reach the decoder
unperturbed.

Smaller than the published model, so that it trains from scratch on a CPU
(about 4.4 M parameters with the defaults): one ResNet basic block per CNN
stage and 4 transformer layers of width 256, all randomly initialised, with
no pretrained weights. GroupNorm is used throughout, so a model fine-tuned
on a small group (InD) does not depend on batch statistics. Preprocessing:
resize to 256x256 ignoring the aspect ratio, ImageNet mean and std. No box
prompt.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file
from torch import nn
from torchvision.models.resnet import BasicBlock

from ApplePerturbLib.backbones.base import Backbone, Encoded, file_sha256
from ApplePerturbLib.backbones.unet import IMAGENET_MEAN, IMAGENET_STD
from ApplePerturbLib.checkpoint_files import read_safetensors_metadata, write_tagged_safetensors
from ApplePerturbLib.errors import CheckpointError, InvalidInputError

TRANSUNET_FORMAT = "apple-perturb-transunet"
TRANSUNET_FORMAT_VERSION = 1

DEFAULT_NETWORK = {
    "features": [32, 64, 128, 256],
    "hidden_size": 256,
    "num_layers": 4,
    "num_heads": 8,
    "mlp_dim": 512,
    "decoder_channels": [128, 64, 32, 16],
}


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=math.gcd(8, channels), num_channels=channels)


def _conv_norm_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        _group_norm(out_channels),
        nn.ReLU(inplace=True),
    )


def _residual_stage(in_channels: int, out_channels: int) -> BasicBlock:
    """Return one ResNet basic block that halves the side and changes the channel count."""
    shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False), _group_norm(out_channels))
    return BasicBlock(in_channels, out_channels, stride=2, downsample=shortcut, norm_layer=_group_norm)


class DecoderBlock(nn.Module):
    """Upsample x2 (bilinear), concatenate the skip if any, then two 3x3 conv-norm-ReLU layers."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.convs = nn.Sequential(
            _conv_norm_relu(in_channels + skip_channels, out_channels),
            _conv_norm_relu(out_channels, out_channels),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.upsample(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class TransUNet(nn.Module):
    """The TransUNet network on Bx3xSxS inputs (S a multiple of 16); logits Bx1xSxS.

    Args:
        input_size: S, default 256; fixes the number of tokens (S/16)^2 of
            the learned position embedding.
        features: channels of the CNN at 1/2, 1/4, 1/8 and 1/16 of S,
            default (32, 64, 128, 256).
        hidden_size: token width, the latent's C, default 256.
        num_layers, num_heads, mlp_dim: transformer depth, attention heads
            and MLP width, default 4, 8, 512.
        decoder_channels: output channels of the four upsampling blocks
            (1/8, 1/4, 1/2 and 1/1 of S), default (128, 64, 32, 16).

    Example:
        >>> net = TransUNet(64, features=(8, 8, 16, 16), hidden_size=16, num_layers=1,
        ...                 num_heads=2, mlp_dim=32, decoder_channels=(16, 8, 8, 4))
        >>> net(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 1, 64, 64])
    """

    def __init__(self, input_size: int, features: Sequence[int], hidden_size: int, num_layers: int,
                 num_heads: int, mlp_dim: int, decoder_channels: Sequence[int]):
        super().__init__()
        f0, f1, f2, f3 = features
        d0, d1, d2, d3 = decoder_channels
        grid = input_size // 16
        # CNN stem: 1/2 (7x7 stride-2 root), then one residual stage per halving.
        self.root = _conv_norm_relu(3, f0, kernel_size=7, stride=2)
        self.stage1 = _residual_stage(f0, f1)
        self.stage2 = _residual_stage(f1, f2)
        self.stage3 = _residual_stage(f2, f3)
        # Transformer over the 1/16 feature map, one token per pixel (patch size 1).
        self.patch_embedding = nn.Conv2d(f3, hidden_size, kernel_size=1)
        self.position_embedding = nn.Parameter(torch.zeros(1, grid * grid, hidden_size))
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        # Pre-norm layers with GELU, as in ViT; torch's own layer avoids MONAI's einops dependency.
        layer = nn.TransformerEncoderLayer(hidden_size, num_heads, dim_feedforward=mlp_dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)
        # Cascaded upsampler with skips at 1/8, 1/4 and 1/2.
        self.conv_more = _conv_norm_relu(hidden_size, d0)
        self.up1 = DecoderBlock(d0, f2, d0)
        self.up2 = DecoderBlock(d0, f1, d1)
        self.up3 = DecoderBlock(d1, f0, d2)
        self.up4 = DecoderBlock(d2, 0, d3)
        self.head = nn.Conv2d(d3, 1, kernel_size=3, padding=1)

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return (BxDx(S/16)x(S/16) token map, skips at 1/8, 1/4 and 1/2)."""
        x0 = self.root(pixels)
        x1 = self.stage1(x0)
        x2 = self.stage2(x1)
        x3 = self.stage3(x2)

        embedded = self.patch_embedding(x3)
        batch, channels, rows, columns = embedded.shape
        tokens = embedded.flatten(2).transpose(1, 2) + self.position_embedding
        tokens = self.norm(self.transformer(tokens))
        token_map = tokens.transpose(1, 2).reshape(batch, channels, rows, columns)
        return token_map, [x2, x1, x0]

    def decode(self, token_map: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return Bx1xSxS logits from the token map and the skips of ``encode``."""
        x2, x1, x0 = skips
        x = self.conv_more(token_map)
        x = self.up1(x, x2)
        x = self.up2(x, x1)
        x = self.up3(x, x0)
        x = self.up4(x, None)
        return self.head(x)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        token_map, skips = self.encode(pixels)
        return self.decode(token_map, skips)


class TransUNetBackbone(Backbone):
    """TransUNet split after the transformer: the latent is its token map as a CxhxW grid.

    With the defaults and a 256x256 input the latent is 256x16x16.

    Args:
        input_size: side S of the square input, default 256 (a multiple of 16).
        **network: ``TransUNet`` settings; missing keys take ``DEFAULT_NETWORK``.
    """

    name = "transunet"
    stretch = True
    requires_box = False

    def __init__(self, input_size: int = 256, **network):
        super().__init__()
        unknown = sorted(set(network) - set(DEFAULT_NETWORK))
        if unknown:
            raise InvalidInputError(f"unknown TransUNet setting(s) {unknown}; valid: {sorted(DEFAULT_NETWORK)}.")
        self.network = _checked_network(int(input_size), {**DEFAULT_NETWORK, **network})
        self.input_size = self.logits_size = int(input_size)
        self.latent_shape = (self.network["hidden_size"], self.input_size // 16, self.input_size // 16)
        self.net = TransUNet(self.input_size, **self.network)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean.cpu()) / self.std.cpu()

    def encode(self, pixels: torch.Tensor) -> Encoded:
        token_map, skips = self.net.encode(pixels)
        return Encoded(latent=token_map, context=skips)

    def decode(self, latent: torch.Tensor, context: Sequence[torch.Tensor], boxes: torch.Tensor | None) -> torch.Tensor:
        return self.net.decode(latent, context)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return Bx1xSxS logits of the whole network (used to train the base model)."""
        encoded = self.encode(pixels)
        return self.decode(encoded.latent, encoded.context, None)


def _checked_network(input_size: int, network: dict) -> dict:
    """Return the settings as plain ints and lists, or raise ``InvalidInputError`` naming the bad one."""
    if input_size < 16 or input_size % 16:
        raise InvalidInputError(f"TransUNet input size {input_size} is not a positive multiple of 16, e.g. 256.")
    checked = {}
    for key in ("features", "decoder_channels"):
        values = [int(value) for value in network[key]]
        if len(values) != 4 or min(values) < 1:
            raise InvalidInputError(f"TransUNet {key} {network[key]} must be 4 positive channel counts.")
        checked[key] = values
    for key in ("hidden_size", "num_layers", "num_heads", "mlp_dim"):
        checked[key] = int(network[key])
        if checked[key] < 1:
            raise InvalidInputError(f"TransUNet {key} {network[key]} must be 1 or more.")
    if checked["hidden_size"] % checked["num_heads"]:
        raise InvalidInputError(
            f"TransUNet hidden_size {checked['hidden_size']} is not divisible by num_heads {checked['num_heads']}; "
            "choose a head count that divides it."
        )
    return checked


def save_transunet(backbone: TransUNetBackbone, path: str | Path, extra: dict | None = None) -> None:
    """Write the TransUNet's weights and settings to one safetensors file, atomically.

    The metadata carries ``architecture: "transunet"``, the input size and the
    network settings, plus ``extra`` (training settings and results).
    """
    metadata = {
        "format": TRANSUNET_FORMAT,
        "format_version": TRANSUNET_FORMAT_VERSION,
        "architecture": "transunet",
        "input_size": backbone.input_size,
        "network": backbone.network,
        **(extra or {}),
    }
    write_tagged_safetensors(path, backbone.net.state_dict(), metadata)


def load_transunet(path: str | Path) -> TransUNetBackbone:
    """Load a TransUNet written by ``save_transunet`` (no code is executed while reading); frozen."""
    path = Path(path)
    hint = "train one with 'apple-perturb train-base --architecture transunet'"
    if not path.is_file():
        raise CheckpointError(f"TransUNet file {path} not found; {hint}.")
    metadata = read_safetensors_metadata(path, expected_format=TRANSUNET_FORMAT, hint=hint)
    try:
        backbone = TransUNetBackbone(metadata["input_size"], **metadata["network"])
        backbone.net.load_state_dict(load_file(str(path)))
    except (KeyError, TypeError, InvalidInputError, RuntimeError) as error:
        raise CheckpointError(f"TransUNet file {path} has inconsistent settings or weights ({error}); {hint}.") from error
    backbone.weights_sha256 = file_sha256(path)
    backbone.training_metadata = metadata
    return backbone.freeze()
