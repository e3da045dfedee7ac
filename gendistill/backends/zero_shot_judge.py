"""A zero-shot judge for any text-to-image pipeline: which of several prompts does the model believe an image
shows? (``diffusion.zero_shot``: the prompt under which it denoises the image's latent best.)

It needs no classifier trained on the images' distribution, so it can score what the shapes classifier was
never shown (sketches, stylised images) and works on any teacher the suite loads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.diffusion.zero_shot import NoiseDraws, denoising_errors
from gendistill.errors import UserError


@dataclass(frozen=True)
class Judgement:
    """Per image: the denoising error under each candidate prompt and the index of the lowest."""

    errors: Tensor
    """(B, K) mean epsilon-prediction errors (lower: more believed)."""
    prompts: list[str]

    @property
    def choice(self) -> Tensor:
        return self.errors.argmin(dim=1)

    @property
    def chosen(self) -> list[str]:
        return [self.prompts[i] for i in self.choice.tolist()]


class ZeroShotJudge:
    """Scores images against candidate prompts with ``model``'s own denoiser (conditional, no guidance), on
    ``draws`` (sigma, noise) pairs spread over the training timesteps, the same for every image and prompt."""

    def __init__(self, model: TextToImageModel, draws: int = 32, seed: int = 0):
        if model.family != "vp":
            raise UserError("the zero-shot judge reads a UNet text-to-image pipeline (Stable Diffusion-style)")
        if draws < 1:
            raise UserError(f"the zero-shot judge needs at least 1 noise draw, got {draws}")
        self.model, self.draws, self.seed = model, draws, seed

    @torch.no_grad()
    def judge(self, images: Tensor, prompts: list[str]) -> Judgement:
        """``images`` (B, 3, H, W) in [0, 1] at the pipeline's size; ``prompts`` the K candidates."""
        if len(prompts) < 2:
            raise UserError("the zero-shot judge needs at least two candidate prompts")
        generator = torch.Generator().manual_seed(self.seed)
        latents = self.model.encode_images(images.to(self.model.network.device), generator)
        draws = NoiseDraws.stratified(self.model.train_sigmas, self.draws, tuple(latents.shape[1:]), generator)
        cond, _ = self.model.encode_batch(prompts)
        candidates = [cond.row(k) for k in range(len(prompts))]
        errors = denoising_errors(self.model.denoiser(), latents, candidates, draws)
        return Judgement(errors.cpu(), list(prompts))
