"""InD: one segmentation model per attribute group (``apple-perturb train-ind`` / ``evaluate-ind``).

The name and idea come from the "independent" strategies of Wang et al.,
"Towards Fairness in Visual Recognition: Effective Strategies for Bias
Mitigation", CVPR 2020, doi:10.1109/CVPR42600.2020.00894. Here each group's
model is a copy of a trained base model (U-Net or TransUNet from
``train-base``) fine-tuned on that group's training images alone. For the
promptable backbones (LiteMedSAM, MedSAM, SAM) only the mask decoder is
fine-tuned, on cached latents (see ``decoder_ind``). At inference an image
is segmented by its own group's model, so InD needs the sensitive attribute
of every test image. An image of unknown attribute is segmented by the base
model.

Output folder of ``train-ind``:
    base.safetensors        copy of the base model (U-Net and TransUNet only;
                            for the promptable backbones ind.json names the
                            weights file and its SHA-256 instead)
    <group>.safetensors     one fine-tuned model per group (loadable with
                            ``--backbone unet|transunet --checkpoint``), or
                            one fine-tuned mask decoder
    ind.json                index: attribute, groups -> files and SHA-256,
                            split settings, training settings and counts

``evaluate-ind`` writes the layout of ``evaluate``: per_image.csv with the
InD Dice in the ``dice_apple`` column, metrics.json with the InD metrics
under "apple", next to ``"method": "ind"`` and ``"method_name": "InD"``, and
with ``--save-masks`` the InD masks under ``masks/apple``, so report code
treats InD as the compared method.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from ApplePerturbLib.backbones import build_backbone, load_trained_backbone
from ApplePerturbLib.backbones.base import Backbone, file_sha256
from ApplePerturbLib.base_training import BaseTrainingConfig, load_training_arrays, save_base_model, train_base_model
from ApplePerturbLib.baselines.decoder_ind import (PROMPTABLE_BACKBONES, fine_tune_mask_decoder, load_mask_decoder,
                                                   save_mask_decoder)
from ApplePerturbLib.cohort import group_names, group_of, read_manifest, require_groups
from ApplePerturbLib.errors import CheckpointError, InvalidInputError, TrainingInterrupted
from ApplePerturbLib.imageio import atomic_output, write_mask
from ApplePerturbLib.metrics import dice_score, fairness_metrics
from ApplePerturbLib.progress import Reporter

# The command line imports this module to build its parser, so modules that
# import MONAI (several seconds) are imported inside the functions that use them.
if TYPE_CHECKING:
    from ApplePerturbLib.workflows import CohortSplit

logger = logging.getLogger(__name__)

IND_FORMAT = "apple-perturb-ind"
IND_FORMAT_VERSION = 1
INDEX_NAME = "ind.json"
BASE_FILE = "base.safetensors"
IND_NOTE = ("InD segments each image with the model of its attribute group, so it needs every image's "
            "attribute at inference; images of unknown attribute were segmented by the base model.")


def group_file_name(group: str) -> str:
    """Return a file name for a group's model: "female" -> "female.safetensors", "<50" -> "lt50.safetensors"."""
    slug = group.replace(">=", "ge").replace("<", "lt").replace(".", "p")
    return f"{slug}.safetensors"


def base_model_split(backbone: Backbone) -> CohortSplit:
    """Return the train/test split the base model was trained with (defaults when its file has none)."""
    from ApplePerturbLib.workflows import CohortSplit

    stored = getattr(backbone, "training_metadata", {}).get("split")
    if stored is None:
        logger.warning("The base model's file records no train/test split; using the default split settings.")
        return CohortSplit()
    try:
        return CohortSplit(**stored)
    except TypeError as error:
        raise CheckpointError(f"the base model's split settings {stored} are invalid ({error}).") from error


@contextmanager
def _staged_folder(out_dir: Path, should_stop: Callable[[], bool] | None) -> Iterator[Path]:
    """Yield an empty sibling folder to write into, which replaces ``out_dir`` only when the block succeeds.

    An interrupted or failed run leaves ``out_dir`` as it was, so a finished
    InD folder is never half overwritten.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"--out {out_dir} is a file; give a folder for the InD models.")
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        if should_stop is not None and should_stop():
            raise TrainingInterrupted("stopped before saving")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = out_dir.with_name(f".{out_dir.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(previous)
    staging.rename(out_dir)
    shutil.rmtree(previous, ignore_errors=True)


def _training_records(manifest: Path, backbone_name: str, attribute: str, split: CohortSplit,
                      config: BaseTrainingConfig, max_images: int | None,
                      reporter: Reporter) -> tuple[list, dict[str, int], list[str]]:
    """Return the train split's records, its group counts and the group names, and report the start.

    Raises:
        InvalidInputError: the training split has images of fewer than 2 groups.
    """
    from ApplePerturbLib.workflows import limit_images

    records = limit_images(split.select(read_manifest(manifest), "train"), max_images, config.seed)
    counts = require_groups(records, attribute, split.age_threshold, where="training split", method="InD")
    names = group_names(attribute, split.age_threshold)
    reporter.event("start", command="train-ind", backbone=backbone_name, attribute=attribute, groups=names,
                   images=len(records), epochs=config.epochs)
    return records, counts, names


def train_ind(manifest: Path, base_path: Path, attribute: str, out_dir: Path, config: BaseTrainingConfig,
              reporter: Reporter, device: str = "auto", max_images: int | None = None,
              should_stop: Callable[[], bool] | None = None) -> dict:
    """Fine-tune a copy of the base model on each group's training images; returns the index written.

    The train split is the base model's own, so no group model is trained on a test case.
    The folder is written beside ``out_dir`` and replaces it at the end, so
    an interrupted run leaves an earlier ``out_dir`` untouched.

    Raises:
        InvalidInputError: the training split has images of fewer than 2 groups.
        CheckpointError: ``base_path`` is not a U-Net or TransUNet file.
    """
    from ApplePerturbLib.workflows import select_device

    started = time.perf_counter()
    torch_device = select_device(device)
    base = load_trained_backbone(base_path, torch_device)
    split = base_model_split(base)
    config = replace(config, input_size=base.input_size)
    records, counts, names = _training_records(manifest, base.name, attribute, split, config, max_images, reporter)

    with _staged_folder(out_dir, should_stop) as folder:
        shutil.copyfile(base_path, folder / BASE_FILE)
        groups = {}
        for name in names:
            group_records = [r for r in records if group_of(r, attribute, split.age_threshold) == name]
            if not group_records:
                logger.warning("No training image of group %s; its images will use the base model.", name)
                continue
            groups[name] = _fine_tune_group(base_path, name, group_records, folder, config, split, reporter,
                                            torch_device, should_stop)

        index = {
            "format": IND_FORMAT, "format_version": IND_FORMAT_VERSION, "architecture": base.name,
            "attribute": attribute, "group_names": names, "groups": groups,
            "base": {"file": BASE_FILE, "sha256": file_sha256(folder / BASE_FILE), "source": Path(base_path).name},
            "split": asdict(split), "training": asdict(config), "cohort_manifest": Path(manifest).name,
            "train_group_counts": counts, "training_seconds": round(time.perf_counter() - started, 1),
            "note": IND_NOTE,
        }
        _write_index(folder, index)
    reporter.event("done", checkpoint=str(out_dir / INDEX_NAME), seconds=index["training_seconds"])
    return index


def train_ind_decoders(manifest: Path, backbone_name: str, checkpoint: Path | None, attribute: str, out_dir: Path,
                       config: BaseTrainingConfig, split: CohortSplit, reporter: Reporter, device: str = "auto",
                       max_images: int | None = None, cache_folder: Path | None = None,
                       should_stop: Callable[[], bool] | None = None) -> dict:
    """Fine-tune one copy of a promptable backbone's mask decoder per group (InD) and return the index written.

    Latents come from (and go to) the latent cache, so the image encoder
    runs once per image across ``train``, ``sweep-beta`` and this command.
    """
    from ApplePerturbLib.latents import encode_cohort
    from ApplePerturbLib.workflows import select_device

    started = time.perf_counter()
    backbone = build_backbone(backbone_name, checkpoint, select_device(device))
    config = replace(config, input_size=backbone.input_size)
    records, counts, names = _training_records(manifest, backbone.name, attribute, split, config, max_images,
                                               reporter)
    samples = encode_cohort(backbone, records, cache_folder, reporter, should_stop)
    original = copy.deepcopy(backbone.mask_decoder.state_dict())
    with _staged_folder(out_dir, should_stop) as folder:
        groups = {}
        for name in names:
            group_samples = [s for s in samples if group_of(s.record, attribute, split.age_threshold) == name]
            if not group_samples:
                logger.warning("No training image of group %s; its images will use the base model.", name)
                continue
            backbone.mask_decoder.load_state_dict(original)

            def on_epoch(epoch, loss, dsc, name=name):
                reporter.event("epoch", group=name, epoch=epoch, epochs=config.epochs, loss=loss, dsc=dsc)

            history = fine_tune_mask_decoder(backbone, group_samples, config, on_epoch, should_stop)
            path = folder / group_file_name(name)
            save_mask_decoder(path, backbone, {"training": asdict(config), "split": asdict(split),
                                               "ind_group": name, "train_images": len(group_samples),
                                               "final_loss": history[-1]["loss"], "final_dsc": history[-1]["dsc"]})
            groups[name] = {"file": path.name, "sha256": file_sha256(path), "train_images": len(group_samples),
                            "final_dsc": history[-1]["dsc"]}

        index = {
            "format": IND_FORMAT, "format_version": IND_FORMAT_VERSION, "architecture": backbone.name,
            "attribute": attribute, "group_names": names, "groups": groups,
            "base": {"file": None, "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
                     "sha256": backbone.weights_sha256, "source": "shipped weights" if checkpoint is None
                     else Path(checkpoint).name},
            "fine_tuned": "mask decoder", "split": asdict(split), "training": asdict(config),
            "cohort_manifest": Path(manifest).name, "train_group_counts": counts,
            "training_seconds": round(time.perf_counter() - started, 1), "note": IND_NOTE,
        }
        _write_index(folder, index)
    reporter.event("done", checkpoint=str(out_dir / INDEX_NAME), seconds=index["training_seconds"])
    return index


def _write_index(folder: Path, index: dict) -> None:
    """Write ind.json last and atomically: a folder without it is an unfinished run."""
    with atomic_output(folder / INDEX_NAME) as temporary:
        temporary.write_text(json.dumps(index, indent=2), encoding="utf-8")


def _fine_tune_group(base_path, name, records, out_dir, config, split, reporter, device, should_stop) -> dict:
    """Fine-tune a fresh copy of the base model on one group's images and save it; returns its index entry."""
    model = load_trained_backbone(base_path, device)
    images, masks = load_training_arrays(model, records)

    def on_epoch(epoch, loss, dsc):
        reporter.event("epoch", group=name, epoch=epoch, epochs=config.epochs, loss=loss, dsc=dsc)

    history = train_base_model(model, images, masks, config, on_epoch, should_stop)
    path = out_dir / group_file_name(name)
    save_base_model(model, path, {
        "training": asdict(config), "split": asdict(split), "ind_group": name, "train_images": len(records),
        "fine_tuned_from_sha256": file_sha256(base_path), "final_loss": history[-1]["loss"],
        "final_dsc": history[-1]["dsc"],
    })
    return {"file": path.name, "sha256": file_sha256(path), "train_images": len(records),
            "final_dsc": history[-1]["dsc"]}


def read_ind_index(ind_dir: Path) -> dict:
    """Read and check ``ind_dir/ind.json``."""
    path = Path(ind_dir) / INDEX_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found; give the folder written by 'apple-perturb train-ind'.")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not readable JSON ({error}); rerun 'apple-perturb train-ind'.") from error
    if not isinstance(index, dict) or index.get("format") != IND_FORMAT:
        raise CheckpointError(f"{path} is not an InD index (format '{IND_FORMAT}'); rerun 'apple-perturb train-ind'.")
    if index.get("format_version") != IND_FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {index.get('format_version')}, this version reads "
                              f"{IND_FORMAT_VERSION}; rerun 'apple-perturb train-ind'.")
    return index


def _check_group_metadata(path: Path, metadata: dict, name: str, index: dict) -> None:
    """Reject a group model whose own metadata disagrees with its ``ind.json`` entry."""
    if metadata.get("ind_group") != name:
        raise CheckpointError(f"{path} was fine-tuned for group {metadata.get('ind_group')!r}, but {INDEX_NAME} "
                              f"lists it for group {name!r}; rerun 'apple-perturb train-ind'.")
    if metadata.get("split") != index.get("split"):
        raise CheckpointError(f"{path} was fine-tuned on the split {metadata.get('split')}, but {INDEX_NAME} gives "
                              f"{index.get('split')}; rerun 'apple-perturb train-ind'.")


def _load_checked(ind_dir: Path, entry: dict, device) -> Backbone:
    """Load one model of the InD folder, rejecting a file whose SHA-256 differs from the index."""
    if not entry.get("file"):
        raise CheckpointError(f"{Path(ind_dir) / INDEX_NAME} has an entry without a model file ({entry}); "
                              "rerun 'apple-perturb train-ind'.")
    path = Path(ind_dir) / entry["file"]
    model = load_trained_backbone(path, device)
    if model.weights_sha256 != entry["sha256"]:
        raise _changed_file_error(path)
    return model


def _changed_file_error(path: Path) -> CheckpointError:
    return CheckpointError(f"{path} changed since 'apple-perturb train-ind' wrote it (SHA-256 differs from "
                           f"{INDEX_NAME}); rerun train-ind.")


def _load_models(ind_dir: Path, index: dict, device) -> tuple[Backbone, dict[str, Backbone]]:
    """Return the base model and one model per group, each checked against the SHA-256 in the index."""
    split = index.get("split") or {}
    expected = group_names(index.get("attribute", ""), split.get("age_threshold", 50.0))
    unknown = sorted(set(index.get("groups", {})) - set(expected))
    if unknown or not index.get("groups"):
        raise CheckpointError(f"{ind_dir / INDEX_NAME} lists groups {sorted(index.get('groups', {}))} for attribute "
                              f"{index.get('attribute')!r} (expected some of {expected}); rerun 'apple-perturb train-ind'.")

    if index.get("architecture") not in PROMPTABLE_BACKBONES:
        base = _load_checked(ind_dir, index["base"], device)
        models = {}
        for name, entry in index["groups"].items():
            models[name] = _load_checked(ind_dir, entry, device)
            _check_group_metadata(ind_dir / entry["file"], models[name].training_metadata, name, index)
        return base, models

    entry = index["base"]
    if entry.get("checkpoint") is None and index["architecture"] != "litemedsam":
        raise CheckpointError(f"{ind_dir / INDEX_NAME} names no weights file for {index['architecture']} (only "
                              "LiteMedSAM has shipped weights); rerun 'apple-perturb train-ind'.")
    base = build_backbone(index["architecture"], entry.get("checkpoint"), device)
    if base.weights_sha256 != entry["sha256"]:
        raise CheckpointError(f"the {index['architecture']} weights ({entry.get('checkpoint') or 'shipped weights'}) "
                              f"changed since 'apple-perturb train-ind' wrote {ind_dir / INDEX_NAME}; rerun train-ind.")

    models = {}
    for name, group_entry in index["groups"].items():
        path = ind_dir / group_entry["file"]
        if path.is_file() and file_sha256(path) != group_entry["sha256"]:
            raise _changed_file_error(path)
        models[name] = copy.deepcopy(base)
        _check_group_metadata(path, load_mask_decoder(path, models[name]), name, index)
    return base, models


def evaluate_ind(manifest: Path, ind_dir: Path, split_name: str, out: Path, reporter: Reporter,
                 device: str = "auto", save_masks: bool = False,
                 should_stop: Callable[[], bool] | None = None, cache_folder: Path | None = None) -> dict:
    """Segment a split with the base model and with each image's group model, in the ``evaluate`` layout.

    With ``cache_folder`` the base model's latents come from the latent cache (see ``segment_record``).
    """
    from ApplePerturbLib.evaluate import ImageResult, segment_record, write_evaluation
    from ApplePerturbLib.workflows import CohortSplit, latent_cache, select_device

    started = time.perf_counter()
    index = read_ind_index(ind_dir)
    torch_device = select_device(device)
    base, models = _load_models(Path(ind_dir), index, torch_device)
    shares_encoder = index["architecture"] in PROMPTABLE_BACKBONES
    cache = latent_cache(base, cache_folder)
    split = CohortSplit(**index["split"])
    attribute = index["attribute"]
    records = split.select(read_manifest(manifest), split_name)
    reporter.event("start", command="evaluate-ind", backbone=base.name, attribute=attribute, split=split_name,
                   images=len(records))

    results, pooled, skipped = [], [], 0
    for number, record in enumerate(records, start=1):
        if should_stop is not None and should_stop():
            raise TrainingInterrupted("stopped while evaluating InD")
        group = group_of(record, attribute, split.age_threshold)
        group_model = models.get(group)
        # A promptable backbone's group models differ only in the mask decoder, so the image is encoded once.
        shared = [group_model] if group_model is not None and shares_encoder else []
        base_output = segment_record(base, None, record, decoders=shared, cache=cache)
        if base_output is None:
            skipped += 1
            continue
        if group_model is None:
            ind_mask = base_output.base
        elif shared:
            ind_mask = base_output.decoder_masks[0]
        else:
            ind_mask = segment_record(group_model, None, record).base
        results.append(ImageResult(
            image=record.image.name, case_id=record.case_id, group=group,
            dice_base=dice_score(base_output.base, base_output.truth), dice_apple=dice_score(ind_mask, base_output.truth),
        ))
        pooled.append(base_output.pooled_latent)
        if save_masks:
            write_mask(out / "masks" / "base" / f"{record.image.stem}.png", base_output.base)
            write_mask(out / "masks" / "apple" / f"{record.image.stem}.png", ind_mask)
        reporter.steps("segmenting images", number, len(records))
    if not results:
        raise ValueError("no image with a non-empty ground-truth mask to evaluate; check the cohort's masks.")

    metrics = _ind_metrics(results, index, split, split_name, skipped, models)
    metrics.update({"backbone": base.name, "ind": str(ind_dir), "cohort_manifest": Path(manifest).name,
                    "latents": "computed" if cache is None else "float16 cache",
                    "seconds": round(time.perf_counter() - started, 1)})
    write_evaluation(out, results, metrics, {"f_o": np.stack(pooled)})
    reporter.event("done", metrics=str(out / "metrics.json"))
    return metrics


def _ind_metrics(results, index, split, split_name, skipped, models) -> dict:
    names = group_names(index["attribute"], split.age_threshold)
    groups = [r.group for r in results]
    by_model = {name: sum(1 for g in groups if g == name) for name in models}
    # Images of unknown group, or of a group without a model, fall back to the base model.
    by_model["base"] = len(groups) - sum(by_model.values())
    return {
        "base": fairness_metrics([r.dice_base for r in results], groups, names),
        "apple": fairness_metrics([r.dice_apple for r in results], groups, names),
        "method": "ind", "method_name": "InD", "requires_attribute_at_inference": True, "method_note": IND_NOTE,
        "per_image_columns": {"dice_base": "base model", "dice_apple": "InD (the image's group model)"},
        "images_by_model": by_model, "skipped_empty_masks": skipped, "attribute": index["attribute"],
        "split": split_name, "split_settings": asdict(split),
    }


# Command line -----------------------------------------------------------------------------------

def add_parser(subparsers) -> None:
    """Add ``train-ind`` and ``evaluate-ind`` to the ``apple-perturb`` subcommands."""
    from ApplePerturbLib.cli import _add_split_options
    from ApplePerturbLib.commands import add_cached_latent_options

    train = subparsers.add_parser("train-ind", help="InD baseline: fine-tune one copy of a base model per group")
    train.add_argument("--cohort", type=Path, required=True, help="cohort manifest CSV, or a DDTI folder (N.xml + N_k.jpg) to import first")
    model = train.add_mutually_exclusive_group(required=True)
    model.add_argument("--base", type=Path, help="U-Net or TransUNet file written by train-base (its own "
                                                 "train/test split is used; the split options apply to --backbone)")
    model.add_argument("--backbone", choices=PROMPTABLE_BACKBONES,
                       help="promptable backbone whose mask decoder is fine-tuned per group (encoders frozen)")
    train.add_argument("--checkpoint", type=Path,
                       help="weights of --backbone (.pth); default for litemedsam: the shipped weights")
    train.add_argument("--cache", type=Path, help="latent cache folder for --backbone (default $APPLE_PERTURB_CACHE "
                                                  "or ~/.cache/apple-perturb)")
    train.add_argument("--attribute", choices=("sex", "age"), required=True, help="attribute whose groups get a model each")
    train.add_argument("--out", type=Path, required=True, help="folder for the group models and ind.json")
    train.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs per group (default 10)")
    train.add_argument("--batch-size", type=int, default=8, help="images per step (default 8)")
    train.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    train.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    train.add_argument("--max-images", type=int, help="fine-tune on a seeded random subset of this many images")
    _add_split_options(train)
    _add_common(train)
    train.set_defaults(handler=run_train_ind)

    evaluate = subparsers.add_parser("evaluate-ind", help="InD baseline: Dice and fairness metrics, base vs group models")
    evaluate.add_argument("--cohort", type=Path, required=True, help="cohort manifest CSV, or a DDTI folder (N.xml + N_k.jpg) to import first")
    evaluate.add_argument("--ind", type=Path, required=True, help="folder written by train-ind")
    evaluate.add_argument("--split", choices=("test", "train", "all"), default="test", help="which cases (default test)")
    evaluate.add_argument("--out", type=Path, required=True, help="folder for per_image.csv and metrics.json")
    evaluate.add_argument("--save-masks", action="store_true", help="also write every predicted mask under OUT/masks")
    add_cached_latent_options(evaluate)
    _add_common(evaluate)
    evaluate.set_defaults(handler=run_evaluate_ind)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="torch device (default auto: CUDA, then MPS, else CPU)")
    parser.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default="auto",
                        help="progress display: a bar on a terminal (auto), JSON lines on stdout (jsonl), or none")


def run_train_ind(args, reporter, should_stop) -> None:
    from ApplePerturbLib.workflows import CohortSplit, default_cache_folder

    config = BaseTrainingConfig(args.epochs, args.batch_size, args.lr, args.seed)
    config.validate()
    if args.out.exists() and not args.out.is_dir():
        raise InvalidInputError(f"--out {args.out} is a file; give a folder for the InD models.")
    if args.base is not None:
        if args.checkpoint is not None:
            raise InvalidInputError("--checkpoint goes with --backbone; with --base the base model file is the model.")
        index = train_ind(args.cohort, args.base, args.attribute, args.out, config, reporter, args.device,
                          args.max_images, should_stop)
    else:
        split = CohortSplit(args.split_by, args.test_fraction, args.split_seed, args.age_threshold)
        index = train_ind_decoders(args.cohort, args.backbone, args.checkpoint, args.attribute, args.out, config,
                                   split, reporter, args.device, args.max_images,
                                   args.cache or default_cache_folder(), should_stop)
    if args.progress != "jsonl":
        trained = ", ".join(f"{name} ({entry['train_images']} images)" for name, entry in index["groups"].items())
        print(f"wrote InD models to {args.out}: {trained}; {index['training_seconds']:.0f} s")
        print(f"NOTE: {IND_NOTE}")


def run_evaluate_ind(args, reporter, should_stop) -> None:
    from ApplePerturbLib.commands import cached_latent_folder
    from ApplePerturbLib.metrics import format_comparison_table

    if args.out.exists() and not args.out.is_dir():
        raise InvalidInputError(f"--out {args.out} is a file; give a folder for the evaluation results.")
    metrics = evaluate_ind(args.cohort, args.ind, args.split, args.out, reporter, args.device, args.save_masks,
                           should_stop, cached_latent_folder(args))
    if args.progress != "jsonl":
        where = "all images" if args.split == "all" else f"the {args.split} split"
        print(f"InD vs base ({metrics['backbone']}) on {where}, groups by {metrics['attribute']}:")
        print(format_comparison_table(metrics["base"], metrics["apple"], labels=("base", "InD")))
        print(f"NOTE: {IND_NOTE} ({metrics['images_by_model']['base']} such images here)")
        print(f"wrote {args.out / 'per_image.csv'}, {args.out / 'metrics.json'} and {args.out / 'latents.npz'}")
