"""The library's main jobs as plain functions: train a perturber, evaluate, train a U-Net.

The command line and the demo call these; so can a notebook or Slicer's
Python console. Each takes a ``Reporter`` for progress and a ``should_stop``
callback polled between images and batches.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ApplePerturbLib.apple.trainer import TrainingConfig, train_perturber
from ApplePerturbLib.backbones import build_backbone
from ApplePerturbLib.cohort import CohortRecord, group_counts, group_names, read_manifest, require_groups, split_by_case
from ApplePerturbLib.errors import InvalidInputError
from ApplePerturbLib.evaluate import evaluate_records, write_evaluation
from ApplePerturbLib.latents import LatentCache, encode_cohort, group_indices
from ApplePerturbLib.perturber import load_perturber, read_perturber_metadata, save_perturber
from ApplePerturbLib.progress import Reporter

logger = logging.getLogger(__name__)


@dataclass
class CohortSplit:
    """Settings of the case-level train/test split, stored in every checkpoint."""

    split_by: str = "sex"
    test_fraction: float = 0.3
    split_seed: int = 0
    age_threshold: float = 50.0

    def select(self, records: list[CohortRecord], split: str) -> list[CohortRecord]:
        """Return the "train", "test" or "all" records."""
        if split == "all":
            return records
        train, test = split_by_case(records, self.split_by, self.test_fraction, self.split_seed, self.age_threshold)
        if split not in ("train", "test"):
            raise InvalidInputError(f"split '{split}' is not one of train, test, all.")
        selected = train if split == "train" else test
        if not selected:
            cases = len({record.case_id for record in records})
            raise InvalidInputError(
                f"the {split} split is empty ({cases} cases, test fraction {self.test_fraction}); "
                "add cases, change --test-fraction, or use --split all.")
        return selected


def default_cache_folder() -> Path:
    """Return $APPLE_PERTURB_CACHE, else $XDG_CACHE_HOME/apple-perturb, else ~/.cache/apple-perturb."""
    if os.environ.get("APPLE_PERTURB_CACHE"):
        return Path(os.environ["APPLE_PERTURB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "apple-perturb"


def select_device(name: str = "auto") -> torch.device:
    """Return the torch device for "auto" (CUDA, then Apple MPS, else CPU) or an explicit name.

    Raises:
        InvalidInputError: the name is not a torch device, or names a CUDA or
            MPS device this machine does not have.
    """
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError as error:
            raise InvalidInputError(f"device '{name}' is not one of auto, cpu, cuda, cuda:N, mps.") from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidInputError(f"device '{name}' requested but no CUDA GPU is visible; use --device cpu or auto.")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InvalidInputError(f"device '{name}' requested but Apple MPS is not available; use --device cpu or auto.")
        if device.type not in ("cpu", "cuda", "mps"):
            raise InvalidInputError(f"device '{name}' is not supported; use auto, cpu, cuda, cuda:N or mps.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def latent_cache(backbone, cache_folder: Path | None) -> LatentCache | None:
    """Return the latent cache under ``cache_folder``/latents, or None without a folder."""
    return None if cache_folder is None else LatentCache(backbone, Path(cache_folder) / "latents")


def limit_images(records: list[CohortRecord], max_images: int | None, seed: int) -> list[CohortRecord]:
    """Keep a seeded random subset of at most ``max_images`` records (all when None)."""
    if max_images is None or max_images >= len(records):
        return records
    if max_images < 1:
        raise InvalidInputError(f"--max-images {max_images} must be 1 or more.")
    keep = np.sort(np.random.default_rng(seed).permutation(len(records))[:max_images])
    return [records[i] for i in keep]


def train_perturber_on_cohort(manifest: Path, backbone_name: str, checkpoint: Path | None, attribute: str,
                              out: Path, config: TrainingConfig, split: CohortSplit, reporter: Reporter,
                              max_images: int | None = None, cache_folder: Path | None = None,
                              device: str = "auto", should_stop: Callable[[], bool] | None = None) -> dict:
    """Train a perturber on the cohort's train split and write it to ``out``; returns its metadata."""
    started = time.perf_counter()
    config.validate()
    records = limit_images(split.select(read_manifest(manifest), "train"), max_images, config.seed)
    where = "training split" if max_images is None else f"training split after --max-images {max_images}"
    require_groups(records, attribute, split.age_threshold, where=where)
    backbone = build_backbone(backbone_name, checkpoint, select_device(device))
    names = group_names(attribute, split.age_threshold)
    reporter.event("start", command="train", backbone=backbone.name, attribute=attribute, groups=names,
                   images=len(records), epochs=config.epochs)

    samples = encode_cohort(backbone, records, cache_folder, reporter, should_stop)
    groups = group_indices([s.record for s in samples], attribute, split.age_threshold)

    def report_epoch(stats):
        reporter.event("epoch", epochs=config.epochs, **asdict(stats))

    result = train_perturber(backbone, samples, groups, len(names), config, report_epoch, should_stop)
    final = asdict(result.history[-1])
    metadata = {
        "attribute": attribute, "groups": names, "age_threshold": split.age_threshold,
        "alpha": config.alpha, "beta": config.beta, "epochs": config.epochs, "seed": config.seed,
        "training": asdict(config), "split": asdict(split), "cohort_manifest": Path(manifest).name,
        "train_group_counts": group_counts([s.record for s in samples], attribute, split.age_threshold),
        "train_images": len(samples), "final_losses": final,
        "training_seconds": round(time.perf_counter() - started, 1),
    }
    save_perturber(out, result.generator, result.discriminator, backbone, metadata)
    reporter.event("done", checkpoint=str(out), seconds=metadata["training_seconds"], dsc=final["dsc"])
    return metadata


def evaluate_on_cohort(manifest: Path, backbone_name: str, checkpoint: Path | None, perturber_path: Path | None,
                       split_name: str, out: Path, reporter: Reporter, attribute: str | None = None,
                       split: CohortSplit | None = None, device: str = "auto", save_masks: bool = False,
                       should_stop: Callable[[], bool] | None = None, cache_folder: Path | None = None) -> dict:
    """Evaluate base and APPLE masks on a split; writes per_image.csv and metrics.json to ``out``.

    With ``cache_folder`` the latents come from the latent cache (see ``segment_record``).

    Without explicit ``attribute``/``split`` the perturber's own training
    settings are used, so its test split is exactly the cases it never saw.
    """
    perturber_metadata = read_perturber_metadata(perturber_path) if perturber_path else None
    if split is None:
        split = CohortSplit(**perturber_metadata["split"]) if perturber_metadata else CohortSplit()
    attribute = attribute or (perturber_metadata["attribute"] if perturber_metadata else "sex")
    backbone = build_backbone(backbone_name, checkpoint, select_device(device))
    perturber = load_perturber(perturber_path, backbone) if perturber_path else None
    records = split.select(read_manifest(manifest), split_name)
    reporter.event("start", command="evaluate", backbone=backbone.name, attribute=attribute,
                   split=split_name, images=len(records))

    def on_image(done, total):
        reporter.steps("segmenting images", done, total)

    started = time.perf_counter()
    results, metrics, latents = evaluate_records(backbone, perturber, records, attribute, split.age_threshold,
                                        out / "masks" if save_masks else None, on_image, should_stop,
                                        latent_cache(backbone, cache_folder))
    metrics.update({
        "attribute": attribute, "split": split_name, "split_settings": asdict(split), "backbone": backbone.name,
        "perturber": str(perturber_path) if perturber_path else None,
        "perturber_metadata": perturber_metadata, "cohort_manifest": Path(manifest).name,
        "cohort_manifest_path": str(Path(manifest).resolve()),
        "seconds": round(time.perf_counter() - started, 1),
    })
    write_evaluation(out, results, metrics, latents)
    reporter.event("done", metrics=str(out / "metrics.json"))
    return metrics


def train_base_on_cohort(manifest: Path, out: Path, config, split: CohortSplit, reporter: Reporter,
                         max_images: int | None = None, device: str = "auto",
                         should_stop: Callable[[], bool] | None = None, architecture: str = "unet") -> dict:
    """Train a U-Net or TransUNet backbone on the cohort's train split and write it to ``out``.

    With ``config.loss == "febs"`` the groups of ``config.febs_attribute``
    scale the loss (see ``baselines.febs``); the training split must then
    have images of 2 or more groups.
    """
    from ApplePerturbLib.base_training import load_training_arrays, make_base_model, save_base_model, train_base_model

    started = time.perf_counter()
    config.validate()
    records = limit_images(split.select(read_manifest(manifest), "train"), max_images, config.seed)
    groups = None
    if config.loss == "febs":
        if config.febs_attribute is None:
            raise InvalidInputError("the FEBS loss needs an attribute (--attribute sex or age).")
        require_groups(records, config.febs_attribute, split.age_threshold, where="training split", method="FEBS")
        groups = group_indices(records, config.febs_attribute, split.age_threshold)
    torch.manual_seed(config.seed)
    backbone = make_base_model(architecture, config.input_size).to(select_device(device))
    reporter.event("start", command="train-base", backbone=architecture, loss=config.loss, images=len(records),
                   epochs=config.epochs)
    images, masks = load_training_arrays(backbone, records)

    def on_epoch(epoch, loss, dsc):
        reporter.event("epoch", epoch=epoch, epochs=config.epochs, loss=loss, dsc=dsc)

    history = train_base_model(backbone, images, masks, config, on_epoch, should_stop, groups)
    metadata = {"training": asdict(config), "split": asdict(split), "train_images": len(records),
                "final_loss": history[-1]["loss"], "final_dsc": history[-1]["dsc"],
                "training_seconds": round(time.perf_counter() - started, 1)}
    if groups is not None:
        metadata["train_group_counts"] = group_counts(records, config.febs_attribute, split.age_threshold)
    save_base_model(backbone, out, metadata)
    reporter.event("done", checkpoint=str(out), seconds=metadata["training_seconds"])
    return metadata


def resolve_cohort(path: Path, cache_folder: Path | None = None) -> Path:
    """Return the manifest for ``path``: a manifest CSV, a folder holding manifest.csv, or a DDTI folder.

    A DDTI folder (N.xml + N_k.jpg) is imported once into
    ``<cache>/cohorts/ddti-<key>``. The key changes when any case file or
    image in the folder changes, so ``train`` and ``evaluate`` on the same
    folder share one import and hence one train/test split.
    """
    import hashlib

    from ApplePerturbLib.ddti import import_ddti

    path = Path(path)
    if not path.is_dir():
        return path
    if (path / "manifest.csv").is_file():
        return path / "manifest.csv"
    digest = hashlib.sha256(str(path.resolve()).encode())
    for entry in sorted(path.iterdir()):
        if entry.suffix.lower() in (".xml", ".jpg"):
            stat = entry.stat()
            digest.update(f"|{entry.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    target = (cache_folder or default_cache_folder()) / "cohorts" / f"ddti-{digest.hexdigest()[:16]}"
    if not (target / "manifest.csv").is_file():
        logger.info("Importing DDTI folder %s into %s", path, target)
        import_ddti(path, target)
    return target / "manifest.csv"
