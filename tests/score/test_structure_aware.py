"""Structure-aware SDS (HumanGaussian's dual-branch guidance) on tiny pipelines: the depth images, plain SDS when
the depth branch is off, the depth branch's gradient against a closed form computed by hand from the depth UNet
(same timesteps as the RGB branch, fresh noise), ``depth_views``, and the config's checks."""

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.diffusion.timesteps import TimestepRange
from gendistill.errors import UserError
from gendistill.config import check_config
from gendistill.jobs.text_to_3d.config import load_text3d_config
from gendistill.render.depth_images import depth_to_grey, grey_to_depth
from gendistill.score.sds import SDS, SDSConfig
from gendistill.score.structure_aware import DepthViews, StructureAwareSDS, StructureAwareSDSConfig
from tiny_pipelines import tiny_sd_pipeline, tiny_unet

PROMPTS = ["a red cube", "a blue ball", "a green cone"]
RANGE = (3.0, 5.0)


@pytest.fixture(scope="module")
def models():
    pipe = tiny_sd_pipeline(seed=0)
    torch.manual_seed(11)
    depth_pipe = StableDiffusionPipeline(**{**{k: v for k, v in pipe.components.items()
                                                if k in ("vae", "text_encoder", "tokenizer", "scheduler")},
                                             "unet": tiny_unet()}, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    return TextToImageModel(pipe), TextToImageModel(depth_pipe), depth_pipe


def renders(n=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(n, 3, size, size, generator=g)
    depth = 3.2 + 1.5 * torch.rand(n, 1, size, size, generator=g)
    alpha = torch.rand(n, 1, size, size, generator=g)
    return rgb, depth, alpha


def test_depth_grey_images_invert_inside_and_are_white_outside():
    depth = torch.linspace(3.0, 5.0, 11).view(1, 1, 1, 11)
    grey = depth_to_grey(depth, torch.ones_like(depth), *RANGE, 0.8)
    assert grey.shape == (1, 3, 1, 11) and grey[0, 0, 0, 0] == 0 and abs(grey[0, 0, 0, -1].item() - 0.8) < 1e-6
    assert torch.allclose(grey_to_depth(grey, *RANGE, 0.8), depth, atol=1e-6)
    assert torch.equal(depth_to_grey(depth, torch.zeros_like(depth), *RANGE, 0.8), torch.ones(1, 3, 1, 11))
    with pytest.raises(ValueError, match="far > near"):
        depth_to_grey(depth, depth, 5.0, 3.0, 0.8)


def config(**kw):
    return StructureAwareSDSConfig(**{"guidance_scale": 4.0, "timesteps": TimestepRange(0.1, 0.9),
                                      "depth_range": RANGE, **kw})


def test_without_depth_or_with_weight_zero_it_is_plain_sds(models):
    model, depth_model, _ = models
    rgb, depth, alpha = renders()
    sds = SDS(model, SDSConfig(guidance_scale=4.0, timesteps=TimestepRange(0.1, 0.9)))
    expected = sds.gradient(rgb, PROMPTS, 2, 10, torch.Generator().manual_seed(5)).grad
    for guidance, views in ((StructureAwareSDS(model, depth_model, config()), None),
                            (StructureAwareSDS(model, depth_model, config(depth_weight=0.0)), DepthViews(depth, alpha))):
        out = guidance.gradient(rgb, PROMPTS, 2, 10, torch.Generator().manual_seed(5), depth=views)
        assert torch.equal(out.grad, expected) and "depth_grad_norm" not in out.terms


def eps_by_hand(pipe, x, t, prompts):
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    with torch.no_grad():
        return pipe.unet(x, t, encoder_hidden_states=pipe.text_encoder(tok.input_ids)[0]).sample


@pytest.mark.parametrize("views", [0, 2])
def test_the_depth_branch_is_weighted_sds_on_the_depth_images_at_the_rgb_timesteps(models, views):
    """d loss / d depth latents = depth_weight / B * (1 - abar_t) (eps_u + s (eps_c - eps_u) - eps'), with the RGB
    branch's t and noise eps' drawn after the RGB noise; views past ``depth_views`` get no depth gradient."""
    model, depth_model, depth_pipe = models
    rgb, depth, alpha = renders()
    depth.requires_grad_(True)
    guidance = StructureAwareSDS(model, depth_model, config(depth_weight=0.5, depth_views=views))
    seen = {}
    encode = guidance.depth_teacher.encode

    def recording_encode(images):
        seen["latents"] = encode(images)
        seen["latents"].retain_grad()
        return seen["latents"]

    guidance.depth_teacher.encode = recording_encode
    out = guidance.gradient(rgb, PROMPTS, 2, 10, torch.Generator().manual_seed(5), depth=DepthViews(depth, alpha))
    out.loss.backward()
    k = views or len(PROMPTS)

    g = torch.Generator().manual_seed(5)
    t = TimestepRange(0.1, 0.9).timesteps(2, 10, len(PROMPTS), g, 1000)
    torch.randn(out.latents.shape, generator=g)  # the RGB branch's noise
    noise = torch.randn(seen["latents"].shape, generator=g)
    abar = DDIMScheduler.from_config(depth_pipe.scheduler.config).alphas_cumprod[t[:k]].view(-1, 1, 1, 1)
    z0 = seen["latents"].detach()
    zt = abar.sqrt() * z0 + (1 - abar).sqrt() * noise
    eps_c, eps_u = eps_by_hand(depth_pipe, zt, t[:k], PROMPTS[:k]), eps_by_hand(depth_pipe, zt, t[:k], [""] * k)
    expected = 0.5 / len(PROMPTS) * (1 - abar) * (eps_u + 4.0 * (eps_c - eps_u) - noise)
    assert seen["latents"].shape[0] == k
    assert (seen["latents"].grad - expected).abs().max() <= 1e-4 * expected.abs().max() + 1e-7
    assert depth.grad[:k].abs().sum() > 0 and depth.grad[k:].abs().sum() == 0
    assert out.terms["depth_grad_norm"] > 0


def test_config_checks_and_a_scene_without_depth_is_refused_before_any_work():
    for bad, key in ((config(depth_range=(5.0, 3.0)), "depth_range"), (config(depth_weight=-1.0), "depth_weight"),
                     (config(depth_model=""), "depth_model")):
        with pytest.raises(UserError, match=key):
            check_config(bad, "method")
    with pytest.raises(UserError, match="sds-rgbd scores the renders' depth"):
        load_text3d_config("configs/text-to-3d/shapes-sds-rgbd.yaml", ["scene.kind=nerf"])
