"""ApplePerturb: fairer ultrasound lesion segmentation through latent perturbations.

Implements APPLE (Xu et al., "Fair ultrasound diagnosis via adversarial
protected attribute aware perturbations on latent embeddings", npj Digital
Medicine 8, 2025, doi:10.1038/s41746-025-01641-y): a small generator adds a
learned perturbation to a frozen segmentation encoder's latent so that a
discriminator can no longer predict the patient's group, while a Dice-CE term
keeps the mask accurate. The segmentation model's weights never change.

Heavy modules (torch, segment-anything) are imported by the submodules that
need them, so ``import ApplePerturbLib`` stays cheap inside 3D Slicer.
"""

__version__ = "0.1.0"
