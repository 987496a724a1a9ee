"""Train a from-scratch U-Net on a cohort (``apple-perturb train-base``).

The trained network is the frozen backbone APPLE later perturbs. Images are
preprocessed once and kept as uint8 in memory; each step flips a random half
of the batch horizontally.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ApplePerturbLib.apple.losses import segmentation_loss
from ApplePerturbLib.backbones.unet import UNetBackbone
from ApplePerturbLib.cohort import CohortRecord
from ApplePerturbLib.errors import InvalidInputError, TrainingInterrupted
from ApplePerturbLib.imageio import read_image, read_mask

logger = logging.getLogger(__name__)


@dataclass
class BaseTrainingConfig:
    """U-Net training settings: epochs (default 30), batch size 8, Adam lr 1e-3, seed 0."""

    epochs: int = 30
    batch_size: int = 8
    learning_rate: float = 1e-3
    seed: int = 0


def load_training_arrays(backbone: UNetBackbone, records: Sequence[CohortRecord]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (Nx3xSxS uint8 images after resizing, Nx1xSxS uint8 masks) for the cohort."""
    images, masks = [], []
    for record in records:
        image = read_image(record.image)
        mask = read_mask(record.mask, expected_shape=image.shape[:2])
        prepared = backbone.prepare(image)
        # Undo the normalisation to store uint8: 4x less memory than float32.
        pixels = prepared.pixels.cpu() * backbone.std.cpu() + backbone.mean.cpu()
        images.append(pixels.round().clamp(0, 255).to(torch.uint8)[0])
        masks.append(backbone.target_in_logits_frame(mask, prepared)[0].to(torch.uint8))
    if not images:
        raise InvalidInputError("the training split is empty: the cohort has no images to train the U-Net on.")
    return torch.stack(images), torch.stack(masks)


def train_unet(backbone: UNetBackbone, images: torch.Tensor, masks: torch.Tensor, config: BaseTrainingConfig,
               on_epoch: Callable[[int, float, float], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> list[dict]:
    """Train all U-Net weights with ``0.5 * (BCE + Dice)``; returns per-epoch loss and Dice."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    for parameter in backbone.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(backbone.net.parameters(), lr=config.learning_rate)
    history = []
    backbone.train()
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        losses, dice = [], []
        order = rng.permutation(len(images))
        for start in range(0, len(images), config.batch_size):
            if should_stop is not None and should_stop():
                raise TrainingInterrupted(f"stopped during epoch {epoch}")
            batch = order[start:start + config.batch_size]
            x, y = _augment(images[batch], masks[batch], rng)
            logits = backbone(backbone.normalize(x.float()).to(backbone.device))
            loss = segmentation_loss(logits, y.float().to(backbone.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            dice.append(_batch_dice(logits.detach(), y.to(backbone.device)))
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "dsc": float(np.mean(dice)),
                  "seconds": time.perf_counter() - started}
        history.append(record)
        logger.info("U-Net epoch %d/%d loss %.4f dice %.4f", epoch, config.epochs, record["loss"], record["dsc"])
        if on_epoch is not None:
            on_epoch(epoch, record["loss"], record["dsc"])
    backbone.freeze()
    return history


def _augment(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    flip = torch.from_numpy(rng.random(len(images)) < 0.5)
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    masks = torch.where(flip[:, None, None, None], masks.flip(-1), masks)
    return images, masks


def _batch_dice(logits: torch.Tensor, target: torch.Tensor) -> float:
    predicted = logits > 0
    truth = target > 0
    dims = (1, 2, 3)
    total = predicted.sum(dims) + truth.sum(dims)
    dice = torch.where(total > 0, 2 * (predicted & truth).sum(dims) / total.clamp(min=1), torch.ones_like(total, dtype=torch.float))
    return float(dice.float().mean())
