"""Adversarial training of ``G_p`` and ``D_p`` on cached latents (APPLE, Algorithm 1).

Per batch: the discriminator takes one step on ``L_D`` with the perturbed
latents detached from the generator, then the generator takes one step on
``L_G = beta * L_seg + L_fair``. The backbone is frozen throughout: only
``G_p`` and ``D_p`` have optimisers. Images with an unknown attribute take
part in ``L_seg`` only.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from ApplePerturbLib.apple.losses import discriminator_loss, fairness_loss, generator_loss, segmentation_loss
from ApplePerturbLib.apple.networks import AttributeDiscriminator, PerturbationGenerator
from ApplePerturbLib.backbones.base import Backbone
from ApplePerturbLib.errors import InvalidInputError, TrainingInterrupted
from ApplePerturbLib.latents import LatentSample, collate_latents, hard_dice

logger = logging.getLogger(__name__)


@dataclass
class TrainingConfig:
    """APPLE hyperparameters.

    Attributes:
        epochs: passes over the training images, default 10.
        alpha: weight of the discriminator's entropy in ``L_fair``, default 1.0.
        beta: weight of ``L_seg`` in ``L_G``, default 1.0 (larger keeps more
            utility; the APPLE paper sweeps 0.01 to 10).
        batch_size: images per step, default 8 (the discriminator's
            BatchNorm needs 2 or more labelled images in a batch).
        lr_generator, lr_discriminator: Adam learning rates, default 1e-4.
        grad_clip: maximum gradient norm of ``G_p``, default 1.0; ``-CE`` in
            ``L_fair`` is unbounded below, so clipping keeps early steps stable.
        seed: seeds the weights and the batch order.
    """

    epochs: int = 10
    alpha: float = 1.0
    beta: float = 1.0
    batch_size: int = 8
    lr_generator: float = 1e-4
    lr_discriminator: float = 1e-4
    grad_clip: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        """Raise ``InvalidInputError`` naming the command-line option of an out-of-range value."""
        checks = [
            (self.epochs >= 1, f"--epochs {self.epochs} must be 1 or more"),
            (self.alpha >= 0, f"--alpha {self.alpha} must be 0 or more"),
            (self.beta > 0, f"--beta {self.beta} must be above 0 (it weights the segmentation loss)"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size} must be 1 or more"),
            (self.lr_generator > 0 and self.lr_discriminator > 0,
             f"--lr {self.lr_generator} must be above 0"),
        ]
        for valid, message in checks:
            if not valid:
                raise InvalidInputError(message + ".")


@dataclass
class EpochStats:
    """Mean losses and training Dice of one epoch (perturbed latents)."""

    epoch: int
    loss_g: float
    loss_d: float
    loss_seg: float
    loss_fair: float
    discriminator_accuracy: float
    dsc: float
    seconds: float


@dataclass
class TrainingResult:
    generator: PerturbationGenerator
    discriminator: AttributeDiscriminator
    history: list[EpochStats] = field(default_factory=list)


def train_perturber(backbone: Backbone, samples: list[LatentSample], groups: np.ndarray, num_classes: int,
                    config: TrainingConfig, on_epoch: Callable[[EpochStats], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> TrainingResult:
    """Train a perturber against a frozen backbone.

    Args:
        backbone: frozen backbone, whose decoder turns perturbed latents into masks.
        samples: cached latents of the training images (see ``LatentCache``).
        groups: per-sample group index (0..num_classes-1), -1 when unknown.
        num_classes: number of attribute groups.
        config: hyperparameters.
        on_epoch: called after every epoch with its statistics.
        should_stop: polled before every batch; True raises ``TrainingInterrupted``.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = backbone.device
    channels = samples[0].latent.shape[0]
    generator = PerturbationGenerator(channels).to(device)
    discriminator = AttributeDiscriminator(channels, num_classes).to(device)
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=config.lr_generator)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr_discriminator)
    result = TrainingResult(generator, discriminator)

    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        order = rng.permutation(len(samples))
        totals = _EpochTotals()
        generator.train()
        discriminator.train()
        for start in range(0, len(order), config.batch_size):
            if should_stop is not None and should_stop():
                raise TrainingInterrupted(f"stopped during epoch {epoch}")
            batch = order[start:start + config.batch_size]
            _train_step(backbone, generator, discriminator, optimizer_g, optimizer_d,
                        [samples[i] for i in batch], torch.as_tensor(groups[batch], device=device), config, totals)
        stats = totals.summary(epoch, time.perf_counter() - started)
        result.history.append(stats)
        logger.info("epoch %d/%d %s", epoch, config.epochs, asdict(stats))
        if on_epoch is not None:
            on_epoch(stats)
    generator.eval()
    discriminator.eval()
    return result


def _train_step(backbone, generator, discriminator, optimizer_g, optimizer_d, batch, groups, config, totals) -> None:
    latents, contexts, boxes, targets = collate_latents(batch, backbone.device)
    labelled = groups >= 0
    # BatchNorm in training mode needs two or more samples.
    adversarial = int(labelled.sum()) >= 2

    perturbed = latents + generator(latents)

    loss_d = None
    if adversarial:
        discriminator.requires_grad_(True)
        logits_d = discriminator(perturbed.detach()[labelled])
        loss_d = discriminator_loss(logits_d, groups[labelled])
        optimizer_d.zero_grad(set_to_none=True)
        loss_d.backward()
        optimizer_d.step()
        totals.add_accuracy(logits_d.argmax(dim=1) == groups[labelled])

    seg_losses, dice = [], []
    for index in range(len(batch)):
        logits = backbone.decode(perturbed[index:index + 1], contexts[index], boxes[index])
        seg_losses.append(segmentation_loss(logits, targets[index:index + 1]))
        dice.append(hard_dice(logits.detach(), targets[index:index + 1]))
    loss_seg = torch.stack(seg_losses).mean()

    loss_fair = None
    if adversarial:
        discriminator.requires_grad_(False)
        loss_fair = fairness_loss(discriminator(perturbed[labelled]), groups[labelled], config.alpha)
    loss_g = generator_loss(loss_seg, loss_fair, config.beta)
    optimizer_g.zero_grad(set_to_none=True)
    loss_g.backward()
    torch.nn.utils.clip_grad_norm_(generator.parameters(), config.grad_clip)
    optimizer_g.step()
    discriminator.requires_grad_(True)

    totals.add(len(batch), loss_g, loss_d, loss_seg, loss_fair, dice)


class _EpochTotals:
    def __init__(self):
        self.count = 0
        self.sums = {"loss_g": 0.0, "loss_seg": 0.0}
        self.adversarial = {"loss_d": [0.0, 0], "loss_fair": [0.0, 0]}
        self.dice: list[float] = []
        self.correct = 0
        self.labelled = 0

    def add(self, n, loss_g, loss_d, loss_seg, loss_fair, dice):
        self.count += n
        self.sums["loss_g"] += loss_g.item() * n
        self.sums["loss_seg"] += loss_seg.item() * n
        for key, value in (("loss_d", loss_d), ("loss_fair", loss_fair)):
            if value is not None:
                self.adversarial[key][0] += value.item() * n
                self.adversarial[key][1] += n
        self.dice.extend(dice)

    def add_accuracy(self, hits: torch.Tensor):
        self.correct += int(hits.sum())
        self.labelled += int(hits.numel())

    def summary(self, epoch: int, seconds: float) -> EpochStats:
        def mean(pair):
            return pair[0] / pair[1] if pair[1] else math.nan

        return EpochStats(
            epoch=epoch,
            loss_g=self.sums["loss_g"] / self.count,
            loss_d=mean(self.adversarial["loss_d"]),
            loss_seg=self.sums["loss_seg"] / self.count,
            loss_fair=mean(self.adversarial["loss_fair"]),
            discriminator_accuracy=self.correct / self.labelled if self.labelled else math.nan,
            dsc=float(np.mean(self.dice)),
            seconds=seconds,
        )
