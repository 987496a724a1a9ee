"""Print the study's tables, in the layout of the APPLE paper, from a folder written by ``ddti_study.sh``.

Each cell is "mean (std)" over the seeds found (std with ddof=1), for the
fairness metrics of the test split. Base and +APPLE come from the same
``evaluate`` run; +FEBS is a base model trained with the FEBS loss; +InD
uses each image's group model. A second table sums the wall time of every
kind of step from ``step_seconds.tsv``.

With ``--figure PATH`` it also draws DSC_mean and DSC_delta per model and
method (bars: mean over seeds, whiskers: std), one column per attribute.

Usage: python scripts/study_tables.py WORK_FOLDER [--figure PATH.png]
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from ApplePerturbLib.analysis.uncertainty import aggregate_seeds, format_mean_std

BACKBONES = {"unet": "U-Net", "transunet": "TransUNet", "litemedsam": "LiteMedSAM"}
ATTRIBUTES = ("sex", "age")
COLUMNS = (("dsc_overall", "Dice, all"), ("dsc_mean", "DSC_mean"), ("dsc_delta", "DSC_delta"),
           ("dsc_std", "DSC_std"), ("dsc_skew", "DSC_skew"))
# (row label, evaluation folder suffix, key of the result inside metrics.json)
METHODS = (("base", "apple", "base"), ("+APPLE", "apple", "apple"),
           ("+FEBS", "febs", "base"), ("+InD", "ind", "apple"))


def collect(work: Path, backbone: str, attribute: str, folder_suffix: str, key: str) -> list[dict]:
    """Return one fairness result per seed folder that has this evaluation."""
    results = []
    for seed_folder in sorted(work.glob("seed*")):
        path = seed_folder / f"eval-{backbone}-{attribute}-{folder_suffix}" / "metrics.json"
        if path.is_file():
            results.append(json.loads(path.read_text(encoding="utf-8"))[key])
    return results


def fairness_table(work: Path, attribute: str) -> str:
    """Return one Markdown table: rows backbone x method, columns the fairness metrics as mean (std)."""
    lines = ["| model | method | seeds | test images | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 4) + "|"]
    for backbone, name in BACKBONES.items():
        for label, suffix, key in METHODS:
            results = collect(work, backbone, attribute, suffix, key)
            if not results:
                continue
            summary = aggregate_seeds(results)
            cells = [format_mean_std(summary[column]) if column in summary else "n/a" for column, _ in COLUMNS]
            groups = ", ".join(f"{group} {entry['n']}" for group, entry in results[0]["groups"].items())
            lines.append(f"| {name} | {label} | {len(results)} | {results[0]['n_images']} ({groups}) | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def step_kind(name: str) -> str:
    """Drop the seed and spell out the model of a step name: "unet-sex-apple-s2" -> "U-Net sex-apple"."""
    name = re.sub(r"-s\d+$", "", name)
    for backbone in BACKBONES:
        if name.startswith(backbone + "-"):
            return BACKBONES[backbone] + " " + name[len(backbone) + 1:]
    return name


def times_table(work: Path) -> str:
    """Return a Markdown table of the total and mean wall time of each kind of step."""
    totals: dict[str, list[int]] = defaultdict(list)
    path = work / "step_seconds.tsv"
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            name, seconds = line.split("\t")
            totals[step_kind(name)].append(int(seconds))
    lines = ["| step | runs | mean s | total s |", "|---|---|---|---|"]
    for kind, values in totals.items():
        lines.append(f"| {kind} | {len(values)} | {sum(values) / len(values):.0f} | {sum(values)} |")
    overall = sum(sum(values) for values in totals.values())
    lines.append(f"| **all steps** | {sum(len(v) for v in totals.values())} | | **{overall}** "
                 f"({overall / 3600:.2f} h) |")
    return "\n".join(lines)


def plot_study(work: Path, path: Path) -> None:
    """Draw DSC_mean and DSC_delta bars (mean over seeds, std whiskers) for every model and method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (("dsc_mean", "DSC_mean (higher is better)"), ("dsc_delta", "DSC_delta (lower is fairer)"))
    figure, axes = plt.subplots(len(metrics), len(ATTRIBUTES), figsize=(11, 7), squeeze=False)
    width = 0.8 / len(METHODS)
    for column, attribute in enumerate(ATTRIBUTES):
        for row, (key, title) in enumerate(metrics):
            axis = axes[row][column]
            for number, (label, suffix, result_key) in enumerate(METHODS):
                means, stds, positions = [], [], []
                for position, backbone in enumerate(BACKBONES):
                    results = collect(work, backbone, attribute, suffix, result_key)
                    summary = aggregate_seeds(results).get(key) if results else None
                    if summary is None or summary.mean is None:
                        continue
                    positions.append(position + (number - (len(METHODS) - 1) / 2) * width)
                    means.append(summary.mean)
                    stds.append(summary.std or 0.0)
                axis.bar(positions, means, width, yerr=stds, capsize=3, label=label)
            axis.set_xticks(range(len(BACKBONES)), list(BACKBONES.values()))
            axis.set_title(f"{title}, by {attribute}", fontsize=10)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    temporary.replace(path)


def main(argv: list[str]) -> int:
    figure = None
    if len(argv) == 3 and argv[1] == "--figure":
        figure = Path(argv[2])
        argv = argv[:1]
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    work = Path(argv[0])
    if figure is not None:
        plot_study(work, figure)
    for attribute in ATTRIBUTES:
        print(f"### {attribute}\n\n{fairness_table(work, attribute)}\n")
    if (work / "step_seconds.tsv").is_file():
        print(f"### Wall time per step\n\n{times_table(work)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
