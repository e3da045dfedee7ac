"""The shapes world's image-conditioned, camera-conditioned teacher: Isotropic3D's first fine-tuning stage in
miniature, as a recipe of the one trainer.

Isotropic3D (Liu et al. 2024, arXiv:2403.10395, Sec. 3.2-3.3; code pkunliu/Isotropic3D) fine-tunes MVDream
in two stages: (1) its text encoder replaced by a frozen CLIP image encoder, the UNet learns to denoise target
views given the reference image's CLIP embedding and each target's camera; (2) "Explicit Multi-view
Attention" adds the noise-free reference image as an extra view inside the multi-view attention. Inference
(and SDS) uses only the embedding and the cameras. The miniature keeps stage 1 and drops stage 2 and the
multi-view attention: a shapes object is one primitive of one colour, which the embedding already names, so
one view at a time conditioned on (embedding, camera) is enough to learn how it looks from every camera.

- the starting point is the shipped shapes teacher's UNet (:func:`image_camera_unet`): its config gains
  ``encoder_hid_dim`` (the CLIP width; ``text_proj``) and ``class_embed_type: projection`` for the camera;
  every weight that keeps its shape is copied, the camera MLP's output layer starts at zero (the teacher's
  behaviour is unchanged at step 0 but for the new token);
- data (:class:`PairBatches`): pairs of renders of the same object (shape and colour) from two random
  cameras A and B: the CLIP embedding of A (zeros with probability ``cond_dropout``, the null condition of
  classifier-free guidance), the latent and camera of B;
- loss: the shapes teacher's own (v-prediction on the DDPM schedule), on B.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gendistill.backends.image_camera_model import CAMERA_DIM
from gendistill.domains.shapes.teacher_data import LatentCache, RenderCache
from gendistill.errors import check_range, key_path
from gendistill.recipe import Loss, ParamGroup, Phase, Update

UNET_PHASE = "unet"
NEW_MODULES = ("encoder_hid_proj", "class_embedding", "add_embedding")
"""The UNet's modules that the conditioning change adds or reshapes (trained at ``new_lr``)."""


@dataclass
class ImageTeacherConfig:
    """``gendistill train-image-teacher``: where it starts, its data and the loop."""

    base: str = "shapes-teacher"
    """The text-to-image teacher whose UNet, VAE and scheduler it starts from."""
    clip: str = "shapes-clip"
    """The open_clip folder whose image embedding is the condition."""
    cache_size: int = 8000
    """Renders made once (random object and camera each); pairs are drawn among renders of one object."""
    steps: int = 3000
    """Optimizer steps."""
    batch_size: int = 32
    """Pairs per step."""
    lr: float = 2e-4
    """Peak AdamW rate of the UNet's pretrained weights (linear warm-up, then decay to 10%)."""
    new_lr: float = 1e-3
    """Peak rate of the modules the conditioning adds (encoder_hid_proj, class_embedding, add_embedding)."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    cond_dropout: float = 0.1
    """Probability that a pair's embedding is replaced by zeros (classifier-free guidance's null)."""
    ema_decay: float = 0.998
    """EMA decay of the UNet (with warm-up); the export takes the EMA weights."""
    checkpoint_every: int = 250
    """Checkpoint every this many steps (and at the end); ``--resume`` continues from the newest."""
    guidance_scale: float = 3.0
    """CFG scale written into the exported card (the samples in the card use it)."""
    seed: int = 0
    """Seed of the renders, the new weights and every step's draws."""

    def check(self, path: str) -> None:
        for name in ("cache_size", "steps", "batch_size"):
            check_range(key_path(path, name), getattr(self, name), 1)
        check_range(key_path(path, "cond_dropout"), self.cond_dropout, 0.0, 1.0)
        check_range(key_path(path, "ema_decay"), self.ema_decay, 0.0, 0.99999)
        for name in ("lr", "new_lr", "guidance_scale"):
            check_range(key_path(path, name), getattr(self, name), 0.0)


def image_camera_unet(base_unet: nn.Module, embed_dim: int, generator: torch.Generator) -> nn.Module:
    """A ``UNet2DConditionModel`` with the base's config plus an image-embedding token projection and a
    camera MLP, holding every base weight whose shape is unchanged; the camera MLP's output starts at zero."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in base_unet.config.items() if k != "_use_default_values"}  # else from_config
    config.update(encoder_hid_dim=embed_dim, encoder_hid_dim_type="text_proj", class_embed_type="projection",
                  projection_class_embeddings_input_dim=CAMERA_DIM)  # would drop the keys set here
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(config)
    own = unet.state_dict()
    kept = {k: v for k, v in base_unet.state_dict().items() if k in own and own[k].shape == v.shape}
    unet.load_state_dict(kept, strict=False)
    with torch.no_grad():
        unet.class_embedding.linear_2.weight.zero_()
        unet.class_embedding.linear_2.bias.zero_()
    return unet


def camera_features_of(azimuth_deg: Tensor, elevation_deg: Tensor) -> Tensor:
    """(N, 16) flattened camera-to-world matrices of rig cameras (the features text-to-3D's views carry)."""
    from gendistill.render.cameras import Camera

    return torch.stack([Camera(azimuth_deg=a, elevation_deg=e).camtoworld.flatten().float()
                        for a, e in zip(azimuth_deg.tolist(), elevation_deg.tolist())])


@dataclass(frozen=True)
class PairBatch:
    """Targets B with their camera, and the (possibly null) embedding of a reference A of the same object."""

    latents: Tensor
    """(B, C, h, w) fresh posterior samples of the targets' latents (unscaled)."""
    embeds: Tensor
    """(B, D) reference embeddings; zero rows are dropped conditions."""
    cameras: Tensor
    """(B, 16) the targets' cameras."""


class PairBatches:
    """The trainer's batch function: a target render, then a reference among the other renders of its object."""

    def __init__(self, renders: RenderCache, latents: LatentCache, embeds: Tensor, batch_size: int,
                 cond_dropout: float):
        self.latents, self.embeds, self.batch_size, self.cond_dropout = latents, embeds, batch_size, cond_dropout
        self.cameras = camera_features_of(renders.azimuth_deg, renders.elevation_deg)
        objects = renders.shape_ids * 1000 + renders.colour_ids
        self.groups = {int(o): torch.nonzero(objects == o).flatten() for o in objects.unique()}
        self.object_of = objects

    def __call__(self, step: int, generator: torch.Generator) -> PairBatch:
        target = torch.randint(0, len(self.latents), (self.batch_size,), generator=generator)
        picks = torch.rand(self.batch_size, generator=generator)
        reference = torch.stack([self._other(int(t), float(u)) for t, u in zip(target, picks)])
        keep = (torch.rand(self.batch_size, generator=generator) >= self.cond_dropout).float()
        latents = self.latents.sample(target, generator)
        return PairBatch(latents, self.embeds[reference] * keep[:, None], self.cameras[target])

    def _other(self, target: int, u: float) -> Tensor:
        """A render of the target's object other than the target (the target itself if it is alone)."""
        group = self.groups[int(self.object_of[target])]
        others = group[group != target]
        pool = others if len(others) else group
        return pool[min(int(u * len(pool)), len(pool) - 1)]


class ImageTeacherRecipe:
    """The trainer's recipe: one phase (``unet``) in two parameter groups (pretrained and new weights),
    the shapes teacher's v-prediction loss on the DDPM schedule; EMA of the UNet."""

    def __init__(self, unet: nn.Module, scheduler, scaling_factor: float, config: ImageTeacherConfig):
        self.unet, self.scheduler, self.scaling_factor, self.config = unet, scheduler, scaling_factor, config

    def phases(self) -> list[Phase]:
        new = [p for name, p in self.unet.named_parameters() if name.split(".")[0] in NEW_MODULES]
        ids = {id(p) for p in new}
        old = [p for p in self.unet.parameters() if id(p) not in ids]
        return [Phase(UNET_PHASE, groups=(ParamGroup("pretrained", old, lr=self.config.lr, lr_final=0.1),
                                          ParamGroup("new", new, lr=self.config.new_lr, lr_final=0.1)))]

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet}

    def ema_module(self) -> str | None:
        return "unet"

    def loss(self, batch: PairBatch, phase: str, step: int, generator: torch.Generator) -> Loss:
        from gendistill.backends.image_camera_model import ImageCameraCondition, unet_inputs

        scheduler, device = self.scheduler, self.unet.device
        z0 = batch.latents * self.scaling_factor
        noise = torch.randn(z0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(z0),), generator=generator)
        zt = scheduler.add_noise(z0, noise, t)
        target = scheduler.get_velocity(z0, noise, t) if scheduler.config.prediction_type == "v_prediction" \
            else noise
        cond = ImageCameraCondition(batch.embeds.to(device), batch.cameras.to(device))
        pred = self.unet(zt.to(device), t.to(device), **unet_inputs(cond, torch.float32)).sample
        mse = (pred - target.to(device)).pow(2).mean()
        return Loss(mse, {"mse": mse.item()})

    def after_update(self, update: Update) -> None:
        """Nothing between updates."""


@torch.no_grad()
def embed_renders(encoder, images_uint8: Tensor, batch_size: int = 256) -> Tensor:
    """CLIP image embeddings (N, D) of uint8 renders."""
    parts = [encoder.embed_images(images_uint8[i:i + batch_size].float() / 255.0)
             for i in range(0, len(images_uint8), batch_size)]
    return torch.cat(parts).cpu()
