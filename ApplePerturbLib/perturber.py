"""Perturber checkpoints: one safetensors file with JSON metadata.

The file contains the generator's and discriminator's tensors and, in the
safetensors header, the metadata a user needs to trust it: the backbone and
a SHA-256 of the weights it was trained against, the latent shape, the
attribute and its groups, the hyperparameters, the training cohort's group
counts (no patient identifiers) and the final losses. Reading it executes no
code. Writing goes through a temporary file, so an interrupted or failed
write leaves no partial checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ApplePerturbLib import __version__
from ApplePerturbLib.apple.networks import AttributeDiscriminator, PerturbationGenerator
from ApplePerturbLib.backbones.base import Backbone
from ApplePerturbLib.checkpoint_files import read_safetensors_metadata, write_tagged_safetensors
from ApplePerturbLib.errors import CheckpointError, PerturberMismatchError

PERTURBER_FORMAT = "apple-perturb-perturber"
PERTURBER_FORMAT_VERSION = 1


@dataclass
class Perturber:
    """A trained ``G_p`` (and its ``D_p``) with the metadata of its training run."""

    generator: PerturbationGenerator
    discriminator: AttributeDiscriminator
    metadata: dict

    @torch.no_grad()
    def perturb(self, latent: torch.Tensor) -> torch.Tensor:
        """Return ``f_p = f_o + G_p(f_o)`` for a BxCxhxw latent."""
        return latent + self.generator(latent)


def save_perturber(path: str | Path, generator: PerturbationGenerator, discriminator: AttributeDiscriminator,
                   backbone: Backbone, metadata: dict) -> None:
    """Write a perturber checkpoint atomically.

    ``metadata`` is completed with the format tag, the library version, the
    backbone's name, weights hash and latent shape.
    """
    full = {
        "format": PERTURBER_FORMAT,
        "format_version": PERTURBER_FORMAT_VERSION,
        "library_version": __version__,
        "backbone": backbone.name,
        "backbone_sha256": backbone.weights_sha256,
        "latent_shape": list(backbone.latent_shape),
        **metadata,
    }
    tensors = {f"generator.{k}": v for k, v in generator.state_dict().items()}
    tensors.update({f"discriminator.{k}": v for k, v in discriminator.state_dict().items()})
    write_tagged_safetensors(path, tensors, full)


def read_perturber_metadata(path: str | Path) -> dict:
    """Return a perturber file's metadata without loading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"perturber file {path} not found; train one with 'apple-perturb train'.")
    return read_safetensors_metadata(path, PERTURBER_FORMAT, hint="give a file written by 'apple-perturb train'")


def load_perturber(path: str | Path, backbone: Backbone) -> Perturber:
    """Load a perturber for ``backbone``, rejecting one trained for another backbone or latent shape."""
    metadata = read_perturber_metadata(path)
    check_compatible(metadata, backbone, path)
    tensors = load_file(str(path))
    channels = backbone.latent_shape[0]
    generator = PerturbationGenerator(channels)
    discriminator = AttributeDiscriminator(channels, len(metadata["groups"]))
    generator.load_state_dict({k.removeprefix("generator."): v for k, v in tensors.items() if k.startswith("generator.")})
    discriminator.load_state_dict({k.removeprefix("discriminator."): v for k, v in tensors.items() if k.startswith("discriminator.")})
    generator.to(backbone.device).eval()
    discriminator.to(backbone.device).eval()
    return Perturber(generator, discriminator, metadata)


def check_compatible(metadata: dict, backbone: Backbone, path: str | Path) -> None:
    """Raise ``PerturberMismatchError`` naming both sides when the perturber does not fit the backbone."""
    trained_shape = tuple(metadata.get("latent_shape", ()))
    if metadata.get("backbone") != backbone.name or trained_shape != tuple(backbone.latent_shape):
        raise PerturberMismatchError(
            f"perturber {path} was trained for backbone '{metadata.get('backbone')}' with latent shape "
            f"{trained_shape}, but the backbone in use is '{backbone.name}' with latent shape "
            f"{tuple(backbone.latent_shape)}; choose a perturber trained for '{backbone.name}'."
        )
    if metadata.get("backbone_sha256") and metadata["backbone_sha256"] != backbone.weights_sha256:
        raise PerturberMismatchError(
            f"perturber {path} was trained against '{backbone.name}' weights with SHA-256 "
            f"{metadata['backbone_sha256'][:12]}..., but the loaded weights have "
            f"{backbone.weights_sha256[:12]}...; use the weights file it was trained with or retrain."
        )
