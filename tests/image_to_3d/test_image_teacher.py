"""The image/camera teacher: built from a text-to-image UNet, conditioned on an embedding and a camera, saved
as a stock diffusers UNet; its training pairs and recipe."""

import torch

from tiny_image3d import TINY_CLIP
from tiny_pipelines import tiny_unet


def _condition(n=2, seed=0):
    from gendistill.backends.image_camera_model import ImageCameraCondition

    g = torch.Generator().manual_seed(seed)
    return ImageCameraCondition(torch.randn(n, TINY_CLIP["embed_dim"], generator=g), torch.randn(n, 16, generator=g))


def test_the_conversion_keeps_the_base_weights_and_starts_camera_blind():
    from gendistill.backends.image_camera_model import unet_inputs
    from gendistill.domains.shapes.image_teacher import image_camera_unet

    torch.manual_seed(0)
    base = tiny_unet()
    unet = image_camera_unet(base, TINY_CLIP["embed_dim"], torch.Generator().manual_seed(0))
    assert unet.config.class_embed_type == "projection" and unet.config.encoder_hid_dim == TINY_CLIP["embed_dim"]
    assert torch.equal(unet.conv_in.weight, base.conv_in.weight)
    x, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), _condition()
    with torch.no_grad():
        one = unet(x, t, **unet_inputs(cond, torch.float32)).sample
        moved = type(cond)(cond.embeds, cond.camera + 1.0)
        two = unet(x, t, **unet_inputs(moved, torch.float32)).sample
    assert torch.equal(one, two)  # the camera MLP's output layer starts at zero


def test_the_prediction_changes_with_the_embedding_and_the_camera(tiny_teacher):
    from gendistill.backends.image_camera_model import ImageCameraCondition, ImageCameraModel
    from gendistill.diffusion.guidance import CFGDenoiser

    model = ImageCameraModel.load(tiny_teacher)
    denoiser = model.denoiser()
    x, sigma, cond = torch.randn(2, 4, 8, 8), torch.tensor([0.5, 2.0]), _condition()
    with torch.no_grad():
        base = denoiser(x, sigma, cond)
        other_image = denoiser(x, sigma, ImageCameraCondition(cond.embeds.flip(0), cond.camera))
        other_camera = denoiser(x, sigma, ImageCameraCondition(cond.embeds, cond.camera.flip(0)))
        null = denoiser(x, sigma, ImageCameraCondition(torch.zeros_like(cond.embeds), cond.camera))
        cfg_three = CFGDenoiser(denoiser, cond.null(), 3.0)(x, sigma, cond)
    assert (base - other_image).abs().amax() > 1e-4 and (base - other_camera).abs().amax() > 1e-4
    assert torch.equal(cond.null().embeds, torch.zeros_like(cond.embeds)) and cond.null().camera is cond.camera
    assert (null - base).abs().amax() > 1e-4
    assert torch.allclose(cfg_three, null + 3 * (base - null), atol=1e-4)


def test_the_exported_unet_loads_with_stock_diffusers(tiny_teacher):
    from diffusers import UNet2DConditionModel

    from safetensors import safe_open

    with safe_open(str(tiny_teacher / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # shipped as float16
    unet = UNet2DConditionModel.from_pretrained(tiny_teacher / "unet")
    assert unet.config.class_embed_type == "projection" and unet.config.encoder_hid_dim_type == "text_proj"
    cond = _condition()
    with torch.no_grad():
        out = unet.float()(torch.randn(2, 4, 8, 8), 10, encoder_hidden_states=cond.embeds[:, None],
                           class_labels=cond.camera).sample
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
    for part in ("vae", "scheduler", "gendistill.json"):
        assert (tiny_teacher / part).exists(), part


def test_pairs_show_one_object_from_two_cameras_and_drop_conditions():
    from gendistill.domains.shapes.image_teacher import PairBatches
    from gendistill.domains.shapes.teacher import DataConfig
    from gendistill.domains.shapes.teacher_data import LatentCache, render_cache

    renders = render_cache(DataConfig(render_batch=50), 120, torch.Generator().manual_seed(0))
    latents = LatentCache(torch.arange(120.0)[:, None, None, None].expand(120, 4, 2, 2).clone(), torch.zeros(120, 4, 2, 2))
    embeds = torch.arange(120.0)[:, None].expand(120, 3).clone() + 1  # row i holds i + 1: no zero row
    pairs = PairBatches(renders, latents, embeds, 64, cond_dropout=0.25)
    batch = pairs(0, torch.Generator().manual_seed(1))
    target = batch.latents[:, 0, 0, 0].long()
    kept = batch.embeds[:, 0] != 0
    reference = batch.embeds[kept, 0].long() - 1
    assert 0 < (~kept).sum() < 40  # some conditions dropped to the null (zeros)
    same = lambda a, b: renders.shape_ids[a] == renders.shape_ids[b] and renders.colour_ids[a] == renders.colour_ids[b]
    assert all(same(int(a), int(b)) for a, b in zip(target[kept], reference))
    assert (target[kept] != reference).float().mean() > 0.9  # another render of it, not the same one
    assert torch.allclose(batch.cameras[0], pairs.cameras[target[0]])


def test_the_teacher_recipe_lowers_its_loss(tiny_teacher, tmp_path):
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from gendistill.domains.shapes.image_teacher import ImageTeacherConfig, ImageTeacherRecipe, PairBatch
    from gendistill.train.config import OptimizerConfig, TrainerConfig
    from gendistill.train.trainer import Trainer

    unet = UNet2DConditionModel.from_pretrained(tiny_teacher / "unet").float()
    scheduler = DDPMScheduler.from_pretrained(tiny_teacher / "scheduler")
    g = torch.Generator().manual_seed(0)
    batch = PairBatch(torch.full((8, 4, 8, 8), 0.5), torch.randn(8, TINY_CLIP["embed_dim"], generator=g),
                      torch.randn(8, 16, generator=g))
    recipe = ImageTeacherRecipe(unet, scheduler, 1.0, ImageTeacherConfig(lr=5e-3, new_lr=5e-3))
    config = TrainerConfig(steps=40, seed=0, optimizers={"unet": OptimizerConfig(kind="adamw", lr=5e-3)}, grad_clip=None,
                           checkpoint_every=0, log_every=1, seed_global_rng=True)

    def loss():  # the same noise and timesteps before and after
        with torch.no_grad():
            return sum(recipe.loss(batch, "unet", 0, torch.Generator().manual_seed(s)).total.item() for s in range(4))

    before = loss()
    Trainer(recipe, config, tmp_path, lambda step, gen: batch, progress=False).fit()
    assert loss() < 0.7 * before
