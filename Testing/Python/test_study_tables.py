"""scripts/study_tables.py: mean (std) over seeds and the step-time table, on a generated study folder."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from ApplePerturbLib.metrics import fairness_metrics

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "study_tables.py"


@pytest.fixture(scope="module")
def study_tables():
    spec = importlib.util.spec_from_file_location("study_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metrics(female: list[float], male: list[float]) -> dict:
    return fairness_metrics(female + male, ["female"] * len(female) + ["male"] * len(male), ["female", "male"])


def _write(folder: Path, name: str, content: dict) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "metrics.json").write_text(json.dumps(content))


@pytest.fixture()
def study(tmp_path):
    """Two seeds of a U-Net with base/APPLE, FEBS and InD for sex, with known group Dice values."""
    for seed, shift in ((0, 0.0), (1, 0.1)):
        folder = tmp_path / f"seed{seed}"
        base, apple = _metrics([0.8, 0.8], [0.6 + shift, 0.6 + shift]), _metrics([0.8, 0.8], [0.7 + shift, 0.7])
        _write(folder, "eval-unet-sex-apple", {"base": base, "apple": apple})
        _write(folder, "eval-unet-sex-febs", {"base": _metrics([0.7], [0.7])})
        _write(folder, "eval-unet-sex-ind", {"base": base, "apple": _metrics([0.9], [0.5])})
    (tmp_path / "step_seconds.tsv").write_text("unet-base-s0\t100\nunet-base-s1\t140\nunet-sex-apple-s0\t30\n")
    return tmp_path


def test_delta_cells_are_mean_and_std(study_tables, study):
    table = study_tables.fairness_table(study, "sex")
    rows = {line.split(" | ")[1]: line for line in table.splitlines()[2:]}
    deltas = [0.2, 0.1]
    expected = f"{np.mean(deltas):.3f} ({np.std(deltas, ddof=1):.3f})"
    assert expected in rows["base"]
    assert "0.000 (0.000)" in rows["+FEBS"]
    assert "0.400 (0.000)" in rows["+InD"]


def test_rows_only_for_present_methods(study_tables, study):
    table = study_tables.fairness_table(study, "sex")
    assert len(table.splitlines()) == 2 + 4
    assert "LiteMedSAM" not in table
    assert study_tables.fairness_table(study, "age").count("\n") == 1


def test_step_times_grouped_without_seed(study_tables, study):
    table = study_tables.times_table(study)
    assert "| U-Net base | 2 | 120 | 240 |" in table
    assert "| U-Net sex-apple | 1 | 30 | 30 |" in table
    assert "**270**" in table


def test_main_rejects_missing_folder(study_tables, tmp_path, capsys):
    assert study_tables.main([str(tmp_path / "absent")]) == 2
    assert "Usage" in capsys.readouterr().err


def test_figure_written(study_tables, study, tmp_path):
    from PIL import Image

    path = tmp_path / "figures" / "study.png"
    assert study_tables.main([str(study), "--figure", str(path)]) == 0
    with Image.open(path) as image:
        assert image.size[0] > 600
    assert not list(path.parent.glob("*.partial.png"))
