"""The distribution-matching gradient and its surrogate loss against closed forms."""

import torch

from gendistill.diffusion.gmm import GaussianMixture, GaussianMixtureDenoiser
from gendistill.diffusion.losses import denoising_loss, dm_gradient, surrogate_loss


def test_surrogate_loss_has_the_given_gradient():
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    grad = torch.randn(4, 3, 5, 5)
    surrogate_loss(x, grad, reduction="sum").backward()
    assert torch.allclose(x.grad, grad)
    x.grad = None
    surrogate_loss(x, grad).backward()
    assert torch.allclose(x.grad, grad / 4)


def test_real_equals_fake_gives_zero_gradient():
    x0, real = torch.randn(3, 8), torch.randn(3, 8)
    for weighting in ("dmd", "sds", "none"):
        assert torch.count_nonzero(dm_gradient(x0, real, real.clone(), torch.ones(3), weighting)) == 0


def test_sds_gradient_equals_its_closed_form():
    """SDS: w (eps_hat - eps) with w = 1 per unit; in x0 units (x0 - D(x)) / sigma."""
    g = torch.Generator().manual_seed(0)
    mixture = GaussianMixture(torch.tensor([1.0], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64),
                              torch.eye(2, dtype=torch.float64)[None])
    real = GaussianMixtureDenoiser(mixture)
    x0 = torch.randn(5, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 2, generator=g, dtype=torch.float64)
    sigma = torch.full((5,), 0.7, dtype=torch.float64)
    x = x0 + 0.7 * eps
    d = real(x, sigma)
    eps_hat = (x - d) / 0.7
    grad = dm_gradient(x0, d, x0, sigma, "sds")  # SDS: the fake x0 is the sample itself
    assert torch.allclose(grad, eps_hat - eps)
    # For a standard normal target, D(x) = x / (1 + sigma^2): the closed form of eps_hat.
    assert torch.allclose(d, x / (1 + 0.49))


def test_dmd_gradient_is_normalised_per_sample():
    x0 = torch.zeros(2, 4)
    real = torch.stack([torch.full((4,), 2.0), torch.full((4,), 0.5)])
    fake = torch.zeros(2, 4)
    grad = dm_gradient(x0, real, fake, weighting="dmd")
    assert torch.allclose(grad, torch.full((2, 4), -1.0), atol=1e-6)


def test_denoising_loss_is_zero_for_the_exact_denoiser_of_a_point_mass():
    mixture = GaussianMixture(torch.tensor([1.0], dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64),
                              1e-10 * torch.eye(2, dtype=torch.float64)[None])
    x0 = torch.ones(6, 2, dtype=torch.float64)
    noise = torch.randn(6, 2, dtype=torch.float64)
    sigma = torch.linspace(0.1, 5, 6, dtype=torch.float64)
    for weighting in ("x0", "eps", "v", "min_snr"):
        assert denoising_loss(GaussianMixtureDenoiser(mixture), x0, sigma, noise, weighting=weighting) < 1e-12
