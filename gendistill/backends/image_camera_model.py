"""An image-conditioned, camera-conditioned latent diffusion model (Isotropic3D's view-conditioned multi-view
diffusion, Liu et al. 2024, arXiv:2403.10395; code: pkunliu/Isotropic3D) as stock diffusers components.

The folder holds ``unet/`` (a stock ``UNet2DConditionModel``), ``vae/`` and ``scheduler/``. Its two
conditions go through the UNet's own inputs, so no custom class is needed to load or run it:

- the reference image's CLIP image embedding (D,) is one cross-attention token: ``encoder_hidden_states`` of
  shape (B, 1, D), mapped to the attention width by the UNet's ``encoder_hid_proj`` (``encoder_hid_dim_type:
  text_proj``), as Isotropic3D feeds its (B, 1, 768) CLIP embedding in place of the text tokens; the null
  condition of classifier-free guidance is the zero embedding (the reference's ``torch.zeros_like``);
- the target camera, a flattened 4x4 camera-to-world matrix (B, 16), goes through the class-embedding MLP
  (``class_embed_type: projection``) added to the timestep embedding: MVDream's camera embedding (Shi et al.
  2023), which Isotropic3D inherits.

:class:`ImageCameraDenoiser` is the canonical-units adapter (DESIGN.md §2) of such a UNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from gendistill.diffusion.adapters import Prediction, SigmaToTimestep, network_dtype, vp_x0_from_output, working_dtype
from gendistill.diffusion.denoiser import expand_sigma
from gendistill.diffusion.schedules import vp_sigmas_from_alphas_cumprod
from gendistill.errors import UserError

CAMERA_DIM = 16
"""Camera features: the flattened 4x4 camera-to-world matrix (gendistill's OpenCV cameras)."""


@dataclass(frozen=True)
class ImageCameraCondition:
    """One row per image: the reference's image embedding and the target view's camera."""

    embeds: Tensor
    """(B, D) image embeddings; zeros are the unconditional branch."""
    camera: Tensor
    """(B, 16) flattened camera-to-world matrices."""

    def null(self) -> ImageCameraCondition:
        """The unconditional condition of the same views: zero embeddings, the same cameras."""
        return ImageCameraCondition(torch.zeros_like(self.embeds), self.camera)

    def cat(self, other: ImageCameraCondition) -> ImageCameraCondition:
        """This condition's rows, then ``other``'s (what ``CFGDenoiser`` batches its two branches with)."""
        return ImageCameraCondition.concat([self, other])

    @staticmethod
    def concat(conds: list[ImageCameraCondition]) -> ImageCameraCondition:
        return ImageCameraCondition(torch.cat([c.embeds for c in conds]), torch.cat([c.camera for c in conds]))


def unet_inputs(cond: ImageCameraCondition, dtype: torch.dtype) -> dict:
    """The UNet keyword arguments of a condition: one cross-attention token, the camera as class labels."""
    return {"encoder_hidden_states": cond.embeds[:, None, :].to(dtype), "class_labels": cond.camera.to(dtype)}


class ImageCameraDenoiser(nn.Module):
    """``D(x, sigma, cond) -> x0`` for an image/camera UNet on a discrete VP schedule (as ``VPDenoiser``:
    the network sees ``x / sqrt(1 + sigma^2)`` at the timestep whose sigma is ``sigma``)."""

    def __init__(self, unet: nn.Module, alphas_cumprod: Tensor, prediction: Prediction = "epsilon"):
        super().__init__()
        self.unet, self.prediction = unet, prediction
        self.sigma_to_t = SigmaToTimestep(alphas_cumprod)

    def forward(self, x: Tensor, sigma: Tensor, cond: ImageCameraCondition) -> Tensor:
        xw = x.to(working_dtype(x))
        sig = expand_sigma(sigma, xw)
        t = self.sigma_to_t(sig.flatten()).to(device=x.device, dtype=torch.float32)
        dtype = network_dtype(self.unet)
        out = self.unet((xw / (1 + sig**2).sqrt()).to(dtype), t, **unet_inputs(cond, dtype)).sample
        return vp_x0_from_output(out.to(xw.dtype), xw, sig, self.prediction).to(x.dtype)


@dataclass
class ImageCameraModel:
    """The loaded folder: UNet, VAE and the training schedule, frozen, in float32."""

    unet: nn.Module
    vae: nn.Module
    alphas_cumprod: Tensor
    prediction: Prediction

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> ImageCameraModel:
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

        folder = Path(folder)
        missing = [p for p in ("unet", "vae", "scheduler") if not (folder / p).is_dir()]
        if missing:
            raise UserError(f"{folder} is not an image/camera teacher folder: it has no {', '.join(missing)}/")
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32)
        if unet.config.class_embed_type != "projection" or unet.config.encoder_hid_dim is None:
            raise UserError(f"{folder}/unet is not image- and camera-conditioned (it needs class_embed_type: "
                            "projection and encoder_hid_dim)")
        vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32)
        scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
        for module in (unet, vae):
            module.to(device).eval().requires_grad_(False)
        return cls(unet, vae, scheduler.alphas_cumprod.clone(), scheduler.config.prediction_type)

    @property
    def embed_dim(self) -> int:
        return int(self.unet.config.encoder_hid_dim)

    @property
    def train_sigmas(self) -> Tensor:
        """Sigma of each training timestep, (T,), float64."""
        return vp_sigmas_from_alphas_cumprod(self.alphas_cumprod)

    def denoiser(self) -> ImageCameraDenoiser:
        return ImageCameraDenoiser(self.unet, self.alphas_cumprod, self.prediction)

    def image_size(self) -> tuple[int, int]:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        size = int(self.unet.config.sample_size) * factor
        return size, size

    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> scaled latents, differentiably (the posterior mean, resized to
        the model's size first, as ``score.teacher.encode_with_grad``)."""
        size = self.image_size()
        if tuple(images.shape[-2:]) != size:
            images = torch.nn.functional.interpolate(images, size, mode="bilinear", align_corners=False,
                                                     antialias=True)
        vae = self.vae
        latents = vae.encode((images * 2 - 1).to(device=vae.device, dtype=vae.dtype)).latent_dist.mean
        return (latents * vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents -> images in [0, 1]."""
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return (images / 2 + 0.5).clamp(0, 1)
