"""One evaluation's report section: what was compared, the verdict, the fairness metrics and Dice
histograms, the downstream measurements and the latent space."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ApplePerturbLib.errors import InvalidInputError, TrainingInterrupted
from ApplePerturbLib.report.evaluation import LATENTS_FILE, Evaluation, _group_counts
from ApplePerturbLib.report.figures import _dice_figure, _downstream_report, _figure_png
from ApplePerturbLib.report.render import Block
from ApplePerturbLib.report.verdict import _metric_intervals, _metrics_table, _verdict

logger = logging.getLogger(__name__)


@dataclass
class SectionResult:
    """The blocks of one evaluation's section and the numbers the summary tables reuse."""

    blocks: list[Block]
    intervals: dict[str, dict]
    verdict_word: str


class _EvaluationSection:
    """Builds the report section of one evaluation folder."""

    def __init__(self, index: int, evaluation: Evaluation, cohort, n_bootstrap: int, seed: int,
                 reporter, should_stop: Callable[[], bool]):
        self.index = index
        self.evaluation = evaluation
        self.cohort = cohort
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.reporter = reporter
        self.should_stop = should_stop

    def build(self) -> SectionResult:
        evaluation = self.evaluation
        blocks = [Block("heading", f"{self.index}. Evaluation {evaluation.label}", level=2)]
        blocks += [Block("heading", "What was compared", level=3), Block("bullets", items=_description(evaluation))]

        self._check_stop()
        intervals, bootstrap = _metric_intervals(evaluation, self.n_bootstrap, self.seed)
        verdict, word = _verdict(evaluation, intervals, bootstrap)
        blocks += [Block("heading", "Verdict", level=3)] + [Block("paragraph", text) for text in verdict]
        blocks += [Block("heading", "Fairness metrics", level=3), _metrics_table(evaluation, intervals, bootstrap)]
        blocks.append(Block("figure", "Dice per image, by group: fraction of each group's images per Dice bin; "
                            "dashed lines mark the group means.", name=self._figure_name("dice"),
                            png=_figure_png(_dice_figure(evaluation))))

        self._check_stop()
        blocks += [Block("heading", "Downstream measurements", level=3)] + self._downstream_blocks()
        self._check_stop()
        blocks += [Block("heading", "Latent space", level=3)] + self._latent_blocks()
        return SectionResult(blocks, intervals, word)

    def _figure_name(self, kind: str) -> str:
        return f"figure-{self.index}-{kind}.png"

    def _check_stop(self) -> None:
        if self.should_stop():
            raise TrainingInterrupted("the report was cancelled before it was written")

    def _manifest(self) -> Path | None:
        if self.cohort is not None:
            return Path(self.cohort)
        stored = self.evaluation.metrics.get("cohort_manifest_path")
        return Path(stored) if stored else None

    def _downstream_blocks(self) -> list[Block]:
        from ApplePerturbLib.analysis.radiomics_errors import compute_error_table

        manifest = self._manifest()
        if manifest is None:
            return [Block("paragraph", "Not computed: the ground-truth masks are needed. Run the report with "
                                       "--cohort MANIFEST, the cohort manifest of this evaluation.")]
        expected = self.evaluation.metrics.get("cohort_manifest")
        if expected and manifest.name != expected:
            logger.warning("Evaluation %s was run on manifest %s, but the report uses %s.",
                           self.evaluation.label, expected, manifest.name)

        def on_image(done: int, total: int) -> None:
            self.reporter.steps("measuring downstream errors", done, total)

        try:
            table = compute_error_table(self.evaluation.folder, manifest, self.should_stop, on_image)
        except FileNotFoundError as error:
            logger.warning("Downstream errors of %s not computed: %s", self.evaluation.label, error)
            return [Block("paragraph", f"Not computed: {error}")]
        return _downstream_report(table, self.evaluation.group_names, self._figure_name("downstream"))

    def _latent_blocks(self) -> list[Block]:
        from ApplePerturbLib.analysis.latent_space import analyse_latents, plot_latent_space

        evaluation = self.evaluation
        if evaluation.latents is None:
            return [Block("paragraph", f"Not computed: {LATENTS_FILE} is missing from the evaluation folder; "
                                       "evaluate again with a current version of apple-perturb.")]
        groups = [row.group for row in evaluation.rows]
        try:
            result = analyse_latents(evaluation.latents, groups, self.seed)
        except InvalidInputError as error:
            logger.warning("Latent-space scores of %s not computed: %s", evaluation.label, error)
            return [Block("paragraph", f"Not computed: {error}")]

        rows = [[name, f"{scores.davies_bouldin:.3f}", f"{scores.silhouette:.3f}"]
                for name, scores in result.separation.items()]
        text = ("Pooled latents: one C-dimensional vector per image, the encoder's latent f_o averaged over its "
                "spatial axes. A high silhouette score and a low Davies-Bouldin index mean the groups form separate "
                "clusters, so the latent carries information about the attribute.")
        if "f_p" in result.separation:
            text += (" f_p is the perturbed latent. A higher Davies-Bouldin index and a lower silhouette score for "
                     "f_p than for f_o mean the groups are harder to tell apart after APPLE.")
        blocks = [Block("paragraph", text),
                  Block("table", header=["latent", "Davies-Bouldin index", "silhouette score"], rows=rows)]
        if "f_p" in result.separation:
            before, after = result.separation["f_o"], result.separation["f_p"]
            less = after.davies_bouldin > before.davies_bouldin and after.silhouette < before.silhouette
            blocks.append(Block("paragraph", "Both scores indicate less group information after APPLE." if less else
                                "The two scores do not both indicate less group information after APPLE."))
        blocks.append(Block("figure", "t-SNE of the pooled latents, coloured by group (unknown group left out). "
                            "t-SNE axes have no unit.", name=self._figure_name("latents"),
                            png=_figure_png(plot_latent_space(result, evaluation.group_names))))
        return blocks


def _description(evaluation: Evaluation) -> list[str]:
    """Return the "what was compared" bullet items of an evaluation, without patient identifiers."""
    metrics = evaluation.metrics
    metadata = evaluation.perturber_metadata
    groups = evaluation.group_names
    items = [f"Segmentation model (backbone): {metrics.get('backbone', 'unknown')}."]
    if evaluation.has_apple:
        perturber = Path(metrics["perturber"]).name if metrics.get("perturber") else "unknown file"
        items.append(
            f"APPLE perturber {perturber}, trained to hide the attribute {metadata.get('attribute', 'unknown')} "
            f"with alpha {metadata.get('alpha', 'n/a')}, beta {metadata.get('beta', 'n/a')}, "
            f"{metadata.get('epochs', 'n/a')} epochs, seed {metadata.get('seed', 'n/a')}, "
            f"on {metadata.get('train_images', 'n/a')} training images."
        )
    else:
        items.append("No perturber: only the base model was evaluated.")

    split = metrics.get("split_settings") or {}
    items.append(
        f"Cohort manifest {metrics.get('cohort_manifest', 'unknown')}, {metrics.get('split', 'unknown')} split "
        f"(case-level, {split.get('test_fraction', 'n/a')} of the cases in the test split, "
        f"stratified by {split.get('split_by', 'n/a')}, split seed {split.get('split_seed', 'n/a')})."
    )
    counts = _group_counts(evaluation.rows, groups)
    listed = "; ".join(f"{name}: {images} images of {cases} cases" for name, (images, cases) in counts.items())
    items.append(f"Groups by {metrics.get('attribute', 'unknown')}: {listed}.")
    skipped = metrics.get("skipped_empty_masks")
    if skipped:
        items.append(f"{skipped} images with an empty ground-truth mask were not evaluated.")
    return items
