"""The shapes teacher: tokenizer, training job on the one trainer, stock-diffusers export, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gendistill.config import load_config
from gendistill.domains.shapes.camera import Camera
from gendistill.domains.shapes.captions import VOCABULARY, caption
from gendistill.domains.shapes.scene import all_scenes
from gendistill.domains.shapes.teacher import TeacherConfig
from gendistill.domains.shapes.tokenizer import build_shapes_tokenizer
from gendistill.errors import UserError
from gendistill.jobs.train_teacher import export_from_checkpoint, train_teacher

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "shapes-teacher-tiny.yaml"
VIEW_CAMERAS = [Camera(0.0, 10.0), Camera(90.0, 10.0), Camera(180.0, 10.0), Camera(0.0, 60.0)]


def _words(text: str) -> list[str]:
    return text.replace(",", " ,").split()


def test_every_caption_word_is_one_token():
    tokenizer = build_shapes_tokenizer()
    vocab = tokenizer.get_vocab()
    captions = [caption(s, c) for s in all_scenes() for c in [None, *VIEW_CAMERAS]]
    assert len(set(captions)) == len(all_scenes()) * 5
    for text in captions:
        ids = tokenizer(text).input_ids
        words = _words(text)
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        assert ids[1:-1] == [vocab[w + "</w>"] for w in words], text
    assert all(w + "</w>" in vocab for w in VOCABULARY)


def test_any_text_tokenizes_and_pads_like_stable_diffusion():
    tokenizer = build_shapes_tokenizer()
    assert tokenizer.model_max_length == 16
    out = tokenizer(["", "Zebra-striped ÜFO!! 123", "a red cube " * 20], padding="max_length",
                    max_length=tokenizer.model_max_length, truncation=True).input_ids
    assert all(len(ids) == 16 for ids in out)
    assert out[0][:2] == [tokenizer.bos_token_id, tokenizer.eos_token_id]
    assert tokenizer.unk_token_id not in out[1][1:-1] or tokenizer.unk_token_id == tokenizer.eos_token_id


def _tiny(*overrides: str) -> TeacherConfig:
    return load_config(TeacherConfig, TINY, list(overrides))


def test_presets_load_and_unknown_keys_fail():
    full = load_config(TeacherConfig, ROOT / "configs" / "shapes-teacher.yaml")
    assert full.model.text.hidden_size > 0 and _tiny().vae.steps == 1
    with pytest.raises(UserError, match="valid keys"):
        _tiny("diffusion.stepz=3")
    with pytest.raises(UserError, match="checkpoint.keep"):
        _tiny("checkpoint.keep=0")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    result = train_teacher(_tiny(), out, progress=False, log=lambda line: None)
    return out, result


def test_train_teacher_exports_a_stock_stable_diffusion_folder(tiny_run):
    from diffusers import StableDiffusionPipeline

    out, result = tiny_run
    assert list(result.stages) == ["vae", "diffusion", "decoder"] and result.pipeline_dir == out / "pipeline"
    assert all(r.step == 1 and r.stopped is None for r in result.stages.values())
    assert (out / "config.yaml").is_file() and (out / "pipeline" / "README.md").is_file()
    index = json.loads((out / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["requires_safety_checker"] is False
    weights = list((out / "pipeline").rglob("*.safetensors"))
    assert len(weights) == 3 and not list((out / "pipeline").rglob("*.bin"))
    assert (out / "pipeline" / "tokenizer" / "vocab.json").is_file()
    assert (out / "pipeline" / "tokenizer" / "merges.txt").is_file()

    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(["a red cube", "an orange torus, back view"], num_inference_steps=2, guidance_scale=3.0,
                  generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()
    assert pipe.vae.config.scaling_factor == pytest.approx(result.scaling_factor)


def test_vae_latents_are_zero_mean_after_the_fold(tiny_run):
    from gendistill.domains.shapes.teacher_data import encode_cache, load_or_make_renders
    from diffusers import AutoencoderKL

    out, _ = tiny_run
    vae = AutoencoderKL.from_pretrained(out / "pipeline" / "vae")
    renders = load_or_make_renders(out / "cache" / "renders.safetensors", "seed=0 n=8", lambda: None)
    mean = encode_cache(vae, renders.images).mean
    assert mean.mean(dim=(0, 2, 3)).abs().max() < 1e-4


def _stop_after(updates: int):
    """An on_step hook that interrupts the run (as Ctrl-C does) after ``updates`` trainer steps in all."""
    seen = []

    def on_step(stage, step, row):
        seen.append((stage, step))
        if len(seen) == updates:
            raise KeyboardInterrupt

    return on_step


def _pipeline_weights(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{f.parent.name}/{k}": v for f in sorted(folder.rglob("*.safetensors")) for k, v in load_file(f).items()}


RESUME = ("vae.steps=2", "diffusion.steps=2", "decoder.steps=2", "checkpoint.every_steps=1")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    train_teacher(_tiny(*RESUME), out, progress=False, log=lambda line: None)
    return out


@pytest.mark.parametrize("stop_after, damage", [(3, False), (6, True)], ids=["in-unet-stage", "damaged-newest"])
def test_kill_and_resume_gives_the_weights_of_an_uninterrupted_run(straight_run, tmp_path, stop_after, damage):
    """Stopped in the UNet stage (after the VAE stage and its fold), or at the decoder stage's last step with
    its newest checkpoint then damaged (resume falls back to the one before): the resumed run ends
    bit-identical to the uninterrupted one."""
    config, out, lines = _tiny(*RESUME), tmp_path / "resumed", []
    with pytest.raises(KeyboardInterrupt):
        train_teacher(config, out, progress=False, on_step=_stop_after(stop_after), log=lines.append)
    report = json.loads((out / "train_report.json").read_text())
    stage, step = ("diffusion", 1) if stop_after == 3 else ("decoder", 2)
    assert report["stopped"] == {"reason": "interrupted", "stage": stage, "step": step}
    assert not (out / "pipeline").exists()
    if damage:
        newest = out / "checkpoints" / "decoder" / "checkpoints" / "step-0000002" / "modules.safetensors"
        newest.write_bytes(newest.read_bytes()[:100])
    with pytest.raises(UserError, match="--resume"):
        train_teacher(config, out, progress=False, log=lines.append)
    result = train_teacher(config, out, resume=True, progress=False, log=lines.append)
    assert result.stages[stage].resumed_from is not None
    assert any("unreadable" in line for line in lines) == damage
    a, b = _pipeline_weights(straight_run / "pipeline"), _pipeline_weights(out / "pipeline")
    assert a.keys() == b.keys() and len(a) > 100
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_without_checkpoints_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        train_teacher(_tiny(), tmp_path, resume=True, progress=False)


@pytest.mark.skipif(not (ROOT / "assets" / "shapes-teacher" / "model_index.json").is_file(),
                    reason="no shipped teacher")
def test_shipped_teacher_loads_and_samples():
    from diffusers import StableDiffusionPipeline

    folder = ROOT / "assets" / "shapes-teacher"
    guidance = json.loads((folder / "gendistill.json").read_text())["guidance"]
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 20e6
    images = pipe(["a red cube", "a blue sphere, front view"], num_inference_steps=4, guidance_scale=guidance,
                  generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()


def test_export_from_checkpoint_gives_the_exported_weights(tiny_run, tmp_path):
    out, _ = tiny_run
    folder = export_from_checkpoint(_tiny(), out, dest=tmp_path / "again", log=lambda line: None)
    assert (folder / "model_index.json").is_file() and (folder / "gendistill.json").is_file()
    a, b = _pipeline_weights(out / "pipeline"), _pipeline_weights(folder)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="no checkpoint"):
        export_from_checkpoint(_tiny(), tmp_path / "empty")
