"""Loading of ``apple-perturb evaluate`` folders: metrics.json, per_image.csv and latents.npz."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ApplePerturbLib.analysis import PerImageRow, read_per_image
from ApplePerturbLib.errors import InvalidInputError

METRICS_FILE = "metrics.json"
LATENTS_FILE = "latents.npz"


@dataclass
class Evaluation:
    """One ``apple-perturb evaluate`` folder: its metrics.json, per-image rows and pooled latents."""

    folder: Path
    label: str
    metrics: dict
    rows: list[PerImageRow]
    latents: dict[str, np.ndarray] | None

    @property
    def has_apple(self) -> bool:
        return self.metrics.get("apple") is not None

    @property
    def group_names(self) -> list[str]:
        return list(self.metrics["base"].get("groups", {}))

    @property
    def perturber_metadata(self) -> dict:
        return self.metrics.get("perturber_metadata") or {}


def load_evaluation(folder: str | Path, label: str | None = None) -> Evaluation:
    """Read an evaluation folder's metrics.json, per_image.csv and (when present) latents.npz.

    Raises:
        FileNotFoundError: the folder or metrics.json does not exist.
        InvalidInputError: metrics.json is not an evaluation's, or the files disagree.
    """
    folder = Path(folder)
    metrics_path = folder / METRICS_FILE
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} not found; pass folders written by 'apple-perturb evaluate --out'.")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInputError(f"{metrics_path} is not valid JSON ({error}); run the evaluation again.") from error
    if not isinstance(metrics, dict) or not isinstance(metrics.get("base"), dict):
        raise InvalidInputError(f"{metrics_path} has no 'base' metrics; it is not written by 'apple-perturb evaluate'.")

    rows = read_per_image(folder)
    if (metrics.get("apple") is not None) != (rows[0].dice_apple is not None):
        raise InvalidInputError(f"{folder}: metrics.json and per_image.csv disagree on whether APPLE was evaluated.")
    return Evaluation(folder, label or folder.name, metrics, rows, _read_latents(folder / LATENTS_FILE, len(rows)))


def _read_latents(path: Path, n_rows: int) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as archive:
        latents = {name: archive[name] for name in ("f_o", "f_p") if name in archive.files}
    for name, array in latents.items():
        if array.ndim != 2 or array.shape[0] != n_rows:
            raise InvalidInputError(
                f"{path}: array '{name}' has shape {array.shape}, expected {n_rows} rows (one per image of per_image.csv)."
            )
    return latents if "f_o" in latents else None


def _unique_labels(folders: Sequence[Path]) -> list[str]:
    """Return each folder's name, or parent/name where two folders share a name."""
    names = [folder.resolve().name for folder in folders]
    return [f"{folder.resolve().parent.name}/{name}" if names.count(name) > 1 else name
            for folder, name in zip(folders, names)]


def _group_counts(rows: Sequence[PerImageRow], groups: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Return {group: (images, cases)} for every group and "unknown" when present."""
    counts = {}
    for name in list(groups) + [None]:
        selected = [row for row in rows if row.group == name]
        if selected or name is not None:
            counts[name or "unknown"] = (len(selected), len({row.case_id for row in selected}))
    return counts
