"""Handlers of the ``apple-perturb`` subcommands, one function per subcommand."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ApplePerturbLib.errors import InvalidInputError
from ApplePerturbLib.progress import Reporter


def run(args: argparse.Namespace, reporter: Reporter, should_stop) -> None:
    """Dispatch to the subcommand's function."""
    if getattr(args, "handler", None) is not None:
        args.handler(args, reporter, should_stop)
        return
    handlers = {
        "train": train, "evaluate": evaluate, "segment": segment, "import-ddti": import_ddti,
        "train-base": train_base, "demo": demo,
    }
    handlers[args.command](args, reporter, should_stop)


def _split(args: argparse.Namespace):
    from ApplePerturbLib.workflows import CohortSplit

    return CohortSplit(args.split_by, args.test_fraction, args.split_seed, args.age_threshold)


def train(args, reporter, should_stop) -> None:
    from ApplePerturbLib.apple.trainer import TrainingConfig
    from ApplePerturbLib.workflows import default_cache_folder, train_perturber_on_cohort

    config = TrainingConfig(epochs=args.epochs, alpha=args.alpha, beta=args.beta, batch_size=args.batch_size,
                            lr_generator=args.lr, lr_discriminator=args.lr, seed=args.seed)
    cache = None if args.no_cache else (args.cache or default_cache_folder())
    metadata = train_perturber_on_cohort(args.cohort, args.backbone, args.checkpoint, args.attribute, args.out,
                                         config, _split(args), reporter, args.max_images, cache, args.device,
                                         should_stop)
    if args.progress != "jsonl":
        final = metadata["final_losses"]
        print(f"wrote perturber {args.out} ({metadata['train_images']} images, {args.epochs} epochs, "
              f"final training Dice {final['dsc']:.3f}, {metadata['training_seconds']:.0f} s)")


def evaluate(args, reporter, should_stop) -> None:
    from ApplePerturbLib.metrics import format_comparison_table
    from ApplePerturbLib.workflows import evaluate_on_cohort

    if args.out.exists() and not args.out.is_dir():
        raise InvalidInputError(f"--out {args.out} is a file; give a folder for the evaluation results.")
    explicit_split = None if args.perturber else _split(args)
    metrics = evaluate_on_cohort(args.cohort, args.backbone, args.checkpoint, args.perturber, args.split, args.out,
                                 reporter, args.attribute, explicit_split, args.device, args.save_masks,
                                 should_stop, cached_latent_folder(args))
    if args.progress != "jsonl":
        print(f"{metrics['backbone']} on the {args.split} split, groups by {metrics['attribute']}:")
        print(format_comparison_table(metrics["base"], metrics["apple"]))
        if "perturbation_size" in metrics:
            size = metrics["perturbation_size"]
            print(f"perturbation size ||delta|| / ||f_o||: median {size['median']:.2g}, max {size['max']:.2g}")
        print(f"wrote {args.out / 'per_image.csv'} and {args.out / 'metrics.json'}")


def add_cached_latent_options(parser: argparse.ArgumentParser) -> None:
    """Add --cached-latents and --cache to an evaluation command."""
    parser.add_argument("--cached-latents", action="store_true",
                        help="reuse (and store) the float16 latents that train caches, skipping the encoder for "
                             "images seen before; Dice can differ from an uncached run by float16 rounding")
    parser.add_argument("--cache", type=Path,
                        help="latent cache folder (default $APPLE_PERTURB_CACHE or ~/.cache/apple-perturb)")


def cached_latent_folder(args):
    """Return the latent cache folder with --cached-latents, else None."""
    from ApplePerturbLib.workflows import default_cache_folder

    if not args.cached_latents:
        return None
    return args.cache or default_cache_folder()


def segment(args, reporter, should_stop) -> None:
    from ApplePerturbLib.backbones import build_backbone
    from ApplePerturbLib.imageio import read_image, write_mask
    from ApplePerturbLib.perturber import load_perturber
    from ApplePerturbLib.segment import Segmenter
    from ApplePerturbLib.workflows import select_device

    image = read_image(args.image)
    backbone = build_backbone(args.backbone, args.checkpoint, select_device(args.device))
    perturber = load_perturber(args.perturber, backbone) if args.perturber else None
    segmenter = Segmenter(backbone, perturber)
    segmenter.set_image(image)
    mask = segmenter.predict([args.box] if args.box else None)
    write_mask(args.out, mask)
    print(f"wrote {args.out}: {int(mask.sum())} lesion pixels of {mask.size}")


def import_ddti(args, reporter, should_stop) -> None:
    from ApplePerturbLib.ddti import format_report, import_ddti as run_import

    report = run_import(args.src, args.out)
    print(format_report(report))
    print(f"wrote {Path(args.out) / 'manifest.csv'}")


def train_base(args, reporter, should_stop) -> None:
    from ApplePerturbLib.base_training import BaseTrainingConfig
    from ApplePerturbLib.errors import InvalidInputError
    from ApplePerturbLib.workflows import train_base_on_cohort

    if args.loss == "febs" and args.attribute is None:
        raise InvalidInputError("--loss febs needs --attribute sex or --attribute age: the groups whose loss it scales.")
    config = BaseTrainingConfig(args.epochs, args.batch_size, args.lr, args.seed, loss=args.loss,
                                febs_attribute=args.attribute if args.loss == "febs" else None,
                                febs_gamma=args.febs_gamma, input_size=args.input_size)
    metadata = train_base_on_cohort(args.cohort, args.out, config, _split(args), reporter, args.max_images,
                                    args.device, should_stop, args.architecture)
    if args.progress != "jsonl":
        print(f"wrote {args.architecture} {args.out} ({metadata['train_images']} images, final training Dice "
              f"{metadata['final_dsc']:.3f}, {metadata['training_seconds']:.0f} s)")


def demo(args, reporter, should_stop) -> None:
    from ApplePerturbLib.apple.trainer import TrainingConfig
    from ApplePerturbLib.metrics import format_comparison_table
    from ApplePerturbLib.synthetic import SYNTHETIC_NOTICE, make_synthetic_cohort
    from ApplePerturbLib.workflows import CohortSplit, evaluate_on_cohort, train_perturber_on_cohort

    started = time.perf_counter()
    print(f"NOTE: {SYNTHETIC_NOTICE}")
    manifest = make_synthetic_cohort(args.out / "cohort", n_cases=args.cases, seed=0)
    print(f"1/3 generated a synthetic cohort of {args.cases} cases: {manifest}")
    perturber = args.out / "perturber-sex.safetensors"
    config = TrainingConfig(epochs=args.epochs, beta=args.beta)
    print("2/3 training an APPLE perturber on LiteMedSAM (attribute: sex) ...")
    train_perturber_on_cohort(manifest, "litemedsam", None, "sex", perturber, config, CohortSplit(), reporter,
                              cache_folder=args.out / "cache", should_stop=should_stop)
    print("3/3 evaluating on the test split with and without the perturber ...")
    metrics = evaluate_on_cohort(manifest, "litemedsam", None, perturber, "test", args.out / "evaluation", reporter,
                                 should_stop=should_stop)
    print(format_comparison_table(metrics["base"], metrics["apple"]))
    print(f"results: {args.out / 'evaluation'}; total {time.perf_counter() - started:.0f} s.")
    print(f"NOTE: {SYNTHETIC_NOTICE}")
