"""Sweep APPLE's ``beta`` (``apple-perturb sweep-beta``): one perturber per beta and seed, one cohort.

``beta`` weighs the segmentation loss against the fairness loss in
``L_G = beta * L_seg + L_fair``. The default betas are 0.01, 0.1, 1 and 10.
The backbone is built once and every image is encoded once in total:

1. the train split is encoded through the ``LatentCache`` (from disk when
   cached), and every (beta, seed) perturber trains from those samples held
   in memory;
2. the test split is streamed once: each image is encoded and decoded
   without perturbation once, then decoded once per perturber.

Output: ``OUT/beta_<b>/seed_<s>/`` contains ``perturber.safetensors`` and the
``evaluate`` layout (per_image.csv, metrics.json, latents.npz);
``OUT/sweep.csv`` has one row per (beta, seed); ``OUT/sweep.png`` plots
mean Dice and DSC_delta against beta (needs matplotlib). A run whose
metrics.json exists is skipped, and a run whose perturber exists is
evaluated without retraining, so an interrupted sweep resumes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from ApplePerturbLib.apple.trainer import TrainingConfig, train_perturber
from ApplePerturbLib.backbones import build_backbone
from ApplePerturbLib.backbones.base import Backbone
from ApplePerturbLib.cohort import CohortRecord, group_counts, group_names, group_of, read_manifest, require_groups
from ApplePerturbLib.errors import InvalidInputError, TrainingInterrupted
from ApplePerturbLib.imageio import atomic_output
from ApplePerturbLib.latents import LatentCache, encode_cohort, group_indices
from ApplePerturbLib.metrics import dice_score, fairness_metrics
from ApplePerturbLib.progress import Reporter

# The command line imports this module to build its parser, so modules that
# import MONAI (several seconds) are imported inside the functions that use them.
if TYPE_CHECKING:
    from ApplePerturbLib.perturber import Perturber
    from ApplePerturbLib.workflows import CohortSplit

logger = logging.getLogger(__name__)

DEFAULT_BETAS = (0.01, 0.1, 1.0, 10.0)
METRIC_KEYS = ("dsc_overall", "dsc_delta", "dsc_std", "dsc_skew", "es_dice")
CSV_COLUMNS = ("beta", "seed", *(f"{side}_{key}" for key in METRIC_KEYS for side in ("base", "apple")), "folder")
# Settings an existing run must share with the current sweep to be reused.
_REUSE_KEYS = ("backbone", "backbone_sha256", "attribute", "alpha", "epochs", "split")


def run_folder(out: Path, beta: float, seed: int) -> Path:
    """Return ``out/beta_<beta>/seed_<seed>``, beta written with ``%g`` (0.01, 0.1, 1, 10)."""
    return Path(out) / f"beta_{beta:g}" / f"seed_{seed}"


def sweep_beta(manifest: Path, backbone_name: str, checkpoint: Path | None, attribute: str, out: Path,
               betas: Sequence[float], seeds: Sequence[int], config: TrainingConfig, split: CohortSplit,
               reporter: Reporter, max_images: int | None = None, cache_folder: Path | None = None,
               device: str = "auto", should_stop: Callable[[], bool] | None = None,
               cached_evaluation: bool = False) -> list[dict]:
    """Train and evaluate one perturber per (beta, seed); returns the rows written to ``out/sweep.csv``.

    ``config`` gives every setting but beta and seed. With ``cached_evaluation``
    the test images' latents also come from the cache under ``cache_folder``. Runs already evaluated
    in ``out`` are reused when their backbone, attribute, alpha, epochs and
    split match. Otherwise ``InvalidInputError`` names the differing settings.
    """
    from ApplePerturbLib.evaluate import write_evaluation
    from ApplePerturbLib.workflows import latent_cache, select_device

    runs = [(beta, seed) for beta in _unique(_checked_betas(betas)) for seed in _unique(seeds)]
    started = time.perf_counter()
    backbone = build_backbone(backbone_name, checkpoint, select_device(device))
    expected = {"backbone": backbone.name, "backbone_sha256": backbone.weights_sha256, "attribute": attribute,
                "alpha": config.alpha, "epochs": config.epochs, "split": asdict(split)}
    pending = [run for run in runs if not _evaluated(run_folder(out, *run), expected)]
    reporter.event("start", command="sweep-beta", backbone=backbone.name, attribute=attribute,
                   runs=len(runs), pending=len(pending), epochs=config.epochs)
    if pending:
        records = read_manifest(manifest)
        perturbers = _train_pending(backbone, records, attribute, out, pending, config, split, reporter,
                                    max_images, cache_folder, Path(manifest).name, expected, should_stop)
        test = split.select(records, "test")
        cache = latent_cache(backbone, cache_folder) if cached_evaluation else None
        evaluations = evaluate_perturbers(backbone, perturbers, test, attribute, split.age_threshold,
                                          reporter, should_stop, cache)
        for run, (results, metrics, latents) in evaluations.items():
            metrics.update({
                "attribute": attribute, "split": "test", "split_settings": asdict(split), "backbone": backbone.name,
                "perturber": str(run_folder(out, *run) / "perturber.safetensors"),
                "perturber_metadata": perturbers[run].metadata, "cohort_manifest": Path(manifest).name,
            })
            write_evaluation(run_folder(out, *run), results, metrics, latents)

    rows = [_csv_row(out, beta, seed) for beta, seed in runs]
    write_sweep_csv(out / "sweep.csv", rows)
    plot_sweep(out / "sweep.png", rows)
    reporter.event("done", sweep=str(out / "sweep.csv"), seconds=round(time.perf_counter() - started, 1))
    return rows


def _train_pending(backbone, records, attribute, out, pending, config, split, reporter, max_images,
                   cache_folder, manifest_name, expected, should_stop) -> dict[tuple[float, int], Perturber]:
    """Encode the train split once and train (or reload) the perturber of every pending run."""
    from ApplePerturbLib.perturber import load_perturber, save_perturber
    from ApplePerturbLib.workflows import limit_images

    perturbers = {}
    to_train = [run for run in pending if not (run_folder(out, *run) / "perturber.safetensors").is_file()]
    for run in pending:
        if run not in to_train:
            perturbers[run] = load_perturber(run_folder(out, *run) / "perturber.safetensors", backbone)
            _check_reusable(run_folder(out, *run), perturbers[run].metadata, expected)
            logger.info("Reusing the trained perturber in %s.", run_folder(out, *run))
    if not to_train:
        return perturbers

    train = limit_images(split.select(records, "train"), max_images, config.seed)
    require_groups(train, attribute, split.age_threshold, where="training split")
    samples = _encode(backbone, train, cache_folder, reporter, should_stop)
    groups = group_indices([s.record for s in samples], attribute, split.age_threshold)
    names = group_names(attribute, split.age_threshold)
    for beta, seed in to_train:
        run_config = replace(config, beta=beta, seed=seed)

        def report_epoch(stats, beta=beta, seed=seed):
            reporter.event("epoch", epochs=run_config.epochs, beta=beta, seed=seed, **asdict(stats))

        trained_at = time.perf_counter()
        result = train_perturber(backbone, samples, groups, len(names), run_config, report_epoch, should_stop)
        path = run_folder(out, beta, seed) / "perturber.safetensors"
        save_perturber(path, result.generator, result.discriminator, backbone, {
            "attribute": attribute, "groups": names, "age_threshold": split.age_threshold,
            "alpha": run_config.alpha, "beta": beta, "epochs": run_config.epochs, "seed": seed,
            "training": asdict(run_config), "split": asdict(split), "cohort_manifest": manifest_name,
            "train_group_counts": group_counts([s.record for s in samples], attribute, split.age_threshold),
            "train_images": len(samples), "final_losses": asdict(result.history[-1]),
            "training_seconds": round(time.perf_counter() - trained_at, 1), "sweep": True,
        })
        perturbers[(beta, seed)] = load_perturber(path, backbone)
    return perturbers


def _encode(backbone, records, cache_folder, reporter, should_stop) -> list:
    return encode_cohort(backbone, records, cache_folder, reporter, should_stop)


@torch.no_grad()
def evaluate_perturbers(backbone: Backbone, perturbers: dict, records: Sequence[CohortRecord], attribute: str,
                        age_threshold: float, reporter: Reporter | None = None,
                        should_stop: Callable[[], bool] | None = None, cache: LatentCache | None = None) -> dict:
    """Evaluate several perturbers on the same records, encoding each image once.

    Each image goes through ``evaluate.segment_record`` once with every
    perturber (with ``cache``, from the float16 latent cache). Returns {key: (per-image results, metrics {"base", "apple",
    "skipped_empty_masks"}, pooled latents {"f_o", "f_p"})}, the arguments
    of ``evaluate.write_evaluation``.
    """
    from ApplePerturbLib.evaluate import ImageResult, segment_record

    names = group_names(attribute, age_threshold)
    base_dice, groups, pooled, skipped = [], [], [], 0
    runs = {key: {"results": [], "f_p": []} for key in perturbers}
    for number, record in enumerate(records, start=1):
        if should_stop is not None and should_stop():
            raise TrainingInterrupted("stopped while evaluating the sweep")
        output = segment_record(backbone, list(perturbers.values()), record, cache=cache)
        if output is None:
            skipped += 1
            continue
        group = group_of(record, attribute, age_threshold)
        base_dice.append(dice_score(output.base, output.truth))
        groups.append(group)
        pooled.append(output.pooled_latent)

        for key, apple, pooled_perturbed in zip(perturbers, output.perturbed_masks, output.perturbed_pooled):
            runs[key]["results"].append(ImageResult(record.image.name, record.case_id, group, base_dice[-1],
                                                    dice_score(apple, output.truth)))
            runs[key]["f_p"].append(pooled_perturbed)
        if reporter is not None:
            reporter.steps("segmenting images", number, len(records))
    if not base_dice:
        raise ValueError("no test image with a non-empty ground-truth mask to evaluate; check the cohort's masks.")

    base_metrics = fairness_metrics(base_dice, groups, names)
    evaluations = {}
    for key, run in runs.items():
        metrics = {"base": base_metrics,
                   "apple": fairness_metrics([r.dice_apple for r in run["results"]], groups, names),
                   "skipped_empty_masks": skipped}
        evaluations[key] = (run["results"], metrics, {"f_o": np.stack(pooled), "f_p": np.stack(run["f_p"])})
    return evaluations


def _evaluated(folder: Path, expected: dict) -> bool:
    """Return True when ``folder`` contains a finished evaluation made with the ``expected`` settings."""
    path = folder / "metrics.json"
    if not path.is_file():
        return False
    metrics = json.loads(path.read_text(encoding="utf-8"))
    _check_reusable(folder, metrics.get("perturber_metadata") or {}, expected)
    logger.info("Skipping %s: already evaluated.", folder)
    return True


def _check_reusable(folder: Path, metadata: dict, expected: dict) -> None:
    """Raise ``InvalidInputError`` when a stored run's perturber was trained with other settings."""
    found = {key: metadata.get(key) for key in _REUSE_KEYS}
    if found != expected:
        differing = {key: (found[key], expected[key]) for key in _REUSE_KEYS if found[key] != expected[key]}
        raise InvalidInputError(
            f"{folder} contains a run trained with other settings (found, requested): {differing}; "
            "write the sweep to another --out folder or delete that run's folder."
        )


def _csv_row(out: Path, beta: float, seed: int) -> dict:
    metrics = json.loads((run_folder(out, beta, seed) / "metrics.json").read_text(encoding="utf-8"))
    row = {"beta": beta, "seed": seed, "folder": str(run_folder(out, beta, seed).relative_to(out))}
    for side in ("base", "apple"):
        for key in METRIC_KEYS:
            row[f"{side}_{key}"] = metrics[side].get(key)
    return row


def write_sweep_csv(path: Path, rows: Sequence[dict]) -> None:
    """Write the sweep table atomically; undefined metrics are empty cells."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row[key] is None else row[key] for key in CSV_COLUMNS})
    with atomic_output(path) as temporary:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")


def plot_sweep(path: Path, rows: Sequence[dict]) -> bool:
    """Plot mean Dice and DSC_delta (mean over seeds, bars = std) against beta on a log axis.

    Returns False, with a warning, when matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed, so %s was not drawn; pip install matplotlib.", path)
        return False
    betas = sorted({row["beta"] for row in rows})
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    for axis, key, label in zip(figure.subplots(1, 2), ("dsc_overall", "dsc_delta"),
                                ("mean Dice (test images)", "DSC_delta (max - min group Dice)")):
        mean, spread = _over_seeds(rows, betas, f"apple_{key}")
        axis.errorbar(betas, mean, yerr=spread, marker="o", capsize=3, label="APPLE")
        base = _finite([row[f"base_{key}"] for row in rows])
        if base:
            axis.axhline(float(np.mean(base)), color="grey", linestyle="--", label="base model")
        axis.set_xscale("log")
        axis.set_xlabel("beta (weight of L_seg)")
        axis.set_ylabel(label)
        axis.legend()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    return True


def _over_seeds(rows, betas, column) -> tuple[list[float], list[float]]:
    means, spreads = [], []
    for beta in betas:
        values = _finite([row[column] for row in rows if row["beta"] == beta])
        means.append(float(np.mean(values)) if values else math.nan)
        spreads.append(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
    return means, spreads


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _checked_betas(betas: Sequence[float]) -> list[float]:
    if not betas:
        raise InvalidInputError("no beta given; pass --betas with one or more positive numbers, e.g. 0.01 0.1 1 10.")
    for beta in betas:
        if not math.isfinite(beta) or beta <= 0:
            raise InvalidInputError(f"beta {beta} is invalid; every beta must be a positive number (log-scale sweep).")
    return [float(beta) for beta in betas]


def _unique(values) -> list:
    return list(dict.fromkeys(values))


# Command line -----------------------------------------------------------------------------------

def add_parser(subparsers) -> None:
    """Add ``sweep-beta`` to the ``apple-perturb`` subcommands."""
    from ApplePerturbLib.cli import _add_model_options, _add_progress_option, _add_split_options

    parser = subparsers.add_parser("sweep-beta", help="train and evaluate one perturber per beta from cached latents")
    parser.add_argument("--cohort", type=Path, required=True, help="cohort manifest CSV, or a DDTI folder (N.xml + N_k.jpg) to import first")
    parser.add_argument("--attribute", choices=("sex", "age"), required=True, help="sensitive attribute to hide")
    parser.add_argument("--out", type=Path, required=True, help="sweep folder (beta_<b>/seed_<s>/, sweep.csv, sweep.png)")
    parser.add_argument("--betas", type=float, nargs="+", default=list(DEFAULT_BETAS),
                        help="segmentation-loss weights to train (default 0.01 0.1 1 10)")
    parser.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0],
                        help="seeds of the weights and batch order, one perturber each per beta (default 0)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per perturber (default 10)")
    parser.add_argument("--alpha", type=float, default=1.0, help="entropy weight in L_fair (default 1.0)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default 8)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of both networks (default 1e-4)")
    parser.add_argument("--max-images", type=int, help="train on a seeded random subset of this many images")
    parser.add_argument("--cache", type=Path, help="latent cache folder (default $APPLE_PERTURB_CACHE or ~/.cache/apple-perturb)")
    parser.add_argument("--no-cache", action="store_true", help="keep latents in memory only")
    parser.add_argument("--cached-latents", action="store_true",
                        help="evaluate from the cached float16 latents too, skipping the encoder for test images "
                             "seen before; Dice can differ from an uncached run by float16 rounding")
    _add_model_options(parser)
    _add_split_options(parser)
    _add_progress_option(parser)
    parser.set_defaults(handler=run_sweep_beta)


def run_sweep_beta(args, reporter, should_stop) -> None:
    from ApplePerturbLib.workflows import CohortSplit, default_cache_folder

    config = TrainingConfig(epochs=args.epochs, alpha=args.alpha, batch_size=args.batch_size,
                            lr_generator=args.lr, lr_discriminator=args.lr, seed=args.seeds[0])
    split = CohortSplit(args.split_by, args.test_fraction, args.split_seed, args.age_threshold)
    if args.no_cache and args.cached_latents:
        raise InvalidInputError("--cached-latents needs the latent cache; drop --no-cache.")
    cache = None if args.no_cache else (args.cache or default_cache_folder())
    rows = sweep_beta(args.cohort, args.backbone, args.checkpoint, args.attribute, args.out, args.betas, args.seeds,
                      config, split, reporter, args.max_images, cache, args.device, should_stop,
                      args.cached_latents)
    if args.progress != "jsonl":
        print(f"{'beta':>8} {'seed':>4} {'Dice base':>9} {'Dice APPLE':>10} {'delta base':>10} {'delta APPLE':>11}")
        for row in rows:
            print(f"{row['beta']:>8g} {row['seed']:>4} {_cell(row['base_dsc_overall']):>9} "
                  f"{_cell(row['apple_dsc_overall']):>10} {_cell(row['base_dsc_delta']):>10} "
                  f"{_cell(row['apple_dsc_delta']):>11}")
        plot = args.out / "sweep.png"
        print(f"wrote {args.out / 'sweep.csv'}" + (f" and {plot}" if plot.is_file() else " (no plot: matplotlib missing)"))


def _cell(value) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.3f}"
