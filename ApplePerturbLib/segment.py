"""Interactive segmentation: encode an image once, decode any number of box prompts."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ApplePerturbLib.backbones.base import Backbone, Encoded, PreparedImage, as_rgb
from ApplePerturbLib.boxes import validate_box
from ApplePerturbLib.errors import InvalidInputError
from ApplePerturbLib.perturber import Perturber


class Segmenter:
    """Box-prompted segmentation with an optional APPLE perturber.

    ``set_image`` runs the expensive encoder once. ``predict`` runs only the
    perturbation generator and the decoder, so a box that moves (a Slicer
    ROI being dragged) costs a decode, not an encode.

    Example:
        >>> segmenter = Segmenter(build_backbone("litemedsam"), load_perturber(path, backbone))
        >>> segmenter.set_image(image)                  # HxW or HxWx3 uint8
        >>> mask = segmenter.predict([(40, 30, 120, 90)])  # bool HxW
    """

    def __init__(self, backbone: Backbone, perturber: Perturber | None = None):
        self.backbone = backbone
        self.perturber = perturber
        self._prepared: PreparedImage | None = None
        self._encoded: Encoded | None = None
        self._perturbed_latent: torch.Tensor | None = None

    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> None:
        """Encode an HxW or HxWx3 uint8 image and keep its latent."""
        self._prepared = self.backbone.prepare(as_rgb(image))
        self._encoded = self.backbone.encode(self._prepared.pixels)
        self._perturbed_latent = None

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the current image."""
        if self._prepared is None:
            raise InvalidInputError("no image set: call set_image(image) before predict().")
        return self._prepared.original_size

    @torch.no_grad()
    def predict(self, boxes: Sequence[Sequence[float]] | None = None, perturbed: bool = True) -> np.ndarray:
        """Return the bool HxW mask for box prompts (x0, y0, x1, y1) in original-image pixels.

        Several boxes give the union of their masks. ``perturbed=False``, or
        no perturber, gives the unperturbed backbone's mask.
        """
        height, width = self.image_size
        box_tensor = None
        if self.backbone.requires_box:
            if not boxes:
                raise InvalidInputError(f"backbone '{self.backbone.name}' needs a box prompt: give X0 Y0 X1 Y1.")
            checked = [validate_box(box, (height, width), where=f"box {i + 1}") for i, box in enumerate(boxes)]
            box_tensor = self.backbone.boxes_to_input_frame(checked, self._prepared)
        latent = self._encoded.latent
        if perturbed and self.perturber is not None:
            if self._perturbed_latent is None:
                self._perturbed_latent = self.perturber.perturb(latent)
            latent = self._perturbed_latent
        logits = self.backbone.decode(latent, self._encoded.context, box_tensor)
        return self.backbone.logits_to_mask(logits, self._prepared)
