"""Train a from-scratch base model (U-Net or TransUNet) on a cohort (``apple-perturb train-base``).

The trained network is the frozen backbone APPLE later perturbs. Images are
preprocessed once and kept as uint8 in memory; each step flips a random half
of the batch horizontally. Any backbone with ``forward`` (Bx3xSxS -> Bx1xSxS
logits), ``normalize``, ``mean``, ``std`` and ``target_in_logits_frame``
can be trained here, with the plain loss or with FEBS (``baselines.febs``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ApplePerturbLib.apple.losses import segmentation_loss
from ApplePerturbLib.backbones.base import Backbone
from ApplePerturbLib.baselines.febs import febs_segmentation_loss
from ApplePerturbLib.cohort import CohortRecord
from ApplePerturbLib.errors import InvalidInputError, TrainingInterrupted
from ApplePerturbLib.imageio import read_image, read_mask

logger = logging.getLogger(__name__)


BASE_LOSSES = ("dice_ce", "febs")


MIN_INPUT_SIZE, MAX_INPUT_SIZE = 32, 1024


@dataclass
class BaseTrainingConfig:
    """Base-model training settings.

    Attributes:
        epochs, batch_size, learning_rate, seed: default 30, 8, Adam 1e-3, 0.
        loss: "dice_ce" (``0.5 * (BCE + Dice)``, default) or "febs" (fair
            error-bound scaling, needs per-image groups).
        febs_attribute: attribute whose groups FEBS scales ("sex" or "age"); None without FEBS.
        febs_gamma: FEBS exponent, default 1.
        input_size: side of the square network input, default 256 (a multiple of 16).
    """

    epochs: int = 30
    batch_size: int = 8
    learning_rate: float = 1e-3
    seed: int = 0
    loss: str = "dice_ce"
    febs_attribute: str | None = None
    febs_gamma: float = 1.0
    input_size: int = 256

    def validate(self) -> None:
        """Raise ``InvalidInputError`` naming the first setting out of range."""
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise InvalidInputError(f"--epochs {self.epochs} and --batch-size {self.batch_size} must be 1 or more "
                                    f"and --lr {self.learning_rate} above 0.")
        if not MIN_INPUT_SIZE <= self.input_size <= MAX_INPUT_SIZE or self.input_size % 16:
            raise InvalidInputError(f"--input-size {self.input_size} is not a multiple of 16 from {MIN_INPUT_SIZE} "
                                    f"to {MAX_INPUT_SIZE}; use e.g. 128 (fast) or 256 (default).")


def load_training_arrays(backbone: Backbone, records: Sequence[CohortRecord]) -> tuple[torch.Tensor, torch.Tensor]:
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
        raise InvalidInputError("the training split is empty: the cohort has no images to train the base model on.")
    return torch.stack(images), torch.stack(masks)


def train_base_model(backbone: Backbone, images: torch.Tensor, masks: torch.Tensor, config: BaseTrainingConfig,
                     on_epoch: Callable[[int, float, float], None] | None = None,
                     should_stop: Callable[[], bool] | None = None,
                     groups: np.ndarray | None = None) -> list[dict]:
    """Train all weights of ``backbone``; returns per-epoch loss and Dice. The model is frozen afterwards.

    Args:
        backbone: a U-Net or TransUNet backbone (anything with ``forward`` and ``normalize``).
        images, masks: arrays from ``load_training_arrays``.
        config: settings; ``config.loss`` picks the plain loss or FEBS.
        on_epoch: called with (epoch, mean loss, mean training Dice) after every epoch.
        should_stop: polled before every batch; True raises ``TrainingInterrupted``.
        groups: N group indices (-1 where unknown), required by FEBS.
    """
    if config.loss not in BASE_LOSSES:
        raise InvalidInputError(f"unknown base-model loss '{config.loss}'; choose one of {', '.join(BASE_LOSSES)}.")
    if config.loss == "febs" and (groups is None or len(groups) != len(images)):
        raise InvalidInputError("the FEBS loss needs one group index per training image (-1 where unknown).")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    for parameter in backbone.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(backbone.parameters(), lr=config.learning_rate)
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
            if config.loss == "febs":
                loss = febs_segmentation_loss(logits, y.float().to(backbone.device),
                                              torch.as_tensor(groups[batch]), config.febs_gamma)
            else:
                loss = segmentation_loss(logits, y.float().to(backbone.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            dice.append(_batch_dice(logits.detach(), y.to(backbone.device)))
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "dsc": float(np.mean(dice)),
                  "seconds": time.perf_counter() - started}
        history.append(record)
        logger.info("%s epoch %d/%d loss %.4f dice %.4f", backbone.name, epoch, config.epochs, record["loss"], record["dsc"])
        if on_epoch is not None:
            on_epoch(epoch, record["loss"], record["dsc"])
    backbone.freeze()
    return history


# The name before TransUNet and FEBS were added; kept for existing callers.
train_unet = train_base_model


def make_base_model(architecture: str, input_size: int = 256) -> Backbone:
    """Return a randomly initialised "unet" or "transunet" backbone (seed torch first for reproducibility)."""
    from ApplePerturbLib.backbones import TRAINABLE_ARCHITECTURES
    from ApplePerturbLib.backbones.transunet import TransUNetBackbone
    from ApplePerturbLib.backbones.unet import UNetBackbone

    if architecture == "unet":
        return UNetBackbone(input_size=input_size)
    if architecture == "transunet":
        return TransUNetBackbone(input_size=input_size)
    raise InvalidInputError(
        f"unknown base-model architecture '{architecture}'; choose one of {', '.join(TRAINABLE_ARCHITECTURES)}."
    )


def save_base_model(backbone: Backbone, path, extra: dict | None = None) -> None:
    """Write a trained U-Net or TransUNet with ``save_unet`` or ``save_transunet``, atomically."""
    from ApplePerturbLib.backbones.transunet import save_transunet
    from ApplePerturbLib.backbones.unet import save_unet

    savers = {"unet": save_unet, "transunet": save_transunet}
    if backbone.name not in savers:
        raise InvalidInputError(f"backbone '{backbone.name}' cannot be saved as a base model; use a U-Net or TransUNet.")
    savers[backbone.name](backbone, path, {"architecture": backbone.name, **(extra or {})})


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
