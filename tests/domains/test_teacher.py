"""The shapes teacher: tokenizer, training command, stock-diffusers export, exact resume."""

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
from gendistill.domains.shapes.teacher_checkpoint import find_latest
from gendistill.domains.shapes.teacher_training import train_teacher
from gendistill.domains.shapes.tokenizer import build_shapes_tokenizer
from gendistill.errors import UserError

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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    result = train_teacher(_tiny(), out)
    return out, result


def test_train_teacher_exports_a_stock_stable_diffusion_folder(tiny_run):
    from diffusers import StableDiffusionPipeline

    out, result = tiny_run
    assert result.state.phase == "done" and result.pipeline_dir == out / "pipeline"
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
    assert pipe.vae.config.scaling_factor == pytest.approx(result.state.scaling_factor)


def test_vae_latents_are_zero_mean_after_the_fold(tiny_run):
    from gendistill.domains.shapes.teacher_checkpoint import load_or_make_renders
    from gendistill.domains.shapes.teacher_data import encode_cache
    from diffusers import AutoencoderKL

    out, _ = tiny_run
    vae = AutoencoderKL.from_pretrained(out / "pipeline" / "vae")
    renders = load_or_make_renders(out / "cache" / "renders.safetensors", "seed=0 n=8", lambda: None)
    mean = encode_cache(vae, renders.images).mean
    assert mean.mean(dim=(0, 2, 3)).abs().max() < 1e-4


def test_resume_matches_an_uninterrupted_run(tmp_path):
    config = _tiny("diffusion.steps=2")
    train_teacher(config, tmp_path / "straight")
    stopped = train_teacher(config, tmp_path / "resumed", max_steps_this_run=2)
    assert stopped.pipeline_dir is None and stopped.state.phase == "diffusion" and stopped.state.step == 1
    with pytest.raises(UserError, match="--resume"):
        train_teacher(config, tmp_path / "resumed")
    train_teacher(config, tmp_path / "resumed", resume=True)
    a = load_file(str(find_latest(tmp_path / "straight" / "checkpoints") / "model.safetensors"))
    b = load_file(str(find_latest(tmp_path / "resumed" / "checkpoints") / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


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


def test_export_from_checkpoint(tiny_run, tmp_path):
    from gendistill.domains.shapes.teacher_export import export_from_checkpoint

    out, _ = tiny_run
    folder = export_from_checkpoint(_tiny(), out, dest=tmp_path / "again")
    assert (folder / "model_index.json").is_file() and (folder / "gendistill.json").is_file()
    with pytest.raises(UserError, match="no checkpoint"):
        export_from_checkpoint(_tiny(), tmp_path / "empty")
