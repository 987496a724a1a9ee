"""Choices of the module panel's combo boxes, stored by member name in the parameter node."""

import enum


class BackboneChoice(enum.Enum):
    """Segmentation backbones; the member name is the library's backbone name."""

    litemedsam = "LiteMedSAM (built-in weights)"
    medsam = "MedSAM (needs checkpoint)"
    sam_vit_b = "SAM ViT-B (needs checkpoint)"
    sam_vit_l = "SAM ViT-L (needs checkpoint)"
    sam_vit_h = "SAM ViT-H (needs checkpoint)"
    unet = "U-Net (checkpoint from train-base)"
    transunet = "TransUNet (checkpoint from train-base)"

    def label(self) -> str:
        return self.value

    @property
    def requires_box(self) -> bool:
        """Whether the backbone needs a box prompt (SAM family) or segments the whole image (U-Net, TransUNet)."""
        return self not in (BackboneChoice.unet, BackboneChoice.transunet)


class DeviceChoice(enum.Enum):
    """Torch device choices; the member name is the torch device name ("auto" picks one)."""

    auto = "Automatic (CUDA, MPS, CPU)"
    cuda = "CUDA GPU"
    mps = "Apple MPS"
    cpu = "CPU"

    def label(self) -> str:
        return self.value


class ProtectedAttribute(enum.Enum):
    """Patient attribute whose groups the perturber is trained to make indistinguishable."""

    sex = "Sex (female / male)"
    age = "Age (below / from the threshold)"

    def label(self) -> str:
        return self.value
