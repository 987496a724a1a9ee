"""Loaded segmentation models, kept between clicks so that moving a box re-runs only the decoder.

The module logic keeps one :class:`ApplePerturbLib.segment.Segmenter` per
:class:`ModelKey` (backbone, checkpoint file, perturber file, device). Each
segmenter remembers which image it has encoded, through an opaque image key
that the caller builds (volume node ID, frame index, image modification
time). ``predict`` calls ``set_image`` only when that key changes, so dragging
a box on the same frame costs one decode, not an encode. Measured on a 2-core
x86 CPU: a SAM ViT-B decode takes 0.07-0.09 s, an encode 1.2-2 s for
LiteMedSAM and 14-16 s for SAM ViT-B.

torch and the library's model code are imported on first use, never at
import time, so the Slicer module panel opens without loading torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


@dataclass
class ModelSettings:
    """The user's model choice.

    Attributes:
        backbone: library backbone name, e.g. "litemedsam".
        checkpoint: backbone weights file, or None for LiteMedSAM's built-in weights.
        perturber: APPLE perturber file, or None for the unperturbed backbone.
        device: "auto", "cuda", "mps" or "cpu".
        mixed_precision: run under float16 autocast on CUDA.
    """

    backbone: str = "litemedsam"
    checkpoint: Path | None = None
    perturber: Path | None = None
    device: str = "auto"
    mixed_precision: bool = True


@dataclass(frozen=True)
class ModelKey:
    """Identity of a loaded model: equal keys share one segmenter.

    A file is identified by its absolute path, size and modification time, so
    a perturber retrained into the same file is loaded again.

    Attributes:
        backbone: library backbone name, e.g. "litemedsam".
        checkpoint: (path, size, mtime_ns) of the backbone weights, or None.
        perturber: (path, size, mtime_ns) of the perturber, or None.
        device: resolved torch device, "cuda", "mps" or "cpu".
    """

    backbone: str
    checkpoint: tuple[str, int, int] | None
    perturber: tuple[str, int, int] | None
    device: str

    @classmethod
    def create(cls, backbone: str, checkpoint: str | Path | None, perturber: str | Path | None,
               device: str) -> "ModelKey":
        """Build a key, raising FileNotFoundError for a named file that does not exist."""
        return cls(backbone, _file_identity(checkpoint, "backbone checkpoint"),
                   _file_identity(perturber, "perturber"), device)

    @property
    def checkpoint_path(self) -> str | None:
        return self.checkpoint[0] if self.checkpoint else None

    @property
    def perturber_path(self) -> str | None:
        return self.perturber[0] if self.perturber else None


def _file_identity(path: str | Path | None, role: str) -> tuple[str, int, int] | None:
    if path is None or str(path) in ("", "."):
        return None
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{role} file {path} not found: choose an existing file or clear the field.")
    stat = path.stat()
    return (str(path), stat.st_size, stat.st_mtime_ns)


def resolve_device(choice: str = "auto") -> str:
    """Return the torch device for a user choice: "auto" picks CUDA, then MPS, else the CPU.

    Raises:
        ValueError: the choice is unknown, or names a device torch cannot use here.
    """
    import torch

    choice = choice.lower()
    if choice not in DEVICE_CHOICES:
        raise ValueError(f"device '{choice}' is unknown: choose one of {', '.join(DEVICE_CHOICES)}.")
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if choice == "auto":
        if cuda:
            return "cuda"
        if mps:
            return "mps"
        return "cpu"
    if choice == "cuda" and not cuda:
        raise ValueError(
            f"CUDA was chosen but torch {torch.__version__} sees no CUDA GPU (a CPU-only build or no "
            "NVIDIA driver): choose Automatic or CPU, or reinstall PyTorch from the PyTorch extension."
        )
    if choice == "mps" and not mps:
        raise ValueError("Apple MPS was chosen but torch reports it unavailable here: choose Automatic or CPU.")
    return choice


def describe_device(device: str) -> str:
    """Return a short human-readable name of a resolved device, e.g. "CUDA (NVIDIA H200)"."""
    import torch

    if device == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(0)})"
    if device == "mps":
        return "Apple MPS"
    return "CPU"


def inference_context(device: str, mixed_precision: bool):
    """Return the context a model call runs in: float16 autocast on CUDA when asked, else none.

    NOTE: the library's Segmenter has no precision option, so autocast is
    applied around its calls from here. Masks under float16 can differ from
    float32 masks by a few pixels along the edge.
    """
    import torch

    if device == "cuda" and mixed_precision:
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@dataclass
class _Entry:
    segmenter: object
    image_key: Hashable | None = None


class SegmenterCache:
    """Segmenters by :class:`ModelKey`, least recently used dropped beyond ``max_models``.

    Args:
        max_models: how many models stay loaded at once, default 2 (the
            current one and the previous one, so switching back is instant).
        mixed_precision: run on CUDA under float16 autocast.
    """

    def __init__(self, max_models: int = 2, mixed_precision: bool = True):
        if max_models < 1:
            raise ValueError(f"max_models is {max_models}; keep at least 1 model loaded.")
        self.max_models = max_models
        self.mixed_precision = mixed_precision
        self._entries: OrderedDict[ModelKey, _Entry] = OrderedDict()
        self.encode_count = 0  # number of set_image calls, for tests and timing logs

    def __len__(self) -> int:
        return len(self._entries)

    def segmenter(self, key: ModelKey):
        """Return the segmenter for ``key``, building the backbone and loading the perturber on first use."""
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(self._build(key))
            self._entries[key] = entry
            self._evict()
        self._entries.move_to_end(key)
        return entry.segmenter

    def predict(self, key: ModelKey, image_key: Hashable, load_image: Callable[[], np.ndarray],
                boxes: Sequence[Sequence[float]] | None, perturbed: bool = True) -> np.ndarray:
        """Return the bool HxW mask of the image named by ``image_key``.

        ``load_image`` returns the HxW or HxWx3 uint8 image. It is called, and
        the encoder run, only when ``image_key`` differs from the key of the
        image this model encoded last. ``boxes`` are (x0, y0, x1, y1) in
        pixels of that image (x = column, y = row, inclusive corners), or None
        for a backbone without prompts.
        """
        segmenter = self.segmenter(key)
        entry = self._entries[key]
        with inference_context(key.device, self.mixed_precision):
            if entry.image_key != image_key:
                entry.image_key = None  # stays unset if encoding fails
                start = time.perf_counter()
                segmenter.set_image(load_image())
                self.encode_count += 1
                entry.image_key = image_key
                logger.info("Encoded image with %s on %s in %.2f s", key.backbone, key.device,
                            time.perf_counter() - start)
            return segmenter.predict(boxes=boxes, perturbed=perturbed)

    def forget_image(self, image_key: Hashable) -> None:
        """Make every model encode ``image_key`` again on its next use (the image's voxels changed)."""
        for entry in self._entries.values():
            if entry.image_key == image_key:
                entry.image_key = None

    def clear(self) -> None:
        """Drop every loaded model and free cached GPU memory."""
        self._entries.clear()
        _release_gpu_memory()

    def _evict(self) -> None:
        dropped = False
        while len(self._entries) > self.max_models:
            key, _ = self._entries.popitem(last=False)
            logger.info("Unloaded %s model (%s)", key.backbone, key.device)
            dropped = True
        if dropped:
            _release_gpu_memory()

    @staticmethod
    def _build(key: ModelKey):
        from ApplePerturbLib.backbones import build_backbone
        from ApplePerturbLib.perturber import load_perturber
        from ApplePerturbLib.segment import Segmenter

        start = time.perf_counter()
        backbone = build_backbone(key.backbone, checkpoint=key.checkpoint_path, device=key.device)
        perturber = load_perturber(key.perturber_path, backbone) if key.perturber else None
        logger.info("Loaded %s%s on %s in %.1f s", key.backbone,
                    f" with perturber {os.path.basename(key.perturber_path)}" if perturber else "",
                    key.device, time.perf_counter() - start)
        return Segmenter(backbone, perturber)


def _release_gpu_memory() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
