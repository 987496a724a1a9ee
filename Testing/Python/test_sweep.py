"""Beta sweep: one encoding per image, one perturber per beta, table, plot, resuming."""

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from ApplePerturbLib import cli
from ApplePerturbLib.apple.trainer import TrainingConfig
from ApplePerturbLib.backbones.unet import UNetBackbone, save_unet
from ApplePerturbLib.cohort import read_manifest
from ApplePerturbLib.errors import InvalidInputError
from ApplePerturbLib.progress import Reporter
from ApplePerturbLib.sweep import CSV_COLUMNS, run_folder, sweep_beta
from ApplePerturbLib.synthetic import make_synthetic_cohort
from ApplePerturbLib.workflows import CohortSplit

CONFIG = TrainingConfig(epochs=1, batch_size=4)
SPLIT = CohortSplit()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    manifest = make_synthetic_cohort(folder / "cohort", n_cases=8, seed=5, image_size=(64, 96))
    torch.manual_seed(0)
    checkpoint = folder / "unet.safetensors"
    save_unet(UNetBackbone(features=(4, 4, 8, 8, 16, 4), input_size=64), checkpoint)
    records = read_manifest(manifest)
    return {"manifest": manifest, "checkpoint": checkpoint, "images": len(records),
            "train": len(SPLIT.select(records, "train")), "test": len(SPLIT.select(records, "test"))}


@pytest.fixture
def encode_calls(monkeypatch):
    """Count images passed through the U-Net encoder."""
    calls = []
    original = UNetBackbone.encode

    def counting(self, pixels):
        calls.append(pixels.shape[0])
        return original(self, pixels)

    monkeypatch.setattr(UNetBackbone, "encode", counting)
    return calls


def _sweep(setup, out, betas, config=CONFIG, seeds=(0,)):
    return sweep_beta(setup["manifest"], "unet", setup["checkpoint"], "sex", out, betas, seeds, config, SPLIT,
                      Reporter(), cache_folder=None, device="cpu")


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def swept(setup, tmp_path_factory):
    """A finished sweep over betas 0.1 and 10, with the number of images the encoder saw."""
    out = tmp_path_factory.mktemp("swept")
    calls = []
    original = UNetBackbone.encode

    def counting(self, pixels):
        calls.append(pixels.shape[0])
        return original(self, pixels)

    UNetBackbone.encode = counting
    try:
        rows = _sweep(setup, out, [0.1, 10.0])
    finally:
        UNetBackbone.encode = original
    return {"out": out, "rows": rows, "encoded": sum(calls)}


def _copy(swept, tmp_path) -> Path:
    shutil.copytree(swept["out"], tmp_path / "sweep")
    return tmp_path / "sweep"


def test_sweep_encodes_each_image_once(setup, swept):
    assert swept["encoded"] == setup["images"]
    assert setup["train"] > 0
    assert setup["test"] > 0


def test_sweep_writes_runs_table_and_plot(setup, swept):
    out = swept["out"]
    table = _read_csv(out / "sweep.csv")
    assert [(float(r["beta"]), int(r["seed"])) for r in table] == [(0.1, 0), (10.0, 0)]
    assert tuple(table[0]) == CSV_COLUMNS
    for row in table:
        folder = out / row["folder"]
        assert folder == run_folder(out, float(row["beta"]), 0)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["perturber_metadata"]["beta"] == float(row["beta"])
        assert float(row["apple_dsc_overall"]) == pytest.approx(metrics["apple"]["dsc_overall"])
        assert float(row["base_dsc_delta"]) == pytest.approx(metrics["base"]["dsc_delta"])
        assert (folder / "perturber.safetensors").is_file()
        assert (folder / "per_image.csv").is_file()
        assert (folder / "latents.npz").is_file()
        assert metrics["apple"]["n_images"] == setup["test"]
    assert table[0]["base_dsc_overall"] == table[1]["base_dsc_overall"]
    assert len(swept["rows"]) == 2
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_betas_give_different_perturbers(swept):
    from safetensors.torch import load_file

    low = load_file(str(run_folder(swept["out"], 0.1, 0) / "perturber.safetensors"))
    high = load_file(str(run_folder(swept["out"], 10.0, 0) / "perturber.safetensors"))
    assert not torch.equal(low["generator.dec3.weight"], high["generator.dec3.weight"])


def test_sweep_resumes_and_skips_finished_runs(setup, swept, tmp_path, encode_calls):
    out = _copy(swept, tmp_path)
    finished = run_folder(out, 0.1, 0) / "metrics.json"
    stamp = finished.stat().st_mtime_ns

    _sweep(setup, out, [0.1, 1.0, 10.0])
    assert finished.stat().st_mtime_ns == stamp
    assert sum(encode_calls) == setup["images"]  # train once for beta 1, test once
    assert [float(r["beta"]) for r in _read_csv(out / "sweep.csv")] == [0.1, 1.0, 10.0]

    encode_calls.clear()
    _sweep(setup, out, [0.1, 1.0, 10.0])
    assert encode_calls == []


def test_sweep_reuses_trained_perturber(setup, swept, tmp_path, encode_calls):
    out = _copy(swept, tmp_path)
    perturber = run_folder(out, 10.0, 0) / "perturber.safetensors"
    stamp = perturber.stat().st_mtime_ns
    (run_folder(out, 10.0, 0) / "metrics.json").unlink()
    _sweep(setup, out, [0.1, 10.0])
    assert perturber.stat().st_mtime_ns == stamp
    assert sum(encode_calls) == setup["test"]
    assert (run_folder(out, 10.0, 0) / "metrics.json").is_file()


def test_sweep_rejects_run_with_other_settings(setup, swept):
    with pytest.raises(InvalidInputError, match="other settings"):
        _sweep(setup, swept["out"], [0.1], config=TrainingConfig(epochs=2, batch_size=4))


def test_sweep_seeds_give_rows_per_seed(setup, tmp_path):
    _sweep(setup, tmp_path, [1.0], seeds=(0, 1, 1))
    table = _read_csv(tmp_path / "sweep.csv")
    assert [(r["beta"], r["seed"]) for r in table] == [("1.0", "0"), ("1.0", "1")]


@pytest.mark.parametrize("betas", [[], [0.0], [-1.0], [math.nan]])
def test_sweep_rejects_invalid_betas(setup, tmp_path, betas):
    with pytest.raises(InvalidInputError, match="beta"):
        _sweep(setup, tmp_path, betas)


def test_sweep_cli(setup, tmp_path, capsys):
    code = cli.main(["sweep-beta", "--cohort", str(setup["manifest"]), "--backbone", "unet",
                     "--checkpoint", str(setup["checkpoint"]), "--attribute", "sex", "--out", str(tmp_path / "s"),
                     "--betas", "0.1", "10", "--epochs", "1", "--batch-size", "4", "--cache", str(tmp_path / "cache"),
                     "--device", "cpu", "--progress", "none"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "sweep.csv" in printed
    assert "sweep.png" in printed
    assert len(_read_csv(tmp_path / "s" / "sweep.csv")) == 2
    assert len(list((tmp_path / "cache" / "latents").glob("*.safetensors"))) == setup["train"]


def test_sweep_cached_evaluation_skips_encoder(setup, tmp_path, encode_calls):
    cache = tmp_path / "cache"
    sweep_beta(setup["manifest"], "unet", setup["checkpoint"], "sex", tmp_path / "first", [1.0], (0,), CONFIG, SPLIT,
               Reporter(), cache_folder=cache, device="cpu", cached_evaluation=True)
    assert sum(encode_calls) == setup["images"]
    encode_calls.clear()
    rows = sweep_beta(setup["manifest"], "unet", setup["checkpoint"], "sex", tmp_path / "second", [1.0], (0,),
                      CONFIG, SPLIT, Reporter(), cache_folder=cache, device="cpu", cached_evaluation=True)
    assert encode_calls == []
    assert rows[0]["apple_dsc_overall"] is not None


def test_sweep_cached_latents_need_cache(setup, tmp_path, capsys):
    code = cli.main(["sweep-beta", "--cohort", str(setup["manifest"]), "--backbone", "unet", "--checkpoint",
                     str(setup["checkpoint"]), "--attribute", "sex", "--out", str(tmp_path / "s"), "--no-cache",
                     "--cached-latents", "--progress", "none"])
    assert code == 1
    assert "--cached-latents needs the latent cache" in capsys.readouterr().err
