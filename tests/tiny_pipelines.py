"""Tiny Stable-Diffusion-shaped pipelines built from random weights, for tests (no downloads)."""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch

SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    steps_offset=1, clip_sample=False, set_alpha_to_one=False)


def tiny_tokenizer(folder: Path):
    """A real CLIPTokenizer whose vocabulary is single characters (no merges)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + ",.!'"
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(chars) + [c + "</w>" for c in chars]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16,
                         pad_token="<|endoftext|>")


def tiny_text_encoder(vocab_size: int, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1, projection_dim=hidden)
    return CLIPTextModel(config)


def tiny_unet(cross_attention_dim: int = 32, **extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8, **extra)


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=8, sample_size=16)


def tiny_sd_pipeline(folder: Path | None = None, seed: int = 0, scheduler: dict | None = None,
                     prediction_type: str = "epsilon"):
    """A StableDiffusionPipeline with random tiny weights (16x16 images, 8x8x4 latents); saved if folder given."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = tiny_tokenizer(Path(scratch))
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(len(tokenizer)), tokenizer=tokenizer, unet=tiny_unet(),
        scheduler=DDIMScheduler(**{**SD_SCHEDULER, **(scheduler or {}), "prediction_type": prediction_type}),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if folder is not None:
        pipe.save_pretrained(folder)
    return pipe


def tiny_sd3_pipeline(seed: int = 0, shift: float = 3.0):
    """A StableDiffusion3Pipeline with tiny random weights and no T5 (SD3 allows dropping it)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = tiny_tokenizer(Path(scratch))
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1, projection_dim=32)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=2, joint_attention_dim=4096, caption_projection_dim=16,
                                        pooled_projection_dim=64, out_channels=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=16, shift_factor=0.06, scaling_factor=1.5,
                        use_quant_conv=False, use_post_quant_conv=False)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), vae=vae,
        text_encoder=CLIPTextModelWithProjection(config), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(config), tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(folder: Path | None = None, seed: int = 0):
    """A StableDiffusionXLPipeline with tiny random weights (two text encoders, text_time micro-conditioning)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = tiny_tokenizer(Path(scratch))
    encoder_1 = tiny_text_encoder(len(tokenizer))
    encoder_2 = CLIPTextModelWithProjection(tiny_text_encoder(len(tokenizer)).config)
    unet = tiny_unet(cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=32 + 6 * 8)
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=encoder_1, text_encoder_2=encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
                                     scheduler=EulerDiscreteScheduler.from_config(SD_SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    if folder is not None:
        pipe.save_pretrained(folder)
    return pipe


def unet_model(unet, prediction_type: str = "epsilon", **scheduler):
    """A ``TextToImageModel`` of just a UNet (or a stand-in module with a ``config``) on a DDIM schedule
    (Stable Diffusion's, or ``scheduler`` overrides such as ``trained_betas``): all a step-distillation recipe
    needs of its teacher, without building a text encoder and a VAE."""
    from types import SimpleNamespace

    from diffusers import DDIMScheduler

    from gendistill.backends.text_to_image import TextToImageModel

    ddim = DDIMScheduler(**{**SD_SCHEDULER, **scheduler, "prediction_type": prediction_type})
    return TextToImageModel(SimpleNamespace(unet=unet, scheduler=ddim, components={"unet": unet}))


def make_tiny_teachers(root: Path) -> Path:
    """Tiny SD, SDXL and SD3 pipelines, a prompt list and a captioned image folder (every preset's data) in
    root; ``tiny_teacher_kind`` names the one that stands in for a preset's teacher."""
    tiny_sd_pipeline(root / "sd", seed=0)
    tiny_sdxl_pipeline(root / "sdxl", seed=0)
    tiny_sd3_pipeline(seed=0).save_pretrained(root / "sd3")
    (root / "prompts.txt").write_text("a red cube\na blue sphere\n")
    images = root / "images"
    images.mkdir()
    from PIL import Image

    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (40, 30), colour).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"a {colour} square")
    return root


def tiny_teacher_kind(preset: Path) -> str:
    """The folder of ``make_tiny_teachers`` of the preset's teacher's classes: sd3 for flow teachers, else sdxl
    (an SDXL preset) or sd."""
    from gendistill.config import read_yaml

    teacher = str(read_yaml(preset).get("teacher", ""))
    if "flow-teacher" in teacher or "stable-diffusion-3" in teacher:
        return "sd3"
    return "sdxl" if Path(preset).name.startswith("sdxl") else "sd"


def fit_recipe_to_tiny_teacher(config) -> None:
    """Shrink a preset's recipe to what a two-step run on the tiny teachers can do: one step per progressive
    stage, two regression pairs, the tiny teacher standing in for a shipped ``student_init``, and a per-stage
    KOALA architecture cut to the tiny UNet's two stages."""
    recipe = config.recipe
    if recipe.KIND == "progressive":
        recipe.steps_per_stage = 1
    if getattr(recipe, "regression_pairs", 0):
        recipe.regression_pairs = 2
    if getattr(recipe, "student_init", None):
        recipe.student_init = config.teacher
    architecture = getattr(recipe, "architecture", None)
    if architecture is not None and isinstance(architecture.layers_per_block, list):
        architecture.layers_per_block = architecture.layers_per_block[:2]


def network_file(folder: Path) -> Path:
    """The denoising network's weights in a pipeline folder: the UNet's, or an SD3-style transformer's."""
    for name in ("unet", "transformer"):
        path = Path(folder) / name / "diffusion_pytorch_model.safetensors"
        if path.is_file():
            return path
    raise FileNotFoundError(f"no unet/ or transformer/ weights in {folder}")
