"""An analytic Gaussian-mixture denoiser: the exact posterior mean, a ground-truth teacher for tests.

Data ``x0 ~ sum_k w_k N(mu_k, S_k)``; at noise ``sigma`` the marginal is ``sum_k w_k N(mu_k, S_k + sigma^2 I)``
and ``E[x0 | x] = sum_k r_k(x) (mu_k + S_k (S_k + sigma^2 I)^-1 (x - mu_k))`` with responsibilities ``r_k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gendistill.diffusion.denoiser import expand_sigma


@dataclass(frozen=True)
class GaussianMixture:
    """A mixture of full-covariance Gaussians in ``d`` dimensions (float64)."""

    weights: Tensor
    """Mode weights, (K,), summing to 1."""
    means: Tensor
    """Mode means, (K, d)."""
    covariances: Tensor
    """Mode covariances, (K, d, d), symmetric positive definite."""

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` exact samples and the index of the mode each came from."""
        modes = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covariances)
        return self.means[modes] + torch.einsum("nij,nj->ni", chol[modes], z), modes

    def log_responsibilities(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``log r_k(x)`` under the noised mixture, (N, K); ``sigma`` is (N,)."""
        cov = self.covariances[None] + (sigma**2)[:, None, None, None] * torch.eye(self.dim, dtype=x.dtype)
        dist = torch.distributions.MultivariateNormal(self.means[None], covariance_matrix=cov)
        logp = dist.log_prob(x[:, None, :]) + self.weights.log()[None]
        return logp - logp.logsumexp(dim=1, keepdim=True)

    def posterior_mean(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``E[x0 | x]`` for flat ``x`` (N, d) and per-row ``sigma`` (N,)."""
        eye = torch.eye(self.dim, dtype=x.dtype)
        noised = self.covariances[None] + (sigma**2)[:, None, None, None] * eye  # (N, K, d, d)
        gain = self.covariances[None] @ torch.linalg.inv(noised)  # S_k (S_k + s^2 I)^-1
        offset = (x[:, None, :] - self.means[None])[..., None]  # (N, K, d, 1)
        per_mode = self.means[None] + (gain @ offset)[..., 0]  # (N, K, d)
        r = self.log_responsibilities(x, sigma).exp()
        return (r[..., None] * per_mode).sum(dim=1)


class GaussianMixtureDenoiser:
    """The exact denoiser of a Gaussian mixture; ``x`` may have any shape (B, ...) with prod(...) == d."""

    def __init__(self, mixture: GaussianMixture):
        self.mixture = mixture

    def __call__(self, x: Tensor, sigma: Tensor, cond=None) -> Tensor:
        flat = x.reshape(x.shape[0], -1).double()
        sig = expand_sigma(sigma, flat).flatten().double()
        x0 = self.mixture.posterior_mean(flat, sig.clamp(min=1e-12))
        return x0.reshape(x.shape).to(x.dtype)
