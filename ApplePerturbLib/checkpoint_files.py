"""Safetensors files with ApplePerturb's JSON metadata: trained backbones and perturbers.

Reading such a file executes no code. The JSON sits in the safetensors
header under the key ``apple_perturb`` and always has a ``format`` tag, so a
file of the wrong kind is rejected with a message that names both kinds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ApplePerturbLib.errors import CheckpointError
from ApplePerturbLib.imageio import atomic_output

METADATA_KEY = "apple_perturb"


def write_tagged_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Write CPU copies of ``tensors`` and the JSON ``metadata`` to ``path`` atomically."""
    tensors = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    with atomic_output(path) as temporary:
        save_file(tensors, str(temporary), metadata={METADATA_KEY: json.dumps(metadata)})


def read_safetensors_metadata(path: Path, expected_format: str, hint: str) -> dict:
    """Read the JSON metadata of an ApplePerturb safetensors file and check its format tag."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a safetensors file ({error}); {hint}.") from error
    if raw is None:
        raise CheckpointError(f"{path} has no ApplePerturb metadata, so it was not written by this tool; {hint}.")
    metadata = json.loads(raw)
    if metadata.get("format") != expected_format:
        raise CheckpointError(
            f"{path} is a '{metadata.get('format')}' file, not a '{expected_format}' file; {hint}."
        )
    return metadata
