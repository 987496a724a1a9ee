"""Peak memory of ``apple-perturb evaluate`` for N and 4N images.

Evaluation streams images, so its peak resident memory must not grow with
the number of images beyond the pooled latents it keeps (C floats per
image). Runs the real command line in child processes and prints each peak
(ru_maxrss) and their ratio.

Usage: python benchmarks/evaluation_memory.py [--images 6]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from ApplePerturbLib.cohort import read_manifest, write_manifest
from ApplePerturbLib.synthetic import make_synthetic_cohort


def peak_rss_mib(manifest: Path, out: Path) -> float:
    code = (
        "import resource, sys\n"
        "from ApplePerturbLib.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
        "sys.exit(code)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code, "evaluate", "--cohort", str(manifest), "--split", "all", "--out", str(out),
         "--progress", "none"], capture_output=True, text=True, check=True)
    return float(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6, help="N, the smaller cohort's image count (default 6)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="apple-bench-"))
    records = read_manifest(make_synthetic_cohort(folder / "cohort", n_cases=4 * args.images, seed=0))
    small, large = folder / "small.csv", folder / "large.csv"
    write_manifest(small, records[: args.images])
    write_manifest(large, records[: 4 * args.images])
    peaks = {n: peak_rss_mib(path, folder / f"eval{n}") for n, path in
             ((args.images, small), (4 * args.images, large))}
    (n_small, small_peak), (n_large, large_peak) = peaks.items()
    print(f"LiteMedSAM evaluate, synthetic 192x256 images, peak RSS: {n_small} images {small_peak:.0f} MiB, "
          f"{n_large} images {large_peak:.0f} MiB")
    print(f"ratio {large_peak / small_peak:.3f} for {n_large / n_small:.0f}x the images (target: about 1)")


if __name__ == "__main__":
    main()
