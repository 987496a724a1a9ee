"""Print Markdown base-vs-APPLE tables for evaluation folders written by ``apple-perturb evaluate``.

Usage: python scripts/results_tables.py EVAL_DIR [EVAL_DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cell(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(folder: Path) -> str:
    metrics = json.loads((folder / "metrics.json").read_text())
    base, apple = metrics["base"], metrics["apple"]
    settings = metrics.get("perturber_metadata") or {}
    lines = [
        f"**{metrics['backbone']}, attribute {metrics['attribute']}** ({folder.name}; alpha {settings.get('alpha')}, "
        f"beta {settings.get('beta')}, {settings.get('epochs')} epochs, {base['n_images']} test images)",
        "",
        "| metric | base | APPLE | change |",
        "|---|---|---|---|",
    ]
    rows = [("Dice, all images", "dsc_overall")]
    rows += [(f"Dice, {name} (n={group['n']})", ("groups", name)) for name, group in base["groups"].items()]
    rows += [("DSC_mean (mean of groups)", "dsc_mean"), ("DSC_delta (lower is fairer)", "dsc_delta"),
             ("DSC_std, ddof=1 (lower is fairer)", "dsc_std"), ("DSC_skew (lower is fairer)", "dsc_skew"),
             ("ES-Dice (higher is better)", "es_dice")]
    for label, key in rows:
        if isinstance(key, tuple):
            before, after = base["groups"][key[1]]["dsc"], apple["groups"][key[1]]["dsc"]
        else:
            before, after = base[key], apple[key]
        change = None if before is None or after is None else after - before
        lines.append(f"| {label} | {cell(before)} | {cell(after)} | {'n/a' if change is None else f'{change:+.3f}'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(table(Path(folder)) for folder in sys.argv[1:]))
