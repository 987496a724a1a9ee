"""Tests of ``apple-perturb report`` on evaluation folders written with the library's own writers."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ApplePerturbLib import cli
from ApplePerturbLib.analysis.uncertainty import aggregate_seeds, format_mean_std
from ApplePerturbLib.cohort import CohortRecord, write_manifest
from ApplePerturbLib.errors import InvalidInputError, TrainingInterrupted
from ApplePerturbLib.evaluate import ImageResult, write_evaluation
from ApplePerturbLib.imageio import write_mask
from ApplePerturbLib.metrics import dice_score, fairness_metrics
from ApplePerturbLib.report import write_report

SHAPE = (40, 48)
SECTION_HEADINGS = ("What was compared", "Verdict", "Fairness metrics", "Downstream measurements", "Latent space")


def _disk(row: int, column: int, radius: int) -> np.ndarray:
    rows, columns = np.mgrid[: SHAPE[0], : SHAPE[1]]
    return (rows - row) ** 2 + (columns - column) ** 2 <= radius * radius


def _write_cohort(folder: Path, n_cases: int) -> tuple[Path, list[CohortRecord]]:
    """Write one grey PNG image with a dark round lesion and its mask per case, and the manifest."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for case in range(n_cases):
        truth = _disk(20, 24, 9)
        grey = rng.integers(90, 200, SHAPE).astype(np.uint8)
        grey[truth] //= 3
        image, mask = folder / "images" / f"case{case}.png", folder / "images" / f"case{case}_mask.png"
        Image.fromarray(grey).save(image)
        write_mask(mask, truth)
        records.append(CohortRecord(image, mask, f"c{case}", "F" if case % 2 == 0 else "M", 30.0 + case, (0.4, 0.4)))
    manifest = folder / "manifest.csv"
    write_manifest(manifest, records)
    return manifest, records


def _write_evaluation(folder: Path, records: list[CohortRecord], seed: int = 0, apple_shift: int | None = 2,
                      with_latents: bool = True) -> Path:
    """Write per_image.csv, metrics.json, latents.npz and masks as ``apple-perturb evaluate`` does.

    Base masks are shifted by 1 px for female and 5 px for male cases (a
    Dice gap); APPLE masks by ``apple_shift`` px for everyone (no gap).
    ``apple_shift=None`` writes a base-only evaluation.
    """
    rng = np.random.default_rng(seed)
    results, pooled, pooled_perturbed = [], [], []
    for record in records:
        truth = _disk(20, 24, 9)
        female = record.sex == "F"
        base = _disk(20, 24 + (1 if female else 5) + int(rng.integers(0, 2)), 9)
        write_mask(folder / "masks" / "base" / f"{record.image.stem}.png", base)
        apple = None
        if apple_shift is not None:
            apple = _disk(20, 24 + apple_shift + int(rng.integers(0, 2)), 9)
            write_mask(folder / "masks" / "apple" / f"{record.image.stem}.png", apple)
        results.append(ImageResult(record.image.name, record.case_id, "female" if female else "male",
                                   dice_score(base, truth), None if apple is None else dice_score(apple, truth)))
        pooled.append(rng.normal(3.0 if female else -3.0, 1.0, 8))
        pooled_perturbed.append(rng.normal(0.0, 1.0, 8))

    groups = [r.group for r in results]
    names = ["female", "male"]
    with_apple = apple_shift is not None
    metrics = {
        "base": fairness_metrics([r.dice_base for r in results], groups, names),
        "apple": fairness_metrics([r.dice_apple for r in results], groups, names) if with_apple else None,
        "skipped_empty_masks": 0, "attribute": "sex", "split": "test",
        "split_settings": {"split_by": "sex", "test_fraction": 0.3, "split_seed": 0, "age_threshold": 50.0},
        "backbone": "litemedsam", "perturber": "/models/perturber-sex.safetensors" if with_apple else None,
        "perturber_metadata": {"attribute": "sex", "groups": names, "alpha": 1.0, "beta": 0.5, "epochs": 10,
                               "seed": seed, "train_images": 80} if with_apple else None,
        "cohort_manifest": "manifest.csv", "seconds": 1.0,
    }
    latents = {"f_o": np.stack(pooled), "f_p": np.stack(pooled_perturbed) if with_apple else None}
    write_evaluation(folder, results, metrics, latents if with_latents else None)
    return folder


@pytest.fixture()
def cohort(tmp_path):
    return _write_cohort(tmp_path / "cohort", n_cases=12)


def _embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_has_every_section(tmp_path, cohort):
    manifest, records = cohort
    evaluation = _write_evaluation(tmp_path / "eval", records)

    html_path = write_report([evaluation], tmp_path / "report", manifest, n_bootstrap=200)

    page = html_path.read_text(encoding="utf-8")
    markdown = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    for heading in SECTION_HEADINGS:
        assert f"<h3>{heading}</h3>" in page
        assert f"### {heading}" in markdown
    assert "litemedsam" in page
    assert "perturber-sex.safetensors" in page
    assert "alpha 1.0, beta 0.5, 10 epochs" in page
    assert "test split" in page
    assert "95% interval" in page
    assert "Lesion area (mm^2)" in page
    assert "JSD" in page
    assert "Davies-Bouldin" in page
    assert "How to read this report" in page
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert f"{metrics['base']['dsc_delta']:.3f}" in page
    assert f"{metrics['apple']['dsc_delta']:.3f}" in page


def test_html_is_self_contained(tmp_path, cohort):
    manifest, records = cohort
    evaluation = _write_evaluation(tmp_path / "eval", records)

    page = write_report([evaluation], tmp_path / "report", manifest, n_bootstrap=50).read_text(encoding="utf-8")

    pictures = _embedded_pngs(page)
    text = re.sub(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', 'src=""', page)
    assert "http" not in text.lower()  # base64 data may spell it by chance, so it is removed first
    assert "<link" not in text
    assert "<script" not in text
    assert "url(" not in text
    assert text.count('src=""') == len(pictures)
    assert len(pictures) == 3  # Dice, downstream errors, latent space
    for picture in pictures:
        with Image.open(io.BytesIO(picture)) as image:
            assert image.format == "PNG"
            assert image.width >= 400


def test_markdown_figures_beside_report(tmp_path, cohort):
    manifest, records = cohort
    evaluation = _write_evaluation(tmp_path / "eval", records)

    write_report([evaluation], tmp_path / "report", manifest, n_bootstrap=50)

    markdown = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert linked == ["figure-1-dice.png", "figure-1-downstream.png", "figure-1-latents.png"]
    for name in linked:
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "report").glob(".*tmp-*"))


def test_gap_closed_is_called_fairer(tmp_path):
    manifest, records = _write_cohort(tmp_path / "cohort", n_cases=24)
    evaluation = _write_evaluation(tmp_path / "eval", records, with_latents=False)

    markdown = _verdict_text(write_report([evaluation], tmp_path / "report", manifest, n_bootstrap=300))

    assert markdown.startswith("Fairer.")
    assert "The whole interval lies below zero" in markdown


def test_unchanged_model_is_inconclusive(tmp_path, cohort):
    manifest, records = cohort
    evaluation = _write_evaluation(tmp_path / "eval", records, with_latents=False)
    # APPLE masks identical to the base masks: every paired difference is exactly 0.
    table = evaluation / "per_image.csv"
    lines = table.read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    table.write_text("\n".join([lines[0]] + [",".join(row[:4] + [row[3]]) for row in rows]) + "\n")
    metrics = json.loads((evaluation / "metrics.json").read_text())
    metrics["apple"] = metrics["base"]
    (evaluation / "metrics.json").write_text(json.dumps(metrics))

    verdict = _verdict_text(write_report([evaluation], tmp_path / "report", manifest, n_bootstrap=200))

    assert verdict.startswith("Inconclusive for fairness.")
    assert "interval includes zero" in verdict
    assert "Fairer" not in verdict


def test_widened_gap_is_less_fair(tmp_path):
    manifest, records = _write_cohort(tmp_path / "cohort", n_cases=24)
    evaluation = _write_evaluation(tmp_path / "eval", records, with_latents=False)
    # Swapping the two Dice columns turns the closed gap into a widened one.
    table = evaluation / "per_image.csv"
    lines = table.read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    table.write_text("\n".join([lines[0]] + [",".join(row[:3] + [row[4], row[3]]) for row in rows]) + "\n")
    metrics = json.loads((evaluation / "metrics.json").read_text())
    metrics["base"], metrics["apple"] = metrics["apple"], metrics["base"]
    (evaluation / "metrics.json").write_text(json.dumps(metrics))

    verdict = _verdict_text(write_report([evaluation], tmp_path / "report", manifest, n_bootstrap=300))

    assert verdict.startswith("Less fair.")
    assert "The whole interval lies above zero" in verdict


def test_single_group_not_judged(tmp_path, cohort):
    manifest, records = cohort
    female = [record for record in records if record.sex == "F"]
    evaluation = _write_evaluation(tmp_path / "eval", female)

    markdown = write_report([evaluation], tmp_path / "report", manifest, n_bootstrap=50).with_name(
        "report.md").read_text(encoding="utf-8")

    assert "Fairness could not be judged: fewer than two sex groups have images" in markdown
    assert "Fairer" not in markdown
    assert "Not computed: the latent scores need images of at least 2 groups" in markdown


def test_no_bootstrap_judges_nothing(tmp_path, cohort):
    manifest, records = cohort
    evaluation = _write_evaluation(tmp_path / "eval", records, with_latents=False)

    verdict = _verdict_text(write_report([evaluation], tmp_path / "report", manifest, n_bootstrap=0))

    assert verdict.startswith("No confidence intervals were computed")
    assert "Fairer" not in verdict


def _verdict_text(html_path: Path) -> str:
    """Return the Markdown between the first Verdict heading and the next heading."""
    markdown = html_path.with_name("report.md").read_text(encoding="utf-8")
    return markdown.split("### Verdict\n\n", 1)[1].split("\n### ", 1)[0]


def test_seed_runs_aggregated(tmp_path, cohort):
    manifest, records = cohort
    folders = [_write_evaluation(tmp_path / f"seed{seed}" / "eval", records, seed=seed, with_latents=False)
               for seed in (0, 1, 2)]

    write_report(folders, tmp_path / "report", manifest, n_bootstrap=50)

    markdown = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "## Summary" in markdown
    assert "Mean (std) over seeds 0, 1, 2: litemedsam, attribute sex" in markdown
    for index, label in enumerate(("seed0/eval", "seed1/eval", "seed2/eval"), start=1):
        assert f"## {index}. Evaluation {label}" in markdown
    apple = aggregate_seeds([json.loads((folder / "metrics.json").read_text())["apple"] for folder in folders])
    assert f"| DSC_delta (largest minus smallest group Dice) | " in markdown
    assert format_mean_std(apple["dsc_delta"]) in markdown


def test_different_settings_not_aggregated(tmp_path, cohort):
    manifest, records = cohort
    first = _write_evaluation(tmp_path / "sex", records, seed=0, with_latents=False)
    second = _write_evaluation(tmp_path / "age", records, seed=1, with_latents=False)
    metrics = json.loads((second / "metrics.json").read_text())
    metrics["perturber_metadata"]["beta"] = 5.0
    (second / "metrics.json").write_text(json.dumps(metrics))

    write_report([first, second], tmp_path / "report", manifest, n_bootstrap=50)

    markdown = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "## Summary" in markdown
    assert "Mean (std) over seeds" not in markdown


def test_missing_inputs_explained(tmp_path, cohort):
    _, records = cohort
    evaluation = _write_evaluation(tmp_path / "eval", records, with_latents=False)

    write_report([evaluation], tmp_path / "report", cohort=None, n_bootstrap=50)

    markdown = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "Not computed: the ground-truth masks are needed" in markdown
    assert "--cohort MANIFEST" in markdown
    assert "Not computed: latents.npz is missing" in markdown


def test_stored_manifest_path_used(tmp_path, cohort):
    manifest, records = cohort
    evaluation = _write_evaluation(tmp_path / "eval", records, with_latents=False)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    metrics["cohort_manifest_path"] = str(manifest.resolve())
    (evaluation / "metrics.json").write_text(json.dumps(metrics))

    write_report([evaluation], tmp_path / "report", cohort=None, n_bootstrap=50)

    markdown = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "Lesion perimeter (mm)" in markdown


def test_base_only_evaluation(tmp_path, cohort):
    manifest, records = cohort
    evaluation = _write_evaluation(tmp_path / "eval", records, apple_shift=None)

    page = write_report([evaluation], tmp_path / "report", manifest, n_bootstrap=50).read_text(encoding="utf-8")

    assert "Only the base model was evaluated" in page
    assert "with APPLE" not in page
    assert len(_embedded_pngs(page)) == 3


def test_invalid_folder_writes_nothing(tmp_path, cohort):
    _, records = cohort
    good = _write_evaluation(tmp_path / "good", records, with_latents=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")

    with pytest.raises(InvalidInputError, match="not valid JSON"):
        write_report([good, broken], tmp_path / "report", n_bootstrap=10)
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        write_report([tmp_path / "absent"], tmp_path / "report", n_bootstrap=10)
    assert not (tmp_path / "report" / "report.html").exists()


def test_cancel_writes_nothing(tmp_path, cohort):
    manifest, records = cohort
    evaluation = _write_evaluation(tmp_path / "eval", records, with_latents=False)

    with pytest.raises(TrainingInterrupted):
        write_report([evaluation], tmp_path / "report", manifest, n_bootstrap=10, should_stop=lambda: True)
    assert not (tmp_path / "report" / "report.html").exists()


def test_report_command_line(tmp_path, cohort, monkeypatch, capsys):
    manifest, records = cohort
    evaluation = _write_evaluation(tmp_path / "eval", records, with_latents=False)
    monkeypatch.setattr(cli, "EXTRA_COMMAND_MODULES", ("ApplePerturbLib.report",))

    status = cli.main(["report", str(evaluation), "--out", str(tmp_path / "report"), "--cohort", str(manifest),
                       "--bootstrap", "40", "--progress", "none"])
    failed = cli.main(["report", str(tmp_path / "absent"), "--out", str(tmp_path / "other"), "--progress", "none"])

    assert status == 0
    assert (tmp_path / "report" / "report.html").is_file()
    assert "wrote" in capsys.readouterr().out
    assert failed == 1
    assert not (tmp_path / "other" / "report.html").exists()


def test_negative_bootstrap_rejected(tmp_path, cohort):
    _, records = cohort
    evaluation = _write_evaluation(tmp_path / "eval", records, with_latents=False)

    with pytest.raises(InvalidInputError, match="--bootstrap"):
        write_report([evaluation], tmp_path / "report", n_bootstrap=-1)
