"""G_p, D_p, the APPLE losses and one adversarial training step."""

import copy

import numpy as np
import pytest
import torch

from ApplePerturbLib.apple.losses import fairness_loss, prediction_entropy, segmentation_loss
from ApplePerturbLib.apple.networks import AttributeDiscriminator, PerturbationGenerator
from ApplePerturbLib.apple.trainer import TrainingConfig, train_perturber
from ApplePerturbLib.backbones.unet import UNetBackbone
from ApplePerturbLib.latents import LatentSample


@pytest.mark.parametrize("shape", [(256, 64, 64), (32, 16, 16), (8, 7, 5), (4, 3, 3), (16, 1, 1), (8, 33, 17)])
def test_generator_keeps_latent_shape(shape):
    generator = PerturbationGenerator(shape[0]).train()
    latent = torch.randn(2, *shape)
    assert generator(latent).shape == latent.shape


def test_generator_starts_at_zero_perturbation():
    generator = PerturbationGenerator(32)
    assert torch.count_nonzero(generator(torch.randn(2, 32, 16, 16))) == 0


@pytest.mark.parametrize("num_classes", [2, 3])
def test_discriminator_outputs_one_logit_per_class(num_classes):
    discriminator = AttributeDiscriminator(32, num_classes)
    assert discriminator(torch.randn(4, 32, 16, 16)).shape == (4, num_classes)


def test_fairness_loss_falls_as_discriminator_gets_unsure():
    attribute = torch.tensor([0, 1, 0, 1])
    confident = torch.tensor([[6.0, -6.0], [-6.0, 6.0]] * 2)
    unsure = torch.tensor([[0.2, -0.2], [-0.2, 0.2]] * 2)
    uniform = torch.zeros(4, 2)
    losses = [float(fairness_loss(logits, attribute, alpha=1.0)) for logits in (confident, unsure, uniform)]
    assert losses[0] > losses[1] > losses[2]


def test_entropy_of_uniform_prediction_is_log_k():
    assert float(prediction_entropy(torch.zeros(3, 4))) == pytest.approx(np.log(4))


def test_segmentation_loss_is_small_for_right_mask():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    right = (target * 2 - 1) * 20
    wrong = -right
    assert float(segmentation_loss(right, target)) < 0.01
    assert float(segmentation_loss(wrong, target)) > 0.9


def _samples(backbone, count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(count):
        pixels = torch.rand(1, 3, 64, 64, generator=generator) * 255
        encoded = backbone.encode(backbone.normalize(pixels))
        target = torch.zeros(1, 64, 64)
        target[:, 16:40, 20:44] = 1
        samples.append(LatentSample(encoded.latent[0].half(), [c[0].half() for c in encoded.context],
                                    torch.zeros(0, 4), target.half(), record=None))
    return samples


def test_training_step_changes_perturber_not_backbone():
    torch.manual_seed(0)
    backbone = UNetBackbone(features=(4, 4, 8, 8, 16, 4), input_size=64).freeze()
    before = copy.deepcopy(backbone.state_dict())
    samples = _samples(backbone, 4)
    config = TrainingConfig(epochs=1, batch_size=4, lr_generator=1e-2, lr_discriminator=1e-2)
    result = train_perturber(backbone, samples, np.array([0, 1, 0, 1]), 2, config)

    torch.manual_seed(config.seed)  # the trainer's initial weights, rebuilt the same way
    generator_init = PerturbationGenerator(16)
    discriminator_init = AttributeDiscriminator(16, 2)
    assert any(not torch.equal(a, b) for a, b in zip(result.generator.parameters(), generator_init.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(result.discriminator.parameters(), discriminator_init.parameters()))
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), f"backbone tensor {key} changed"
    assert all(not p.requires_grad for p in backbone.parameters())


def test_training_is_reproducible_with_seed():
    backbone = UNetBackbone(features=(4, 4, 8, 8, 16, 4), input_size=64).freeze()
    samples = _samples(backbone, 4)
    config = TrainingConfig(epochs=2, batch_size=2, seed=5)
    first = train_perturber(backbone, samples, np.array([0, 1, 0, -1]), 2, config)
    second = train_perturber(backbone, samples, np.array([0, 1, 0, -1]), 2, config)
    for a, b in zip(first.generator.state_dict().values(), second.generator.state_dict().values()):
        assert torch.equal(a, b)
    assert first.history[-1].loss_g == second.history[-1].loss_g
