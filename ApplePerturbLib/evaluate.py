"""Evaluate a backbone with and without a perturber on a cohort split.

Images are streamed: one image, its latent and its two masks are held at a
time, so memory does not grow with the number of images.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ApplePerturbLib.backbones.base import Backbone, Encoded
from ApplePerturbLib.boxes import boxes_from_mask
from ApplePerturbLib.cohort import CohortRecord, group_names, group_of
from ApplePerturbLib.errors import TrainingInterrupted
from ApplePerturbLib.imageio import atomic_output, read_image, read_mask, write_mask
from ApplePerturbLib.latents import LatentCache
from ApplePerturbLib.metrics import dice_score, fairness_metrics, to_json_safe
from ApplePerturbLib.perturber import Perturber

logger = logging.getLogger(__name__)

PER_IMAGE_COLUMNS = ("image", "case_id", "group", "dice_base", "dice_apple")


@dataclass
class ImageResult:
    """Dice of one image without (base) and with (apple) the perturber."""

    image: str
    case_id: str
    group: str | None
    dice_base: float
    dice_apple: float | None


@dataclass
class SegmentedRecord:
    """Masks of one image and its channel-wise mean latents (C-vectors) before and after perturbation.

    ``perturbed_masks``, ``perturbed_pooled`` and ``perturbation_sizes`` have
    one entry per perturber, and ``decoder_masks`` one per extra decoder, in
    the order given to ``segment_record``. A perturbation size is the
    relative L2 norm ``||delta|| / ||f_o||`` over the whole latent.
    """

    truth: np.ndarray
    base: np.ndarray
    pooled_latent: np.ndarray
    perturbed_masks: list[np.ndarray]
    perturbed_pooled: list[np.ndarray]
    decoder_masks: list[np.ndarray] = field(default_factory=list)
    perturbation_sizes: list[float] = field(default_factory=list)

    @property
    def apple(self) -> np.ndarray | None:
        """The first perturber's mask, or None without a perturber."""
        return self.perturbed_masks[0] if self.perturbed_masks else None

    @property
    def pooled_perturbed(self) -> np.ndarray | None:
        """The first perturber's pooled latent, or None without a perturber."""
        return self.perturbed_pooled[0] if self.perturbed_pooled else None


@torch.no_grad()
def segment_record(backbone: Backbone, perturbers: Perturber | Sequence[Perturber] | None,
                   record: CohortRecord, decoders: Sequence[Backbone] = (),
                   cache: LatentCache | None = None) -> SegmentedRecord | None:
    """Segment one record without and with each perturber, prompted by the tight box of
    each ground-truth region; None when the ground truth is empty.

    The image is encoded once, whatever the number of perturbers. Each of
    ``decoders`` (models with the same encoder weights and preprocessing as
    ``backbone``, such as InD group models of a promptable backbone) decodes
    that same unperturbed latent. With ``cache`` the latent comes from (or
    goes to) the float16 latent cache that training uses, which skips the
    encoder at the cost of float16 rounding of the latent.
    """
    if perturbers is None:
        perturbers = []
    elif isinstance(perturbers, Perturber):
        perturbers = [perturbers]
    image = read_image(record.image)
    truth = read_mask(record.mask, expected_shape=image.shape[:2])
    boxes = boxes_from_mask(truth)
    if not boxes:
        return None
    if cache is None:
        prepared = backbone.prepare(image)
        encoded = backbone.encode(prepared.pixels)
        box_tensor = backbone.boxes_to_input_frame(boxes, prepared) if backbone.requires_box else None
    else:
        prepared = backbone.geometry(*image.shape[:2])
        sample = cache.get(record)
        device = backbone.device
        encoded = Encoded(sample.latent[None].to(device, torch.float32),
                          [c[None].to(device, torch.float32) for c in sample.context])
        box_tensor = sample.boxes.to(device) if backbone.requires_box else None
    base = backbone.logits_to_mask(backbone.decode(encoded.latent, encoded.context, box_tensor), prepared)
    masks, pooled_perturbed, sizes = [], [], []
    latent_norm = float(encoded.latent.float().norm())
    for perturber in perturbers:
        perturbed = perturber.perturb(encoded.latent)
        sizes.append(float((perturbed - encoded.latent).float().norm()) / max(latent_norm, 1e-12))
        masks.append(backbone.logits_to_mask(backbone.decode(perturbed, encoded.context, box_tensor), prepared))
        pooled_perturbed.append(perturbed.mean(dim=(-2, -1))[0].float().cpu().numpy())
    decoded = [other.logits_to_mask(other.decode(encoded.latent, encoded.context, box_tensor), prepared)
               for other in decoders]
    pooled = encoded.latent.mean(dim=(-2, -1))[0].float().cpu().numpy()
    return SegmentedRecord(truth, base, pooled, masks, pooled_perturbed, decoded, sizes)


def evaluate_records(backbone: Backbone, perturber: Perturber | None, records: Sequence[CohortRecord],
                     attribute: str, age_threshold: float, mask_folder: Path | None = None,
                     on_image: Callable[[int, int], None] | None = None,
                     should_stop: Callable[[], bool] | None = None,
                     cache: LatentCache | None = None) -> tuple[list[ImageResult], dict]:
    """Segment every record and compute per-image Dice and the fairness metrics.

    ``should_stop`` is polled before every image; True raises ``TrainingInterrupted``.
    ``cache``: see ``segment_record``.

    Returns:
        (per-image results, metrics dict {"base": ..., "apple": ... or None,
        "skipped_empty_masks": n}, pooled latents {"f_o": NxC, "f_p": NxC or None}).
        The latents are averaged over their spatial axes, which keeps what the
        latent-space analyses (t-SNE, Davies-Bouldin, silhouette) need at C
        floats per image. With ``mask_folder`` the predicted masks
        are written to ``mask_folder/base`` and ``mask_folder/apple``.
    """
    results, skipped = [], 0
    pooled, pooled_perturbed, sizes = [], [], []
    for index, record in enumerate(records, start=1):
        if should_stop is not None and should_stop():
            raise TrainingInterrupted(f"stopped while evaluating, after {index - 1} of {len(records)} images")
        output = segment_record(backbone, perturber, record, cache=cache)
        if output is None:
            skipped += 1
            continue
        truth, base, apple = output.truth, output.base, output.apple
        pooled.append(output.pooled_latent)
        if output.pooled_perturbed is not None:
            pooled_perturbed.append(output.pooled_perturbed)
            sizes.append(output.perturbation_sizes[0])
        results.append(ImageResult(
            image=record.image.name, case_id=record.case_id, group=group_of(record, attribute, age_threshold),
            dice_base=dice_score(base, truth), dice_apple=None if apple is None else dice_score(apple, truth),
        ))
        if mask_folder is not None:
            write_mask(mask_folder / "base" / f"{record.image.stem}.png", base)
            if apple is not None:
                write_mask(mask_folder / "apple" / f"{record.image.stem}.png", apple)
        if on_image is not None:
            on_image(index, len(records))
    if not results:
        raise ValueError("no image with a non-empty ground-truth mask to evaluate; check the cohort's masks.")
    names = group_names(attribute, age_threshold)
    groups = [r.group for r in results]
    metrics = {
        "base": fairness_metrics([r.dice_base for r in results], groups, names),
        "apple": None if perturber is None else fairness_metrics([r.dice_apple for r in results], groups, names),
        "skipped_empty_masks": skipped,
        "latents": "computed" if cache is None else "float16 cache",
    }
    if sizes:
        # How far G_p moves the latent: a size near 0 means APPLE cannot change the masks much.
        metrics["perturbation_size"] = {"median": float(np.median(sizes)), "max": float(np.max(sizes)),
                                        "measure": "||delta|| / ||f_o|| per image"}
    latents = {"f_o": np.stack(pooled), "f_p": np.stack(pooled_perturbed) if pooled_perturbed else None}
    return results, metrics, latents


def write_evaluation(folder: Path, results: Sequence[ImageResult], metrics: dict, latents: dict | None = None) -> None:
    """Write ``per_image.csv``, ``metrics.json`` and ``latents.npz`` into ``folder``, each atomically.

    ``latents.npz`` contains ``f_o`` (and ``f_p`` with a perturber), NxC pooled
    latents in the row order of ``per_image.csv``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PER_IMAGE_COLUMNS)
    for r in results:
        writer.writerow([r.image, r.case_id, r.group or "unknown", f"{r.dice_base:.6f}",
                         "" if r.dice_apple is None else f"{r.dice_apple:.6f}"])
    with atomic_output(folder / "per_image.csv") as temporary:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
    if latents is not None:
        arrays = {key: value for key, value in latents.items() if value is not None}
        with atomic_output(folder / "latents.npz") as temporary:
            with open(temporary, "wb") as handle:
                np.savez_compressed(handle, **arrays)
    with atomic_output(folder / "metrics.json") as temporary:
        temporary.write_text(json.dumps(to_json_safe(metrics), indent=2), encoding="utf-8")
