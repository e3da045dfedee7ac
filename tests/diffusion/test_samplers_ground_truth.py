"""Every sampler, driven by the exact Gaussian-mixture denoiser, reproduces the true mixture."""

import pytest
import torch

from gendistill.diffusion.gmm import GaussianMixture, GaussianMixtureDenoiser
from gendistill.diffusion.samplers import (
    final_sample, sample_consistency, sample_dpmpp_2m, sample_euler, sample_heun,
)
from gendistill.diffusion.schedules import KarrasSchedule

N = 4000
SIGMA_MAX = 80.0
SW_BOUND = 0.12  # sliced W1 between two independent exact sample sets of this size is about 0.03-0.05


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture(
        weights=torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
        means=torch.tensor([[-4.0, 0.0], [3.0, 3.0], [2.0, -4.0]], dtype=torch.float64),
        covariances=torch.tensor([[[1.0, 0.3], [0.3, 0.5]], [[0.4, 0.0], [0.0, 0.8]], [[0.6, -0.2], [-0.2, 0.3]]],
                                 dtype=torch.float64),
    )


def start_noise(mixture, seed):
    """Exact samples of the noised marginal at SIGMA_MAX: x0 + sigma * eps."""
    g = torch.Generator().manual_seed(seed)
    x0, _ = mixture.sample(N, g)
    return x0 + SIGMA_MAX * torch.randn(x0.shape, generator=g, dtype=torch.float64)


def sliced_wasserstein(a, b, projections=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(projections, a.shape[1], generator=g, dtype=a.dtype)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    pa, _ = (a @ dirs.T).sort(dim=0)
    pb, _ = (b @ dirs.T).sort(dim=0)
    return (pa - pb).abs().mean().item()


def check_matches_mixture(samples, mixture, reference):
    """Mode weights within 0.05, per-mode mean and covariance close, sliced W1 under the bound."""
    modes = mixture.log_responsibilities(samples, torch.full((len(samples),), 1e-3, dtype=samples.dtype)).argmax(1)
    for k in range(len(mixture.weights)):
        members = samples[modes == k]
        assert abs(len(members) / len(samples) - mixture.weights[k].item()) < 0.05
        assert torch.allclose(members.mean(0), mixture.means[k], atol=0.15)
        assert torch.allclose(members.T.cov(), mixture.covariances[k], atol=0.15)
    assert sliced_wasserstein(samples, reference) < SW_BOUND


def karras(n):
    return KarrasSchedule(sigma_min=0.002, sigma_max=SIGMA_MAX).sigmas(n)


@pytest.fixture(scope="module")
def reference(mixture):
    return mixture.sample(N, torch.Generator().manual_seed(123))[0]


@pytest.mark.parametrize("name,run", [
    ("euler", lambda d, x, s: sample_euler(d, x, s)),
    ("ddim_eta1", lambda d, x, s: sample_euler(d, x, s, eta=1.0, generator=torch.Generator().manual_seed(5))),
    ("ddim_eta0.5", lambda d, x, s: sample_euler(d, x, s, eta=0.5, generator=torch.Generator().manual_seed(6))),
    ("heun", lambda d, x, s: sample_heun(d, x, s)),
    ("dpmpp_2m", lambda d, x, s: sample_dpmpp_2m(d, x, s)),
])
def test_sampler_reproduces_mixture(mixture, reference, name, run):
    denoiser = GaussianMixtureDenoiser(mixture)
    samples = final_sample(run(denoiser, start_noise(mixture, 1), karras(60)))
    check_matches_mixture(samples, mixture, reference)


class ProbabilityFlowMap:
    """The exact consistency function: solve the PF-ODE from sigma to 0 with a fine Heun solve."""

    def __init__(self, denoiser, steps=80):
        self.denoiser, self.steps = denoiser, steps

    def __call__(self, x, sigma, cond=None):
        sigmas = KarrasSchedule(sigma_min=0.002, sigma_max=float(sigma)).sigmas(self.steps)
        return final_sample(sample_heun(self.denoiser, x, sigmas))


@pytest.mark.parametrize("steps", [1, 2])
def test_consistency_sampler_with_exact_flow_map(mixture, reference, steps):
    flow_map = ProbabilityFlowMap(GaussianMixtureDenoiser(mixture))
    sigmas = torch.tensor([SIGMA_MAX, 2.0, 0.0][: steps] + [0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(9)
    samples = final_sample(sample_consistency(flow_map, start_noise(mixture, 2), sigmas, generator=g))
    check_matches_mixture(samples, mixture, reference)


def test_consistency_sampler_with_posterior_mean_fails(mixture, reference):
    """The posterior mean is not a consistency function: one step collapses to the data mean."""
    denoiser = GaussianMixtureDenoiser(mixture)
    sigmas = torch.tensor([SIGMA_MAX, 0.0], dtype=torch.float64)
    samples = final_sample(sample_consistency(denoiser, start_noise(mixture, 2), sigmas))
    assert sliced_wasserstein(samples, reference) > 5 * SW_BOUND
    assert samples.std(0).max() < 0.2 * reference.std(0).min()
