"""Frozen-encoder latents, computed once per image and cached.

``E_s`` never changes while APPLE trains, so ``f_o = E_s(x)`` is the same
at every step. Algorithm 1 of the APPLE paper reads as if the encoder ran on
every step. Here each image is encoded once and stored as float16, in memory
and, when a cache folder is given, on disk as safetensors. Every epoch, every
beta of a sweep and every later run on the same cohort reuses it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ApplePerturbLib.backbones.base import Backbone
from ApplePerturbLib.boxes import boxes_from_mask
from ApplePerturbLib.cohort import CohortRecord
from ApplePerturbLib.imageio import atomic_output, read_image, read_mask

logger = logging.getLogger(__name__)

# Bump when preprocessing or the cached content changes, so old cache files are not reused.
CACHE_VERSION = "1"


@dataclass
class LatentSample:
    """One image's cached encoder output and training targets.

    Attributes:
        latent: CxhxW float16 latent ``f_o``.
        context: unperturbed decoder inputs (U-Net skips), float16, each without batch axis.
        boxes: Nx4 float32 box prompts from the ground truth, in the encoder's SxS input frame.
        target: 1xLxL float16 ground truth in the decoder's logits frame.
        record: the cohort row the sample came from.
    """

    latent: torch.Tensor
    context: list[torch.Tensor]
    boxes: torch.Tensor
    target: torch.Tensor
    record: CohortRecord


def cache_key(backbone: Backbone, record: CohortRecord) -> str:
    """Return a key that changes when the weights, the image, the mask or the preprocessing change."""
    digest = hashlib.sha256()
    digest.update(f"{CACHE_VERSION}|{backbone.name}|{backbone.weights_sha256}".encode())
    for path in (record.image, record.mask):
        stat = Path(path).stat()
        digest.update(f"|{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


@torch.no_grad()
def encode_record(backbone: Backbone, record: CohortRecord) -> LatentSample | None:
    """Read, preprocess and encode one cohort image; None when its mask is empty."""
    image = read_image(record.image)
    mask = read_mask(record.mask, expected_shape=image.shape[:2])
    boxes = boxes_from_mask(mask)
    if not boxes:
        return None
    prepared = backbone.prepare(image)
    encoded = backbone.encode(prepared.pixels)
    return LatentSample(
        latent=encoded.latent[0].to("cpu", torch.float16),
        context=[c[0].to("cpu", torch.float16) for c in encoded.context],
        boxes=backbone.boxes_to_input_frame(boxes, prepared).cpu(),
        target=backbone.target_in_logits_frame(mask, prepared)[0].to(torch.float16),
        record=record,
    )


class LatentCache:
    """Encodes cohort images once and keeps the result on disk (optional).

    Args:
        backbone: the frozen backbone.
        folder: cache folder, or None to keep nothing on disk.
    """

    def __init__(self, backbone: Backbone, folder: str | Path | None = None):
        self.backbone = backbone
        self.folder = Path(folder) if folder else None
        self.hits = 0
        self.misses = 0

    def get(self, record: CohortRecord) -> LatentSample | None:
        """Return the record's sample from disk, or encode it (and store it)."""
        path = self.folder / f"{cache_key(self.backbone, record)}.safetensors" if self.folder else None
        if path is not None and path.is_file():
            sample = self._read(path, record)
            if sample is not None:
                self.hits += 1
                return sample
        self.misses += 1
        sample = encode_record(self.backbone, record)
        if sample is not None and path is not None:
            self._write(path, sample)
        return sample

    def iterate(self, records: Iterable[CohortRecord], should_stop: Callable[[], bool] | None = None) -> Iterator[tuple[CohortRecord, LatentSample | None]]:
        """Yield (record, sample) one image at a time; only one image is held in memory."""
        for record in records:
            if should_stop is not None and should_stop():
                from ApplePerturbLib.errors import TrainingInterrupted

                raise TrainingInterrupted("stopped while encoding images")
            yield record, self.get(record)

    def _write(self, path: Path, sample: LatentSample) -> None:
        tensors = {"latent": sample.latent, "boxes": sample.boxes, "target": sample.target}
        tensors.update({f"context_{i}": c for i, c in enumerate(sample.context)})
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_output(path) as temporary:
                save_file({k: v.contiguous() for k, v in tensors.items()}, str(temporary))
        except OSError as error:
            # A full disk only costs speed here: the sample is still used from memory.
            logger.warning("Could not write latent cache file %s (%s); continuing without it.", path, error)

    @staticmethod
    def _read(path: Path, record: CohortRecord) -> LatentSample | None:
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as error:
            logger.warning("Ignoring unreadable latent cache file %s (%s).", path, error)
            return None
        context_keys = sorted((k for k in tensors if k.startswith("context_")), key=lambda k: int(k.split("_")[1]))
        return LatentSample(tensors["latent"], [tensors[k] for k in context_keys], tensors["boxes"], tensors["target"], record)


def encode_cohort(backbone: Backbone, records: list[CohortRecord], cache_folder: Path | None, reporter,
                  should_stop: Callable[[], bool] | None = None) -> list[LatentSample]:
    """Return the samples of every record with a non-empty mask, reporting progress per image.

    ``cache_folder`` is the cache root; latents go to its ``latents`` subfolder.
    """
    from ApplePerturbLib.errors import InvalidInputError

    cache = LatentCache(backbone, cache_folder / "latents" if cache_folder else None)
    samples = []
    for index, (_, sample) in enumerate(cache.iterate(records, should_stop), start=1):
        if sample is not None:
            samples.append(sample)
        reporter.steps("encoding images", index, len(records))
    if not samples:
        raise InvalidInputError("no training image of the cohort has a non-empty mask; check its mask files.")
    logger.info("Latents: %d from cache, %d computed", cache.hits, cache.misses)
    return samples


def collate_latents(samples: list[LatentSample], device: torch.device | str) -> tuple[torch.Tensor, list[list[torch.Tensor]], list[torch.Tensor], torch.Tensor]:
    """Stack samples into float32 tensors on ``device``: (BxCxhxw latents, contexts, boxes, Bx1xLxL targets)."""
    latents = torch.stack([s.latent for s in samples]).to(device, torch.float32)
    contexts = [[c[None].to(device, torch.float32) for c in s.context] for s in samples]
    boxes = [s.boxes.to(device) for s in samples]
    targets = torch.stack([s.target for s in samples]).to(device, torch.float32)
    return latents, contexts, boxes, targets


def hard_dice(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Dice of the thresholded 1x1xLxL logits against a 0/1 target (both empty -> 1.0)."""
    predicted = logits > 0
    truth = target > 0.5
    total = int(predicted.sum() + truth.sum())
    return 1.0 if total == 0 else 2.0 * int((predicted & truth).sum()) / total


def group_indices(records: Iterable[CohortRecord], attribute: str, age_threshold: float) -> np.ndarray:
    """Return each record's group index in ``group_names`` order, -1 where unknown."""
    from ApplePerturbLib.cohort import group_names, group_of

    names = group_names(attribute, age_threshold)
    return np.array([names.index(g) if (g := group_of(r, attribute, age_threshold)) is not None else -1 for r in records])
