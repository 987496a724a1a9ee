"""The interface every segmentation backbone implements.

APPLE, evaluation, the command line and the Slicer module only talk to this
interface, so none of them special-cases a backbone. A backbone is split into
a frozen encoder ``E_s`` (image -> latent) and a frozen decoder ``D_s``
(latent + box prompts -> mask logits).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ApplePerturbLib.errors import InvalidInputError


@dataclass
class PreparedImage:
    """An image after the backbone's preprocessing.

    Attributes:
        pixels: 1x3xSxS float tensor, the encoder's input; None where only the
            geometry is needed (see ``Backbone.geometry``).
        original_size: (H, W) of the original image.
        scale: (sy, sx) factors from original pixels to the SxS input frame.
        content_size: (h, w) of the resized image inside the SxS frame; the
            rest of the frame is padding (bottom and right).
    """

    pixels: torch.Tensor | None
    original_size: tuple[int, int]
    scale: tuple[float, float]
    content_size: tuple[int, int]


@dataclass
class Encoded:
    """The frozen encoder's output for one or more images.

    Attributes:
        latent: BxCxhxw latent ``f_o``; the only part APPLE perturbs.
        context: other encoder outputs the decoder needs, never perturbed
            (the U-Net's skip connections); empty for SAM-family models.
    """

    latent: torch.Tensor
    context: list[torch.Tensor] = field(default_factory=list)


class Backbone(nn.Module):
    """A frozen segmentation model split into encoder and decoder.

    Subclasses set ``name``, ``input_size`` (S), ``logits_size`` (L, the
    decoder's output resolution), ``stretch`` (resize to SxS ignoring the
    aspect ratio instead of longest side + padding), ``requires_box`` and
    ``latent_shape`` (C, h, w), and implement ``normalize``, ``encode`` and
    ``decode``.
    """

    name: str = ""
    input_size: int = 256
    logits_size: int = 256
    stretch: bool = False
    requires_box: bool = True
    latent_shape: tuple[int, int, int] = (256, 64, 64)
    weights_sha256: str = ""

    def freeze(self) -> "Backbone":
        """Put the model in eval mode and stop gradients into its weights."""
        self.eval()
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # Preprocessing, one visible step per line.
    def prepare(self, image: np.ndarray) -> PreparedImage:
        """Turn an HxW or HxWx3 uint8 image into the encoder's 1x3xSxS input."""
        rgb = as_rgb(image)
        height, width = rgb.shape[:2]
        pixels = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        content_size, scale = self._content_size(height, width)
        pixels = F.interpolate(pixels, size=content_size, mode="bilinear", align_corners=False, antialias=True)
        pixels = self.normalize(pixels)
        pad_bottom = self.input_size - content_size[0]
        pad_right = self.input_size - content_size[1]
        pixels = F.pad(pixels, (0, pad_right, 0, pad_bottom))
        return PreparedImage(pixels.to(self.device), (height, width), scale, content_size)

    def geometry(self, height: int, width: int) -> PreparedImage:
        """Return the frames ``prepare`` would use for an HxW image, without pixels."""
        content_size, scale = self._content_size(height, width)
        return PreparedImage(None, (height, width), scale, content_size)

    def _content_size(self, height: int, width: int) -> tuple[tuple[int, int], tuple[float, float]]:
        size = self.input_size
        if self.stretch:
            return (size, size), (size / height, size / width)
        factor = size / max(height, width)
        content = (int(round(height * factor)), int(round(width * factor)))
        return content, (content[0] / height, content[1] / width)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map 1x3xhxw intensities in [0, 255] to the encoder's range."""
        raise NotImplementedError

    def encode(self, pixels: torch.Tensor) -> Encoded:
        """Run the frozen encoder on Bx3xSxS inputs."""
        raise NotImplementedError

    def decode(self, latent: torch.Tensor, context: Sequence[torch.Tensor], boxes: torch.Tensor | None) -> torch.Tensor:
        """Decode ONE image's latent (1xCxhxw) into 1x1xLxL mask logits.

        ``boxes`` is an Nx4 tensor of box prompts (x0, y0, x1, y1) in the SxS
        input frame. Several boxes give the union (pixel-wise maximum) of
        their masks. Backbones without prompts ignore it.
        """
        raise NotImplementedError

    # Coordinate transforms between the original image and the model frames.
    def boxes_to_input_frame(self, boxes: Sequence[Sequence[float]], prepared: PreparedImage) -> torch.Tensor:
        """Scale original-pixel boxes (x0, y0, x1, y1) into the SxS input frame, Nx4."""
        sy, sx = prepared.scale
        scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
        return (torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4) * scale).to(self.device)

    def target_in_logits_frame(self, mask: np.ndarray, prepared: PreparedImage) -> torch.Tensor:
        """Resample a bool HxW ground-truth mask to the decoder's 1x1xLxL frame."""
        ratio = self.logits_size / self.input_size
        content = (max(1, round(prepared.content_size[0] * ratio)), max(1, round(prepared.content_size[1] * ratio)))
        target = torch.from_numpy(mask.astype(np.float32))[None, None]
        target = F.interpolate(target, size=content, mode="bilinear", align_corners=False)
        target = F.pad(target, (0, self.logits_size - content[1], 0, self.logits_size - content[0]))
        return (target >= 0.5).float()

    def logits_to_mask(self, logits: torch.Tensor, prepared: PreparedImage) -> np.ndarray:
        """Crop the padding off 1x1xLxL logits, resize to the original size, threshold at 0."""
        ratio = self.logits_size / self.input_size
        content_h = max(1, round(prepared.content_size[0] * ratio))
        content_w = max(1, round(prepared.content_size[1] * ratio))
        logits = logits[..., :content_h, :content_w].float()
        logits = F.interpolate(logits, size=prepared.original_size, mode="bilinear", align_corners=False)
        return (logits[0, 0] > 0).cpu().numpy()


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Return an HxWx3 uint8 view of an HxW, HxWx1, HxWx3 or HxWx4 uint8 image."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InvalidInputError(
            f"image dtype {image.dtype} is not supported here; convert it to uint8 (0..255) first, "
            "e.g. with ApplePerturbLib.imageio.read_image."
        )
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]
    raise InvalidInputError(
        f"image of shape {image.shape} is not a 2D image; expected HxW or HxWx3 (one ultrasound frame)."
    )


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Return the SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_sha256(module: nn.Module) -> str:
    """Return a SHA-256 digest of a module's weights, independent of any file."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
