"""InD for the promptable backbones (LiteMedSAM, MedSAM, SAM): one mask decoder per group.

Fine-tuning a whole SAM-family model per group is out of reach on a CPU and
would change the image encoder whose latents APPLE perturbs. Here each
group's model keeps the frozen image and prompt encoders and gets its own
copy of the mask decoder, fine-tuned on the cached latents of that group's
training images with the Dice-CE loss APPLE uses. A group file holds only
the decoder's weights and names the backbone weights it belongs to.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file

from ApplePerturbLib.apple.losses import segmentation_loss
from ApplePerturbLib.backbones.base import Backbone
from ApplePerturbLib.base_training import BaseTrainingConfig
from ApplePerturbLib.checkpoint_files import read_safetensors_metadata, write_tagged_safetensors
from ApplePerturbLib.errors import CheckpointError, TrainingInterrupted
from ApplePerturbLib.latents import LatentSample, collate_latents, hard_dice

logger = logging.getLogger(__name__)

DECODER_FORMAT = "apple-perturb-mask-decoder"
DECODER_FORMAT_VERSION = 1
PROMPTABLE_BACKBONES = ("litemedsam", "medsam", "sam_vit_b", "sam_vit_l", "sam_vit_h")


def fine_tune_mask_decoder(backbone: Backbone, samples: Sequence[LatentSample], config: BaseTrainingConfig,
                           on_epoch: Callable[[int, float, float], None] | None = None,
                           should_stop: Callable[[], bool] | None = None) -> list[dict]:
    """Fine-tune ``backbone.mask_decoder`` in place on cached latents and return one {loss, dsc} per epoch.

    The encoders stay frozen. The decoder is frozen again when this returns or raises.
    """
    if not samples:
        raise ValueError("fine_tune_mask_decoder got no samples; the group has no training image with a mask.")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    decoder = backbone.mask_decoder
    decoder.requires_grad_(True)
    decoder.train()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=config.learning_rate)
    history = []
    try:
        for epoch in range(1, config.epochs + 1):
            order = rng.permutation(len(samples))
            loss_sum, dice = 0.0, []
            for start in range(0, len(order), config.batch_size):
                if should_stop is not None and should_stop():
                    raise TrainingInterrupted(f"stopped during epoch {epoch}")
                batch = [samples[i] for i in order[start:start + config.batch_size]]
                latents, contexts, boxes, targets = collate_latents(batch, backbone.device)
                losses = []
                for index in range(len(batch)):
                    logits = backbone.decode(latents[index:index + 1], contexts[index], boxes[index])
                    losses.append(segmentation_loss(logits, targets[index:index + 1]))
                    dice.append(hard_dice(logits.detach(), targets[index:index + 1]))
                loss = torch.stack(losses).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(batch)
            history.append({"loss": loss_sum / len(samples), "dsc": float(np.mean(dice))})
            if on_epoch is not None:
                on_epoch(epoch, history[-1]["loss"], history[-1]["dsc"])
    finally:
        decoder.eval()
        decoder.requires_grad_(False)
    return history


def save_mask_decoder(path: str | Path, backbone: Backbone, metadata: dict) -> None:
    """Write the backbone's mask decoder weights, tagged with the backbone they belong to, atomically."""
    write_tagged_safetensors(path, backbone.mask_decoder.state_dict(), {
        "format": DECODER_FORMAT, "format_version": DECODER_FORMAT_VERSION,
        "backbone": backbone.name, "backbone_sha256": backbone.weights_sha256, **metadata,
    })


def load_mask_decoder(path: str | Path, backbone: Backbone) -> dict:
    """Load a decoder written by ``save_mask_decoder`` into ``backbone`` and return its metadata.

    Raises:
        CheckpointError: the file is missing, is not a decoder file, or was
            fine-tuned from other backbone weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"mask decoder file {path} not found; rerun 'apple-perturb train-ind'.")
    metadata = read_safetensors_metadata(path, expected_format=DECODER_FORMAT, hint="rerun 'apple-perturb train-ind'")
    if metadata.get("backbone") != backbone.name or metadata.get("backbone_sha256") != backbone.weights_sha256:
        raise CheckpointError(
            f"{path} was fine-tuned from {metadata.get('backbone')} weights {str(metadata.get('backbone_sha256'))[:12]}, "
            f"not from the loaded {backbone.name} weights {backbone.weights_sha256[:12]}; use the weights it was "
            "fine-tuned from, or rerun train-ind.")
    try:
        backbone.mask_decoder.load_state_dict(load_file(str(path)))
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not fit the {backbone.name} mask decoder ({error}).") from error
    return metadata
