"""FEBS, fair error-bound scaling: a fairness-aware loss for training the base model.

Tian et al., "FairSeg: A Large-Scale Medical Image Segmentation Dataset for
Fairness Learning Using Segment Anything Model with Fair Error-Bound
Scaling", ICLR 2024, arXiv:2311.02189. The formula below follows the
authors' code: repository Harvard-Ophthalmology-AI-Lab/FairSeg, class
``febs_loss`` in ``TransUNet/utils.py`` and ``FairDiceLoss`` in
``utils.py``. NOTE: only the paper's abstract was available here ("reweight
the loss function with the upper error-bound in each identity group"), not
its method section.

Per batch, with ``L_a`` the soft Dice loss of the images of group ``a``:

    w_a = tanh((min_b L_b / L_a) ** gamma)

Direction: ``min_b L_b / L_a <= 1``, so the best-segmented group gets the
largest factor, tanh(1) = 0.762, and the worst-segmented group (largest
``L_a``) gets the SMALLEST (tanh(0.5) = 0.462 when its loss is twice the
best group's, gamma 1). The factor is not a weight on the loss: it
multiplies the group's predicted lesion probabilities inside the Dice term,
so a factor below 1 lowers the Dice the group's predictions can reach
(its error bound). With the linear soft Dice used here, a perfect
prediction scaled by ``w`` keeps a loss of ``1 - 2w / (1 + w)``.
NOTE: the smaller factor does not enlarge the worst group's gradient. On a
32x32 toy image (a one-off check, not a test) the gradient norm fell with
the factor, while the part of it raising lesion probabilities grew against
the part lowering background ones (mean gradient ratio 2.5 at w = 1, 4.0 at
w = 0.46).

Choices made here, where the authors' code differs or leaves a gap:
- only groups present in the batch take part in ``min_b``. (The authors'
  code fills a missing group's loss with 0, which makes the minimum 0, sets
  every factor to tanh(0) = 0 and divides 0 by 0 for the missing group);
- a batch with fewer than 2 groups uses factor 1 for every image, i.e. the
  plain loss;
- images of unknown group use factor 1;
- the lesion channel alone is scaled (binary sigmoid output, where the
  authors scale every softmax channel), and the Dice terms are per image,
  averaged, like ``apple.losses.segmentation_loss`` (the authors' code
  pools the pixels of the whole batch). The total is
  ``0.5 * (BCE + scaled Dice loss)``, as in their trainer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ApplePerturbLib.errors import InvalidInputError

_SMOOTH = 1e-5
# Group losses below this count as this, so a perfectly segmented group does not divide by zero.
_MIN_GROUP_LOSS = 1e-6


def group_scaling_factors(group_losses: dict[int, float], gamma: float = 1.0) -> dict[int, float]:
    """Return ``tanh((min_b L_b / L_a) ** gamma)`` for every group ``a`` in ``group_losses``.

    Only the groups given take part, so pass the groups present in the batch.
    With fewer than 2 groups every factor is 1.0 (no relative information).

    Raises:
        InvalidInputError: ``gamma`` is negative or not finite, or a loss is negative or not finite.
    """
    if not math.isfinite(gamma) or gamma < 0:
        raise InvalidInputError(f"FEBS gamma {gamma} is invalid; use a number >= 0 (default 1).")
    for group, loss in group_losses.items():
        if not math.isfinite(loss) or loss < 0:
            raise InvalidInputError(f"FEBS got Dice loss {loss} for group {group}; expected a finite number >= 0.")
    if len(group_losses) < 2:
        return {group: 1.0 for group in group_losses}
    clamped = {group: max(loss, _MIN_GROUP_LOSS) for group, loss in group_losses.items()}
    lowest = min(clamped.values())
    return {group: math.tanh((lowest / loss) ** gamma) for group, loss in clamped.items()}


def image_scaling_factors(image_dice_losses: torch.Tensor, groups: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Return each image's FEBS factor, a B-vector, from per-image Dice losses and group indices.

    Args:
        image_dice_losses: B soft Dice losses (no gradient is taken through them).
        groups: B group indices, -1 for an unknown group (factor 1).
        gamma: exponent of the loss ratio, default 1.

    A group's loss ``L_a`` is the mean Dice loss of its images in the batch.
    """
    if image_dice_losses.shape != groups.shape or image_dice_losses.dim() != 1:
        raise InvalidInputError(
            f"FEBS needs one Dice loss and one group per image; got shapes {tuple(image_dice_losses.shape)} "
            f"and {tuple(groups.shape)}."
        )
    losses = image_dice_losses.detach().float().cpu()
    labels = groups.detach().long().cpu()
    group_losses = {int(g): float(losses[labels == g].mean()) for g in labels.unique().tolist() if g >= 0}
    factors = group_scaling_factors(group_losses, gamma)
    per_image = [factors.get(int(g), 1.0) for g in labels.tolist()]
    return torch.tensor(per_image, dtype=image_dice_losses.dtype, device=image_dice_losses.device)


def soft_dice_loss(probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the per-image soft Dice loss, a B-vector, of Bx1xHxW probabilities against 0/1 targets."""
    dims = tuple(range(1, probability.dim()))
    intersection = (probability * target).sum(dims)
    total = probability.sum(dims) + target.sum(dims)
    return 1.0 - (2.0 * intersection + _SMOOTH) / (total + _SMOOTH)


def febs_segmentation_loss(logits: torch.Tensor, target: torch.Tensor, groups: torch.Tensor,
                           gamma: float = 1.0) -> torch.Tensor:
    """Return ``0.5 * (BCE + Dice loss of FEBS-scaled probabilities)`` for Bx1xHxW logits.

    Args:
        logits: Bx1xHxW lesion logits.
        target: Bx1xHxW 0/1 ground truth.
        groups: B group indices of the images, -1 where unknown.
        gamma: FEBS exponent, default 1.
    """
    probability = torch.sigmoid(logits)
    factors = image_scaling_factors(soft_dice_loss(probability, target), groups.to(logits.device), gamma)
    scaled = probability * factors.view(-1, *([1] * (logits.dim() - 1)))
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return 0.5 * (bce + soft_dice_loss(scaled, target).mean())
