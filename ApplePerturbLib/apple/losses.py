"""APPLE's losses (Xu et al., npj Digital Medicine 2025, Algorithm 1).

- ``L_D = CE(D_p(f_p), a)`` trains the discriminator;
- ``L_G = beta * L_seg + L_fair`` trains the generator, with
  ``L_seg = 0.5 * (CE + Dice)`` against the ground truth and
  ``L_fair = -CE(D_p(f_p), a) - alpha * H(D_p(f_p))``.
The masks are binary, so the CE term of ``L_seg`` is binary cross-entropy on
one logit channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Return ``0.5 * (BCE + soft Dice loss)`` for Bx1xHxW logits and 0/1 targets.

    The Dice term is computed per image and averaged over the batch.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probability = torch.sigmoid(logits)
    dims = tuple(range(1, logits.dim()))
    intersection = (probability * target).sum(dims)
    total = probability.sum(dims) + target.sum(dims)
    dice_loss = 1.0 - (2.0 * intersection + smooth) / (total + smooth)
    return 0.5 * (bce + dice_loss.mean())


def prediction_entropy(attribute_logits: torch.Tensor) -> torch.Tensor:
    """Return the mean Shannon entropy (nats) of the softmax over Bxnum_classes logits."""
    log_probability = F.log_softmax(attribute_logits, dim=1)
    return -(log_probability.exp() * log_probability).sum(dim=1).mean()


def discriminator_loss(attribute_logits: torch.Tensor, attribute: torch.Tensor) -> torch.Tensor:
    """``L_D``: cross-entropy of the discriminator's prediction against the true group index."""
    return F.cross_entropy(attribute_logits, attribute)


def fairness_loss(attribute_logits: torch.Tensor, attribute: torch.Tensor, alpha: float) -> torch.Tensor:
    """``L_fair = -CE - alpha * H``: lowest when the discriminator is wrong and uncertain."""
    return -F.cross_entropy(attribute_logits, attribute) - alpha * prediction_entropy(attribute_logits)


def generator_loss(seg_loss: torch.Tensor, fair_loss: torch.Tensor | None, beta: float) -> torch.Tensor:
    """``L_G = beta * L_seg + L_fair``; ``fair_loss`` is None when a batch has no labelled pair."""
    loss = beta * seg_loss
    return loss if fair_loss is None else loss + fair_loss
