"""Perturber training epoch with cached latents vs. running the encoder every step.

Both variants run the same generator and discriminator updates on the same
images. The second also encodes each batch's images first, as Algorithm 1
of the APPLE paper reads literally. Prints both epoch times and the speed-up
(target: at least 5x).

Usage: python benchmarks/cached_latents.py [--images 16] [--backbone litemedsam]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ApplePerturbLib.apple.trainer import TrainingConfig, train_perturber
from ApplePerturbLib.backbones import build_backbone
from ApplePerturbLib.cohort import read_manifest
from ApplePerturbLib.latents import encode_record, group_indices
from ApplePerturbLib.synthetic import make_synthetic_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="training images (default 16)")
    parser.add_argument("--backbone", default="litemedsam", help="backbone name (default litemedsam)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="apple-bench-"))
    records = read_manifest(make_synthetic_cohort(folder, n_cases=args.images, seed=0))[: args.images]
    backbone = build_backbone(args.backbone)
    groups = group_indices(records, "sex", 50.0)
    config = TrainingConfig(epochs=1, batch_size=4)

    start = time.perf_counter()
    samples = [encode_record(backbone, record) for record in records]
    encode_seconds = time.perf_counter() - start

    start = time.perf_counter()
    train_perturber(backbone, samples, groups, 2, config)
    cached_seconds = time.perf_counter() - start

    # Re-encoding variant: the same training, plus the encoder on every batch's images.
    def encode_every_step() -> bool:
        batch = [records[i % len(records)] for i in range(encode_every_step.calls, encode_every_step.calls + config.batch_size)]
        encode_every_step.calls += config.batch_size
        for record in batch:
            encode_record(backbone, record)
        return False

    encode_every_step.calls = 0
    start = time.perf_counter()
    train_perturber(backbone, samples, groups, 2, config, should_stop=encode_every_step)
    recompute_seconds = time.perf_counter() - start

    print(f"{args.backbone}, {len(records)} synthetic images, batch {config.batch_size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"one-off encoding of all images: {encode_seconds:.1f} s")
    print(f"epoch with cached latents:      {cached_seconds:.1f} s")
    print(f"epoch re-encoding every step:   {recompute_seconds:.1f} s")
    print(f"speed-up: {recompute_seconds / cached_seconds:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
