"""An LCM-LoRA run writes OUT/lora/pytorch_lora_weights.safetensors, and stock diffusers uses it as LCM-LoRA's
users do: ``pipe.load_lora_weights(OUT/lora)`` on the teacher gives the exported (merged) student exactly, and
the same file loads onto a differently fine-tuned copy of the teacher and changes its samples."""

from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline, LCMScheduler
from safetensors.torch import load_file

from gendistill.backends.lora import LORA_WEIGHTS_FILE
from gendistill.config import load_config
from gendistill.jobs.distill.config import DistillConfig
from gendistill.jobs.distill.run import run_distill
from test_presets import tiny_overrides, tiny_teachers  # noqa: F401  (tiny_teachers: the fixture)

PRESETS = Path(__file__).parents[2] / "configs" / "distill"
LORA_PRESETS = ["shapes-lcm-lora", "sdxl-lcm-lora"]


def lora_run(preset: str, teachers: Path, out: Path):
    """Two steps of the preset on the tiny teacher, with a learning rate that moves the adapters visibly, an
    alpha unlike the rank (the scale must travel in the file) and an EMA that differs from the student."""
    path = PRESETS / f"{preset}.yaml"
    overrides = tiny_overrides(path, teachers) + [
        "trainer.optimizers.student.lr=0.05", "trainer.optimizers.student.warmup_steps=0", "trainer.ema_decay=0.5",
        "recipe.lora_alpha=8", "recipe.lora_rank=4"]
    config = load_config(DistillConfig, path, overrides)
    return config, run_distill(config, out, progress=False)


def stock(folder, lora: Path | None = None):
    """What a user does: the stock pipeline, the LoRA loaded, LCMScheduler swapped in."""
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(lora)
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    return pipe


def latents(pipe, steps: int = 4) -> torch.Tensor:
    with torch.no_grad():
        return pipe(["a red cube", "a blue sphere"], num_inference_steps=steps, guidance_scale=0.0,
                    output_type="latent", generator=torch.Generator().manual_seed(0)).images


def plain_unet_weights(pipe) -> dict[str, torch.Tensor]:
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # keeps the fused weights, removes the adapter modules
    return pipe.unet.state_dict()


@pytest.mark.parametrize("preset", LORA_PRESETS)
def test_lora_file_on_the_teacher_is_the_exported_student(preset, tiny_teachers, tmp_path):  # noqa: F811
    config, result = lora_run(preset, tiny_teachers, tmp_path)
    lora = tmp_path / "lora"
    assert (lora / LORA_WEIGHTS_FILE).is_file()
    student = stock(result.pipeline)
    assert isinstance(student.scheduler, LCMScheduler)
    teacher_lora = stock(config.teacher, lora)

    expected = latents(student)
    got = latents(teacher_lora)
    assert torch.isfinite(got).all()
    assert (got - expected).abs().max() <= 1e-4
    assert (latents(_teacher_lcm(config.teacher)) - expected).abs().max() > 1e-3  # the LoRA did something

    merged, fused = student.unet.state_dict(), plain_unet_weights(teacher_lora)
    assert merged.keys() == fused.keys()
    assert max((merged[k] - fused[k]).abs().max().item() for k in merged) <= 1e-5

    # with ema_decay 0.5 the EMA is not the last student, so the equalities above say the file is the EMA's
    state = load_file(lora / LORA_WEIGHTS_FILE)
    assert state and all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in state)

    card = (result.pipeline / "README.md").read_text()
    assert f'pipe.load_lora_weights("{lora}")' in card
    assert "pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)" in card


def _teacher_lcm(folder):
    pipe = stock(folder)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    return pipe


def test_lora_file_loads_onto_a_differently_fine_tuned_teacher(tiny_teachers, tmp_path):  # noqa: F811
    config, _ = lora_run("shapes-lcm-lora", tiny_teachers, tmp_path / "run")
    lora = tmp_path / "run" / "lora"
    finetune = stock(config.teacher)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in finetune.unet.parameters():  # a "fine-tune": every base weight moved by ~2% of its spread
            p.add_(0.02 * p.std().nan_to_num(0.0) * torch.randn(p.shape, generator=generator))
    finetune.save_pretrained(tmp_path / "finetune")

    base = _teacher_lcm(tmp_path / "finetune")
    with_lora = stock(tmp_path / "finetune", lora)
    file_keys = load_file(lora / LORA_WEIGHTS_FILE).keys()
    loaded = [k for k in with_lora.unet.state_dict() if ".lora_A." in k or ".lora_B." in k]
    assert len(loaded) == len(file_keys)  # every adapter in the file found its layer

    a, b = latents(base), latents(with_lora)
    assert torch.isfinite(b).all()
    assert (a - b).abs().max() > 1e-3  # the LoRA changes the fine-tune's samples
    on_teacher = latents(stock(config.teacher, lora))
    assert (b - on_teacher).abs().max() > 1e-4  # and the fine-tune's own weights still count
