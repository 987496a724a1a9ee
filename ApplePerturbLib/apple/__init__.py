"""APPLE: the perturbation generator, the attribute discriminator, their losses and training."""
