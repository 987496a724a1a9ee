"""APPLE's added cost per image over the plain backbone, on this machine's CPU.

Plain segmentation runs encoder + decoder; APPLE runs encoder + G_p +
decoder. Prints the median time of each and the ratio of the extra cost
(target: at most 10% extra). SAM ViT-B uses the real architecture with
random weights, which costs the same time as the released weights.

Usage: python benchmarks/apple_overhead.py [--repeats 5] [--skip-sam]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from ApplePerturbLib.apple.networks import PerturbationGenerator
from ApplePerturbLib.backbones import build_backbone
from ApplePerturbLib.backbones.sam_family import SamEncoderConfig, SamFamilyBackbone, build_sam_modules


def sam_vit_b_random() -> SamFamilyBackbone:
    config = SamEncoderConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))
    modules = build_sam_modules(config)
    return SamFamilyBackbone("sam_vit_b", *modules, input_size=1024, stretch=False, intensity="sam").freeze()


@torch.no_grad()
def time_backbone(backbone, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (360, 560, 3), dtype=np.uint8)
    box = [(150, 100, 300, 220)]
    generator = PerturbationGenerator(backbone.latent_shape[0]).eval()
    torch.nn.init.normal_(generator.dec3.weight, std=1e-3)
    plain, apple, perturb_only = [], [], []
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        start = time.perf_counter()
        prepared = backbone.prepare(image)
        encoded = backbone.encode(prepared.pixels)
        boxes = backbone.boxes_to_input_frame(box, prepared)
        encode_seconds = time.perf_counter() - start

        start = time.perf_counter()
        backbone.logits_to_mask(backbone.decode(encoded.latent, encoded.context, boxes), prepared)
        decode_seconds = time.perf_counter() - start

        start = time.perf_counter()
        perturbed = encoded.latent + generator(encoded.latent)
        generator_seconds = time.perf_counter() - start
        backbone.logits_to_mask(backbone.decode(perturbed, encoded.context, boxes), prepared)
        apple_decode_seconds = time.perf_counter() - start - generator_seconds

        plain.append(encode_seconds + decode_seconds)
        apple.append(encode_seconds + generator_seconds + apple_decode_seconds)
        perturb_only.append(generator_seconds)
    plain_s, apple_s = statistics.median(plain[1:]), statistics.median(apple[1:])
    return {"plain_s": plain_s, "apple_s": apple_s, "generator_s": statistics.median(perturb_only[1:]),
            "extra": (apple_s - plain_s) / plain_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per backbone (default 5)")
    parser.add_argument("--skip-sam", action="store_true", help="time LiteMedSAM only")
    args = parser.parse_args()
    backbones = [("litemedsam", build_backbone("litemedsam"))]
    if not args.skip_sam:
        backbones.append(("sam_vit_b", sam_vit_b_random()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, one 560x360 image, one box")
    print("backbone     plain (s)  APPLE (s)  G_p (s)  extra")
    for name, backbone in backbones:
        result = time_backbone(backbone, args.repeats)
        print(f"{name:<12} {result['plain_s']:9.3f}  {result['apple_s']:9.3f}  {result['generator_s']:7.3f}  "
              f"{100 * result['extra']:+5.1f}%  (target <= +10%)")


if __name__ == "__main__":
    main()
