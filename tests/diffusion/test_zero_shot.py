"""The diffusion model as a zero-shot classifier, against the Gaussian closed forms and a tiny pipeline."""

import math

import pytest
import torch

from gendistill.diffusion.gmm import GaussianMixture, GaussianMixtureDenoiser
from gendistill.diffusion.zero_shot import NoiseDraws, denoising_errors

MEANS = torch.tensor([[1.5, 0.0], [-1.5, 0.0]], dtype=torch.float64)
S2 = 0.5


def class_denoiser():
    """The exact class-conditional denoiser of two isotropic Gaussians: ``cond`` is the class index."""
    modes = [GaussianMixtureDenoiser(GaussianMixture(torch.ones(1, dtype=torch.float64), MEANS[k:k + 1],
                                                     S2 * torch.eye(2, dtype=torch.float64)[None]))
             for k in range(2)]
    return lambda x, sigma, cond: modes[cond](x, sigma)


def test_the_true_class_error_is_the_gaussian_closed_form():
    """For x0 ~ N(mu, s^2 I) and its exact denoiser, E||eps_hat - eps||^2 per dimension is s^2 / (s^2 + sigma^2)."""
    g = torch.Generator().manual_seed(0)
    x0 = MEANS[0] + math.sqrt(S2) * torch.randn(200, 2, generator=g, dtype=torch.float64)
    sigmas = torch.tensor([0.3, 1.0, 3.0], dtype=torch.float64).repeat_interleave(1000)
    draws = NoiseDraws(sigmas, torch.randn(len(sigmas), 2, generator=g, dtype=torch.float64))
    errors = denoising_errors(class_denoiser(), x0, [0], draws)
    expected = (S2 / (S2 + draws.sigmas**2)).mean()
    assert errors.mean().item() == pytest.approx(expected.item(), rel=0.05)


def test_it_classifies_almost_as_well_as_the_bayes_classifier():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 2, (400,), generator=g)
    x0 = MEANS[labels] + math.sqrt(S2) * torch.randn(400, 2, generator=g, dtype=torch.float64)
    draws = NoiseDraws.stratified(torch.logspace(-2, 2, 1000, dtype=torch.float64), 64, (2,), g)
    choice = denoising_errors(class_denoiser(), x0, [0, 1], draws).argmin(dim=1)
    bayes = ((x0 - MEANS[1]).pow(2).sum(1) < (x0 - MEANS[0]).pow(2).sum(1)).long()  # equal covariances
    assert (choice == labels).double().mean() >= (bayes == labels).double().mean() - 0.05


def test_stratified_draws_cover_the_range_one_per_stratum():
    sigmas = torch.arange(1, 1001, dtype=torch.float64)
    draws = NoiseDraws.stratified(sigmas, 10, (4, 2, 2), torch.Generator().manual_seed(0), 0.0, 1.0)
    strata = ((draws.sigmas - 1) // 100).long()
    assert strata.tolist() == list(range(10)) and draws.noise.shape == (10, 4, 2, 2)


def test_the_judge_on_a_tiny_pipeline_is_deterministic_and_shaped(tmp_path):
    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.backends.zero_shot_judge import ZeroShotJudge
    from gendistill.errors import UserError
    from tiny_pipelines import tiny_sd_pipeline

    model = TextToImageModel(tiny_sd_pipeline())
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    prompts = ["a red cube", "a blue sphere", "a green torus"]
    a = ZeroShotJudge(model, draws=4).judge(images, prompts)
    b = ZeroShotJudge(model, draws=4).judge(images, prompts)
    assert a.errors.shape == (3, 3) and torch.equal(a.errors, b.errors) and (a.errors > 0).all()
    assert a.chosen == [prompts[i] for i in a.errors.argmin(1).tolist()]
    with pytest.raises(UserError, match="at least two candidate prompts"):
        ZeroShotJudge(model).judge(images, ["a red cube"])
