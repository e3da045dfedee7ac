"""Image-conditioned SDS: the closed form of its gradient, its camera input, the reference-view wrapper."""

from dataclasses import dataclass

import pytest
import torch

from gendistill.diffusion.timesteps import TimestepRange
from gendistill.score.image_sds import ImageSDSConfig
from gendistill.score.reference_view import ReferenceViewLoss


class PointMassDenoiser(torch.nn.Module):
    """The exact denoiser of data concentrated on one point per condition: ``x0 = mean(cond)``, where the
    mean is the embedding's first value plus the camera's first value (zero embedding: camera alone)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, sigma, cond):
        self.seen.append(cond)
        return (cond.embeds[:, :1] + cond.camera[:, :1])[:, :, None, None].expand_as(x).clone()


@dataclass
class PointMassModel:
    """The parts of ImageCameraModel the guidance uses; images are their own latents."""

    net: PointMassDenoiser
    embed_dim: int = 3

    @property
    def train_sigmas(self):
        return torch.linspace(0.1, 10.0, 100, dtype=torch.float64)

    def denoiser(self):
        return self.net

    def encode(self, images):
        return images.float()


def test_the_gradient_is_w_times_eps_hat_minus_eps_with_cfg_against_the_zero_embedding():
    net = PointMassDenoiser()
    config = ImageSDSConfig(guidance_scale=4.0, timesteps=TimestepRange(0.3, 0.7))
    guidance = config.build(PointMassModel(net), torch.tensor([2.0, 0.0, 0.0]))
    images = torch.rand(3, 3, 4, 4, requires_grad=True)
    cameras = torch.zeros(3, 16)
    cameras[:, 0] = torch.tensor([0.0, 1.0, -1.0])
    out = guidance.gradient(images, ["", "", ""], 0, 10, torch.Generator().manual_seed(0), cameras)
    # x0_cfg = x0_null + s (x0_cond - x0_null) = camera + 4 * 2; SDS in x0 units: (x0 - x0_cfg) / sigma * w
    x0_cfg = (cameras[:, 0] + 8.0)[:, None, None, None]
    w = out.sigma**2 / (1 + out.sigma**2)
    expected = w[:, None, None, None] * (images.detach() - x0_cfg) / out.sigma[:, None, None, None]
    assert torch.allclose(out.grad, expected, atol=1e-5)
    out.loss.backward()
    assert torch.allclose(images.grad, expected / 3, atol=1e-5)  # the surrogate's gradient is grad / B
    both = net.seen[-1]
    assert torch.equal(both.camera, torch.cat([cameras, cameras]))  # each view's own camera, in both branches
    assert torch.equal(both.embeds[:3], torch.zeros(3, 3)) and torch.equal(both.embeds[3:, 0], torch.full((3,), 2.0))


def test_renders_that_are_the_guided_mean_get_no_gradient():
    guidance = ImageSDSConfig(guidance_scale=1.0).build(PointMassModel(PointMassDenoiser()), torch.tensor([0.5, 0, 0]))
    images = torch.full((2, 3, 4, 4), 0.5)
    out = guidance.gradient(images, ["", ""], 0, 10, torch.Generator().manual_seed(0), torch.zeros(2, 16))
    assert out.grad.abs().max() == 0


def test_the_guidance_needs_each_views_camera_and_an_embedding_of_the_teachers_width():
    model = PointMassModel(PointMassDenoiser())
    with pytest.raises(ValueError, match="embedding must be"):
        ImageSDSConfig().build(model, torch.zeros(5))
    guidance = ImageSDSConfig().build(model, torch.zeros(3))
    with pytest.raises(ValueError, match="camera features"):
        guidance.gradient(torch.rand(2, 3, 4, 4), ["", ""], 0, 10, torch.Generator().manual_seed(0), None)


def test_a_real_teachers_gradient_follows_the_embedding(tiny_teacher):
    from gendistill.backends.image_camera_model import ImageCameraModel

    model = ImageCameraModel.load(tiny_teacher)
    images, cameras = torch.rand(2, 3, 16, 16), torch.randn(2, 16)
    grads = []
    for embedding in (torch.ones(8), -torch.ones(8)):
        guidance = ImageSDSConfig(guidance_scale=5.0).build(model, embedding)
        grads.append(guidance.gradient(images, ["", ""], 0, 10, torch.Generator().manual_seed(0), cameras).grad)
    assert grads[0].shape == (2, 4, 8, 8) and (grads[0] - grads[1]).abs().amax() > 1e-3


def test_the_reference_view_loss_pulls_only_the_first_view_toward_the_image():
    net = PointMassDenoiser()
    inner = ImageSDSConfig(guidance_scale=1.0).build(PointMassModel(net), torch.zeros(3))
    target = torch.full((3, 4, 4), 0.25)
    wrapped = ReferenceViewLoss(inner, target, weight=10.0)
    images = torch.rand(3, 3, 4, 4, requires_grad=True)
    out = wrapped.gradient(images, ["", "", ""], 0, 10, torch.Generator().manual_seed(0), torch.zeros(3, 16))
    assert out.grad.shape[0] == 2 and net.seen[-1].camera.shape[0] == 2  # the SDS sees views 1 and 2 only
    out.loss.backward()
    l2_grad = 10.0 * 2 * (images[0].detach() - target) / target.numel()
    sds_only = inner.gradient(images.detach()[1:], ["", ""], 0, 10, torch.Generator().manual_seed(0),
                              torch.zeros(2, 16)).grad / 2
    assert torch.allclose(images.grad[0], l2_grad, atol=1e-6)
    assert torch.allclose(images.grad[1:], sds_only, atol=1e-6)
