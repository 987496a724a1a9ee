"""``apple-perturb report``: a self-contained HTML and Markdown report of evaluation folders.

Input: one or more folders written by ``apple-perturb evaluate`` (with
``--save-masks`` for the downstream-error section). Output, in ``--out``:

- ``report.html``: one file, figures embedded as base64 PNG, no external
  resources, readable in any browser without a network;
- ``report.md``: the same text in Markdown, its figures saved beside it as
  ``figure-<n>-<name>.png``.

Each evaluation gets a section with what was compared, a plain-language
verdict, the fairness metrics with case-level bootstrap intervals and the Dice
histograms per group. The section also shows the downstream-error histograms
(area, perimeter, energy) with their Jensen-Shannon divergences, and the
latent-space t-SNE with the Davies-Bouldin index and silhouette score.
Several folders get a summary table. Folders that differ only in the
perturber's training seed are also summarised as mean (std) over seeds.

The verdict never claims more than the intervals show. A change whose
interval includes zero is called inconclusive, and APPLE is called fairer
only when the interval of the paired DSC_delta difference lies below zero.

Modules:

- ``command``: the subcommand's parser, ``write_report``, the front matter,
  the summary over several evaluations and the reading guide;
- ``evaluation``: loading an evaluation folder;
- ``sections``: one evaluation's section;
- ``verdict``: metric intervals, the verdict and the fairness-metrics table;
- ``figures``: matplotlib figures rendered to PNG bytes;
- ``render``: the document blocks, their HTML and Markdown renderings and
  number formatting.

matplotlib, scikit-learn and PyRadiomics are imported inside the functions
that use them, because the command line imports this package at start-up
to register the subcommand.
"""

from ApplePerturbLib.report.command import DEFAULT_SEED, add_parser, run_report, write_report
from ApplePerturbLib.report.evaluation import LATENTS_FILE, METRICS_FILE, Evaluation, load_evaluation
from ApplePerturbLib.report.render import Block, render_html, render_markdown
from ApplePerturbLib.report.sections import SectionResult

__all__ = [
    "DEFAULT_SEED",
    "LATENTS_FILE",
    "METRICS_FILE",
    "Block",
    "Evaluation",
    "SectionResult",
    "add_parser",
    "load_evaluation",
    "render_html",
    "render_markdown",
    "run_report",
    "write_report",
]
