"""The ``apple-perturb report`` subcommand: its parser, ``write_report``, and the blocks around the
evaluation sections (front matter, the summary over several evaluations and the reading guide)."""

from __future__ import annotations

import argparse
import datetime
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

from ApplePerturbLib.errors import InvalidInputError
from ApplePerturbLib.imageio import atomic_output
from ApplePerturbLib.report.evaluation import Evaluation, _unique_labels, load_evaluation
from ApplePerturbLib.report.render import Block, _pair, _with_range, render_html, render_markdown
from ApplePerturbLib.report.sections import SectionResult, _EvaluationSection
from ApplePerturbLib.report.verdict import _SUMMARY_ROWS

DEFAULT_SEED = 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to the ``apple-perturb`` subparsers."""
    parser = subparsers.add_parser("report", help="write an HTML and Markdown report of evaluation folders")
    parser.add_argument("evaluations", type=Path, nargs="+", metavar="EVAL_DIR",
                        help="folders written by 'apple-perturb evaluate' (use --save-masks for downstream errors)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for report.html, report.md and its figures")
    parser.add_argument("--cohort", type=Path, metavar="MANIFEST",
                        help="cohort manifest of the evaluations, for the ground truth of the downstream errors "
                             "(default: the manifest path stored in metrics.json, if any)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="case-level bootstrap resamples for the confidence intervals (default 1000; 0: none)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="S", help="seed of the bootstrap and t-SNE (default 0)")
    parser.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default="auto",
                        help="progress display: a bar on a terminal (auto), JSON lines on stdout (jsonl), or none")
    parser.set_defaults(handler=run_report)
    return parser


def run_report(args: argparse.Namespace, reporter, should_stop: Callable[[], bool]) -> None:
    """Run ``apple-perturb report`` with parsed arguments."""
    html_path = write_report(args.evaluations, args.out, args.cohort, args.bootstrap, args.seed, reporter, should_stop)
    if getattr(args, "progress", "auto") != "jsonl":
        print(f"wrote {html_path} and {html_path.with_name('report.md')}")


def write_report(folders: Sequence[str | Path], out: str | Path, cohort: str | Path | None = None,
                 n_bootstrap: int = 1000, seed: int = DEFAULT_SEED, reporter=None,
                 should_stop: Callable[[], bool] | None = None) -> Path:
    """Write ``report.html``, ``report.md`` and the figure PNGs into ``out``; returns the HTML path.

    Args:
        folders: evaluation folders, one report section each, in this order.
        out: output folder, created when missing.
        cohort: manifest with the ground-truth masks; default the
            ``cohort_manifest_path`` stored in each metrics.json. Without
            either, the downstream-error section explains what is missing.
        n_bootstrap: case-level bootstrap resamples (0 skips the intervals,
            and the verdict then judges nothing).
        seed: seed of the bootstrap and of t-SNE.
        reporter: ``ApplePerturbLib.progress.Reporter`` or None.
        should_stop: polled between steps; True stops with TrainingInterrupted.
    """
    from ApplePerturbLib.progress import Reporter

    if n_bootstrap < 0:
        raise InvalidInputError(f"invalid --bootstrap {n_bootstrap}; expected 0 (no intervals) or more resamples.")
    reporter = reporter or Reporter()
    should_stop = should_stop or (lambda: False)
    folders = [Path(folder) for folder in folders]
    if not folders:
        raise InvalidInputError("no evaluation folder given; pass at least one EVAL_DIR.")
    evaluations = [load_evaluation(folder, label) for folder, label in zip(folders, _unique_labels(folders))]
    reporter.event("start", command="report", evaluations=len(evaluations), bootstrap=n_bootstrap)

    sections = []
    for index, evaluation in enumerate(evaluations, start=1):
        section = _EvaluationSection(index, evaluation, cohort, n_bootstrap, seed, reporter, should_stop)
        sections.append(section.build())

    blocks = _front_matter(evaluations, n_bootstrap)
    if len(sections) > 1:
        blocks += _summary_blocks(evaluations, sections)
    for section in sections:
        blocks += section.blocks
    blocks += _reading_guide(n_bootstrap)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for block in blocks:
        if block.kind == "figure":
            with atomic_output(out / block.name) as temporary:
                temporary.write_bytes(block.png)
    with atomic_output(out / "report.md") as temporary:
        temporary.write_text(render_markdown(blocks), encoding="utf-8")
    html_path = out / "report.html"
    with atomic_output(html_path) as temporary:
        temporary.write_text(render_html(blocks, "APPLE fairness report"), encoding="utf-8")
    reporter.event("done", report=str(html_path))
    return html_path


# --- summary across evaluations ---------------------------------------------------------


def _front_matter(evaluations: Sequence[Evaluation], n_bootstrap: int) -> list[Block]:
    generated = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    intro = ("This report compares lesion segmentation with and without an APPLE latent perturbation "
             "(Xu et al., npj Digital Medicine 8, 2025, doi:10.1038/s41746-025-01641-y), which aims to make the "
             "segmentation equally accurate for patient groups such as female and male patients or younger and "
             "older patients. It covers " + (f"{len(evaluations)} evaluations." if len(evaluations) > 1 else
                                             "one evaluation."))
    return [Block("heading", "APPLE fairness report", level=1),
            Block("paragraph", f"Generated by apple-perturb on {generated}."), Block("paragraph", intro)]


def _summary_blocks(evaluations: Sequence[Evaluation], sections: Sequence[SectionResult]) -> list[Block]:
    header = ["evaluation", "backbone", "attribute", "seed", "Dice overall (without, with APPLE)",
              "DSC_delta (without, with APPLE)", "change in DSC_delta (interval)", "verdict"]
    rows = []
    for evaluation, section in zip(evaluations, sections):
        overall, delta = section.intervals["dsc_overall"], section.intervals["dsc_delta"]
        with_apple = evaluation.has_apple
        rows.append([
            evaluation.label, str(evaluation.metrics.get("backbone", "n/a")),
            str(evaluation.metrics.get("attribute", "n/a")), str(evaluation.perturber_metadata.get("seed", "n/a")),
            _pair(overall, with_apple), _pair(delta, with_apple),
            _with_range(delta["difference"], signed=True) if with_apple else "n/a", section.verdict_word,
        ])
    blocks = [Block("heading", "Summary", level=2), Block("table", header=header, rows=rows)]
    return blocks + _seed_blocks(evaluations)


def _seed_blocks(evaluations: Sequence[Evaluation]) -> list[Block]:
    """Return mean (std) tables for evaluations that differ only in the perturber's seed."""
    from ApplePerturbLib.analysis.uncertainty import aggregate_seeds, format_mean_std

    runs = defaultdict(list)
    for evaluation in evaluations:
        metadata = evaluation.perturber_metadata
        if evaluation.has_apple and "seed" in metadata:
            metrics = evaluation.metrics
            key = (metrics.get("backbone"), metrics.get("attribute"), metadata.get("alpha"), metadata.get("beta"),
                   metadata.get("epochs"), metrics.get("cohort_manifest"), metrics.get("split"))
            runs[key].append(evaluation)

    blocks = []
    for (backbone, attribute, alpha, beta, epochs, manifest, split), members in runs.items():
        seeds = sorted({str(member.perturber_metadata["seed"]) for member in members})
        if len(seeds) < 2:
            continue
        base = aggregate_seeds([member.metrics["base"] for member in members])
        apple = aggregate_seeds([member.metrics["apple"] for member in members])
        rows = [[_metric_label(key), format_mean_std(base[key]), format_mean_std(apple[key]) if key in apple else "n/a"]
                for key in base]
        blocks += [Block("heading", f"Mean (std) over seeds {', '.join(seeds)}: {backbone}, attribute {attribute}",
                         level=3),
                   Block("paragraph", f"alpha {alpha}, beta {beta}, {epochs} epochs, manifest {manifest}, {split} "
                                      f"split; std is the sample standard deviation over the {len(members)} runs."),
                   Block("table", header=["metric", "without APPLE", "with APPLE"], rows=rows)]
    return blocks


def _metric_label(key: str) -> str:
    """Return the table label of a metric key of ``uncertainty.metric_values``."""
    if key == "dsc_overall":
        return "Dice, all images"
    if key.startswith("dsc["):
        return f"Dice, {key[4:-1]}"
    labels = {prefix: label for label, prefix, _ in _SUMMARY_ROWS}
    return labels.get(key, key)


def _reading_guide(n_bootstrap: int) -> list[Block]:
    items = [
        "Dice: overlap between the predicted and the expert's lesion outline, from 0 (none) to 1 (identical), "
        "computed per image and then averaged.",
        "Group Dice: the mean Dice of one group's images. DSC_delta is the largest minus the smallest group Dice, "
        "and DSC_std their standard deviation: lower values mean the groups are served more equally.",
        "DSC_skew: the largest group error (1 - Dice) divided by the smallest; 1 means equal errors.",
        "ES-Dice: the overall Dice divided by one plus the summed differences between each group and the "
        "overall Dice; it rewards accuracy and equality together.",
        "Intervals: a change is reported as real only when its whole interval lies on one side of zero; "
        "otherwise it is called inconclusive. The intervals resample patients (cases), not single images.",
    ]
    if n_bootstrap == 0:
        items[-1] = "No intervals were computed for this report, so no change is judged."
    return [Block("heading", "How to read this report", level=2), Block("bullets", items=items)]
