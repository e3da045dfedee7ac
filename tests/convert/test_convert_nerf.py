"""Conversion between radiance field architectures (PVD) and to/from Gaussians on a tiny scene, each a recipe
run on the one trainer."""

import pytest
import torch

pytest.importorskip("nerfstudio")

from gendistill.convert.data import shapes_views  # noqa: E402
from gendistill.convert.fit import FIELD_PHASE, FitConfig, NerfFitRecipe, field_optimizer  # noqa: E402
from gendistill.convert.measure import (  # noqa: E402
    field_psnr, psnr, render_splats, render_views, splat_views, teacher_views,
)
from gendistill.convert.pvd import STUDENT_PHASE, PVDConfig, PVDRecipe, StageStarts  # noqa: E402
from gendistill.convert.teacher_bank import BankConfig  # noqa: E402
from gendistill.convert.to_gaussians import SPLATS_PHASE, SplatConfig, SplatFitRecipe, place_splats  # noqa: E402
from gendistill.jobs.convert import RecipeRun, TrainerSection, train_recipe  # noqa: E402
from gendistill.render.nerf import FieldConfig, build_field  # noqa: E402

pytestmark = pytest.mark.nerf
SAMPLES = 24


def train(recipe, steps, phase, out_dir, seed=0):
    """Run ``recipe`` for ``steps`` on the trainer, checkpointing only at the end."""
    run = RecipeRun(recipe, steps, phase, field_optimizer())
    return train_recipe(run, TrainerSection(checkpoint_every=0), seed, out_dir, progress=False)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A tensorf-vm teacher fitted to 12 views of a red cube at 16 px, and 4 held-out views."""
    train_views = shapes_views("a red cube", 12, torch.Generator().manual_seed(0), size=16)
    test = shapes_views("a red cube", 4, torch.Generator().manual_seed(1), size=16)
    teacher = build_field(FieldConfig(architecture="tensorf-vm"), seed=0)
    recipe = NerfFitRecipe(teacher, train_views, FitConfig(steps=80, rays_per_step=256, num_samples=SAMPLES))
    train(recipe, 80, FIELD_PHASE, tmp_path_factory.mktemp("teacher"))
    return teacher, train_views, test


def _tiny_pvd(**kw):
    return PVDConfig(steps=60, points_per_step=2048, rays_per_step=192, num_samples=SAMPLES,
                     stages=StageStarts(0.0, 0.02, 0.05, 0.1), **kw)


@pytest.mark.parametrize("architecture,focus,bank", [("tensorf-cp", False, True), ("mlp", True, False),
                                                     ("hashgrid", False, True), ("tensorf-cp", False, False)])
def test_pvd_student_keeps_the_teachers_psnr(scene, tmp_path, architecture, focus, bank):
    teacher, train_views, test = scene
    teacher_psnr = field_psnr(teacher, test, SAMPLES)
    assert teacher_psnr > 15.0
    student = build_field(FieldConfig(architecture=architecture), seed=1)
    before = psnr(render_views(student, test, SAMPLES), render_views(teacher, test, SAMPLES))
    config = _tiny_pvd(focus=focus, bank=BankConfig(enabled=bank, points=16384, rays=1024, refresh_every=20))
    recipe = PVDRecipe(teacher, student, train_views.cameras, train_views.background, config,
                       torch.Generator().manual_seed(0))
    result = train(recipe, config.steps, STUDENT_PHASE, tmp_path)
    after = psnr(render_views(student, test, SAMPLES), render_views(teacher, test, SAMPLES))
    assert {"student/density", "student/colour", "student/rays"} <= set(result.history[-1])
    assert after > before + 8.0 and after > 21.0, (before, after)
    assert field_psnr(student, test, SAMPLES) > teacher_psnr - 1.5
    assert all(not p.requires_grad for p in teacher.parameters())
    if focus:  # PVD-AL on the fly remembers the worst points and rays of the last step
        assert recipe.focus_points.shape == (1024, 3) and recipe.focus_rays.shape == (96,)
    if bank:  # the bank was refreshed twice (steps 20 and 40) and recorded the student's errors
        assert int(recipe.refreshed_at) == 40 and recipe.bank.point_error.gt(0).any()


def test_feature_stage_runs_only_for_students_with_encoder_parameters(scene):
    teacher, train_views, _ = scene
    config = PVDConfig(steps=2, points_per_step=64, rays_per_step=8, num_samples=8,
                       stages=StageStarts(0.0, 0.0, 0.0, 0.0))

    def terms(architecture):
        student = build_field(FieldConfig(architecture=architecture), seed=0)
        recipe = PVDRecipe(teacher, student, train_views.cameras, train_views.background, config,
                           torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(0)
        groups = {group.name for group in recipe.phases()[0].groups}
        return set(recipe.loss(recipe.batch(0, g), STUDENT_PHASE, 0, g).terms), groups, set(recipe.modules())

    cp_terms, cp_groups, cp_modules = terms("tensorf-cp")
    assert "features" in cp_terms and "projection" in cp_groups and "projection" in cp_modules
    mlp_terms, mlp_groups, mlp_modules = terms("mlp")
    assert "features" not in mlp_terms and "projection" not in mlp_groups and mlp_modules == {"student"}


def test_field_to_gaussians_and_back(scene, tmp_path):
    teacher, train_views, test = scene
    config = SplatConfig(num_gaussians=400, candidate_rays=1024, steps=40, num_samples=SAMPLES)
    splats = place_splats(teacher, train_views.cameras, config, torch.Generator().manual_seed(0))
    assert len(splats) == 400
    # the splats sit where the teacher is dense: on the object (inside the unit ball), not in empty space
    assert (splats.means.detach().norm(dim=-1) < 1.1).float().mean() > 0.8
    targets = teacher_views(teacher, train_views.cameras, train_views.background, SAMPLES)
    teacher_test = render_views(teacher, test, SAMPLES)
    before = psnr(render_splats(splats, test.cameras, test.background), teacher_test)
    train(SplatFitRecipe(splats, targets, config), config.steps, SPLATS_PHASE, tmp_path / "splats")
    after = psnr(render_splats(splats, test.cameras, test.background), teacher_test)
    assert after > 17.0 and after > before, (before, after)
    # and back: a field fitted to the splats' renders
    field = build_field(FieldConfig(architecture="tensorf-vm"), seed=2)
    fit = FitConfig(steps=60, rays_per_step=256, num_samples=SAMPLES)
    train(NerfFitRecipe(field, splat_views(splats, train_views.cameras, train_views.background), fit), fit.steps,
          FIELD_PHASE, tmp_path / "field")
    assert psnr(render_views(field, test, SAMPLES), render_splats(splats, test.cameras, test.background)) > 17.0


def test_splat_targets_skip_empty_space_and_match_the_full_renders(scene):
    from gendistill.convert.to_gaussians import teacher_targets

    teacher, train_views, _ = scene
    full = teacher_views(teacher, train_views.cameras, train_views.background, SAMPLES)
    fast = teacher_targets(teacher, train_views.cameras, train_views.background, SAMPLES,
                           torch.Generator().manual_seed(0))
    assert fast.images.shape == full.images.shape and torch.equal(fast.cameras.viewmats, full.cameras.viewmats)
    assert psnr(fast.images, full.images) > 40.0
