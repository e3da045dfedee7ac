"""The SD3-shaped shapes flow teacher: its flow-matching loss, its reuse of the VP teacher's parts, the job on
the one trainer (stop and resume), and the stock StableDiffusion3Pipeline folder it exports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from gendistill.config import load_config
from gendistill.domains.shapes.flow_teacher import FlowNoiseConfig, FlowTeacherConfig, clip_with_identity_projection
from gendistill.domains.shapes.flow_teacher_recipe import flow_matching_loss, logit_normal_t
from gendistill.errors import UserError
from gendistill.jobs.train_flow_teacher import export_flow_from_checkpoint, train_flow_teacher

ROOT = Path(__file__).resolve().parents[2] / "gendistill" / "configs"


def _tiny(*overrides: str) -> FlowTeacherConfig:
    return load_config(FlowTeacherConfig, ROOT / "shapes-flow-teacher-tiny.yaml", list(overrides))


class VelocityOracle(torch.nn.Module):
    """Returns ``eps - x0`` after checking it was fed SD3's ``x_t`` and ``1000 t``."""

    def __init__(self, x0, eps, t):
        super().__init__()
        self.x0, self.eps, self.t = x0, eps, t

    def forward(self, hidden_states, timestep, encoder_hidden_states, pooled_projections):
        tb = self.t.view(-1, 1, 1, 1)
        assert torch.allclose(hidden_states, (1 - tb) * self.x0 + tb * self.eps)
        assert torch.allclose(timestep, 1000 * self.t)
        return SimpleNamespace(sample=self.eps - self.x0)


def test_flow_matching_loss_is_zero_at_the_true_velocity_and_the_velocity_mse_elsewhere():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0.1, 0.5, 0.9])
    context, pooled = torch.zeros(3, 5, 16), torch.zeros(3, 16)
    assert flow_matching_loss(VelocityOracle(x0, eps, t), x0, context, pooled, t, eps).abs().max() == 0

    class Zero(VelocityOracle):
        def forward(self, hidden_states, **kwargs):
            return SimpleNamespace(sample=torch.zeros_like(hidden_states))

    zero = flow_matching_loss(Zero(x0, eps, t), x0, context, pooled, t, eps)
    assert torch.allclose(zero, (eps - x0).pow(2).mean(dim=(1, 2, 3)))


def test_training_times_are_logit_normal():
    g = torch.Generator().manual_seed(0)
    t = logit_normal_t(20000, FlowNoiseConfig(logit_mean=1.0, logit_std=0.5), g)
    assert 0 < t.min() and t.max() < 1
    logits = torch.logit(t)
    assert logits.mean().item() == pytest.approx(1.0, abs=0.02) and logits.std().item() == pytest.approx(0.5, abs=0.02)


def test_identity_projection_keeps_clips_states_and_pooled_embedding():
    from gendistill.backends.loading import load_pipeline

    base = load_pipeline("shapes-teacher").text_encoder
    projected = clip_with_identity_projection(base)
    ids = torch.tensor([[49406, 320, 330, 49407, 49407, 49407]]) % base.config.vocab_size
    ids[0, 0], ids[0, 3:] = base.config.bos_token_id, base.config.eos_token_id
    a = base(ids, output_hidden_states=True)
    b = projected(ids, output_hidden_states=True)
    assert torch.allclose(a.hidden_states[-2], b.hidden_states[-2])
    assert torch.allclose(a.pooler_output, b.text_embeds)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow-teacher")
    return out, train_flow_teacher(_tiny(), out, progress=False, log=lambda line: None)


def test_the_job_exports_a_stock_sd3_folder_with_the_vp_teachers_frozen_parts(tiny_run):
    from diffusers import StableDiffusion3Pipeline

    out, result = tiny_run
    assert result.stages["diffusion"].step == 2 and (out / "pipeline" / "README.md").is_file()
    index = json.loads((out / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline" and index["text_encoder_3"] == [None, None]
    pipe = StableDiffusion3Pipeline.from_pretrained(out / "pipeline", text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(["a red cube", "a blue torus, side view"], num_inference_steps=2, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()
    vp = _weights(ROOT.parent / "assets" / "shapes-teacher" / "vae")
    assert all(torch.equal(v, _weights(out / "pipeline" / "vae")[k]) for k, v in vp.items())
    assert pipe.vae.config.shift_factor == 0.0


def test_exported_transformer_is_the_ema_of_the_last_checkpoint(tiny_run, tmp_path):
    out, _ = tiny_run
    again = export_flow_from_checkpoint(_tiny(), out, dest=tmp_path / "again", log=lambda line: None)
    a, b = _weights(out / "pipeline" / "transformer"), _weights(again / "transformer")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stop_and_resume_gives_the_weights_of_an_uninterrupted_run(tiny_run, tmp_path):
    out, _ = tiny_run

    def stop_after_one(stage, step, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_flow_teacher(_tiny(), tmp_path, progress=False, on_step=stop_after_one, log=lambda line: None)
    assert json.loads((tmp_path / "train_report.json").read_text())["stopped"]["step"] == 1
    with pytest.raises(UserError, match="--resume"):
        train_flow_teacher(_tiny(), tmp_path, progress=False, log=lambda line: None)
    train_flow_teacher(_tiny(), tmp_path, resume=True, progress=False, log=lambda line: None)
    a, b = _weights(out / "pipeline" / "transformer"), _weights(tmp_path / "pipeline" / "transformer")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_teacher_command_picks_the_flow_job_by_kind_and_generate_samples_it(tmp_path):
    run = [sys.executable, "-m", "gendistill", "train-teacher", "--config", "shapes-flow-teacher-tiny",
           "--out", str(tmp_path / "run")]
    done = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path / "run" / "pipeline"
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
    generate = [sys.executable, "-m", "gendistill", "generate", "--model", str(folder), "--prompt", "a red cube",
                "--steps", "2", "--num-images", "1", "--out", str(tmp_path / "cube.png")]
    done = subprocess.run(generate, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "FlowMatchEulerDiscreteScheduler" in done.stdout and (tmp_path / "cube.png").is_file()


def test_preset_loads_and_bad_values_are_user_errors():
    full = load_config(FlowTeacherConfig, ROOT / "shapes-flow-teacher.yaml")
    assert full.transformer.num_layers >= 1 and full.base == "shapes-teacher"
    with pytest.raises(UserError, match="valid keys"):
        _tiny("transformer.layers=3")
    with pytest.raises(UserError, match="noise.shift"):
        _tiny("noise.shift=0")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(Path(folder).glob("*.safetensors")) for k, v in load_file(f).items()}
