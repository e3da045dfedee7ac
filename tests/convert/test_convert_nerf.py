"""Conversion between radiance field architectures (PVD) and to/from Gaussians on a tiny scene."""

import pytest
import torch

pytest.importorskip("nerfstudio")

from gendistill.convert.data import shapes_views  # noqa: E402
from gendistill.convert.fit import FitConfig, field_psnr, fit_field, psnr, render_views  # noqa: E402
from gendistill.convert.pvd import PVDConfig, StageStarts, distil_field  # noqa: E402
from gendistill.convert.to_gaussians import (  # noqa: E402
    SplatConfig, fit_splats, place_splats, render_splats, splat_views, teacher_views,
)
from gendistill.render.nerf import FieldConfig, build_field  # noqa: E402

pytestmark = pytest.mark.nerf
SAMPLES = 24


@pytest.fixture(scope="module")
def scene():
    """A tensorf-vm teacher fitted to 12 views of a red cube at 16 px, and 4 held-out views."""
    train = shapes_views("a red cube", 12, torch.Generator().manual_seed(0), size=16)
    test = shapes_views("a red cube", 4, torch.Generator().manual_seed(1), size=16)
    teacher = build_field(FieldConfig(architecture="tensorf-vm"), seed=0)
    fit_field(teacher, train, FitConfig(steps=80, rays_per_step=256, num_samples=SAMPLES),
              torch.Generator().manual_seed(0), progress=False)
    return teacher, train, test


def _tiny_pvd(**kw):
    return PVDConfig(steps=60, points_per_step=2048, rays_per_step=192, num_samples=SAMPLES,
                     stages=StageStarts(0.0, 0.02, 0.05, 0.1), **kw)


@pytest.mark.parametrize("architecture,focus", [("tensorf-cp", False), ("mlp", True), ("hashgrid", False)])
def test_pvd_student_keeps_the_teachers_psnr(scene, architecture, focus):
    teacher, train, test = scene
    teacher_psnr = field_psnr(teacher, test, SAMPLES)
    assert teacher_psnr > 15.0
    student = build_field(FieldConfig(architecture=architecture), seed=1)
    before = psnr(render_views(student, test, SAMPLES), render_views(teacher, test, SAMPLES))
    result = distil_field(teacher, student, train.cameras, train.background, _tiny_pvd(focus=focus),
                          torch.Generator().manual_seed(0), progress=False)
    after = psnr(render_views(student, test, SAMPLES), render_views(teacher, test, SAMPLES))
    assert set(result.final_losses) >= {"density", "colour", "rays"}
    assert after > before + 8.0 and after > 21.0, (before, after)
    assert field_psnr(student, test, SAMPLES) > teacher_psnr - 1.5
    assert all(not p.requires_grad for p in teacher.parameters())


def test_feature_stage_runs_only_for_students_with_encoder_parameters(scene):
    teacher, train, _ = scene
    config = PVDConfig(steps=2, points_per_step=64, rays_per_step=8, num_samples=8,
                       stages=StageStarts(0.0, 0.0, 0.0, 0.0))
    vm = build_field(FieldConfig(architecture="tensorf-cp"), seed=0)
    assert "features" in distil_field(teacher, vm, train.cameras, train.background, config,
                                      torch.Generator().manual_seed(0), progress=False).final_losses
    mlp = build_field(FieldConfig(architecture="mlp"), seed=0)
    assert "features" not in distil_field(teacher, mlp, train.cameras, train.background, config,
                                          torch.Generator().manual_seed(0), progress=False).final_losses


def test_field_to_gaussians_and_back(scene):
    teacher, train, test = scene
    config = SplatConfig(num_gaussians=400, candidate_rays=1024, steps=40, num_samples=SAMPLES)
    splats = place_splats(teacher, train.cameras, config, torch.Generator().manual_seed(0))
    assert len(splats) == 400
    # the splats sit where the teacher is dense: on the object (inside the unit ball), not in empty space
    assert (splats.means.detach().norm(dim=-1) < 1.1).float().mean() > 0.8
    targets = teacher_views(teacher, train.cameras, train.background, SAMPLES)
    teacher_test = render_views(teacher, test, SAMPLES)
    before = psnr(render_splats(splats, test.cameras, test.background), teacher_test)
    fit_splats(splats, targets, config, torch.Generator().manual_seed(0), progress=False)
    after = psnr(render_splats(splats, test.cameras, test.background), teacher_test)
    assert after > 17.0 and after > before, (before, after)
    # and back: a field fitted to the splats' renders
    field = build_field(FieldConfig(architecture="tensorf-vm"), seed=2)
    fit_field(field, splat_views(splats, train.cameras, train.background),
              FitConfig(steps=60, rays_per_step=256, num_samples=SAMPLES), torch.Generator().manual_seed(0),
              progress=False)
    assert psnr(render_views(field, test, SAMPLES), render_splats(splats, test.cameras, test.background)) > 17.0
