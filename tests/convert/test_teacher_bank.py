"""The teacher bank (a cache of the teacher's answers, refreshed by PVD-AL's active selection) and the occupancy
grid it samples from, on a hand-built teacher whose density is known exactly."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gendistill.convert.occupancy import teacher_occupancy
from gendistill.convert.teacher_bank import BankConfig, TeacherBank, ask_teacher, render_teacher_rays

BOUND = 1.5
BLOCK = (0.0, 0.75)
"""The teacher's density is 4 inside [0, 0.75)^3 and 0 elsewhere: two whole cells per axis of an 8^3 grid."""


class BlockTeacher(nn.Module):
    """Density 4 inside the block, 0 elsewhere; colour and features vary with position."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(bound=BOUND)
        self.feature_dim = 6

    def density(self, x):
        inside = ((x >= BLOCK[0]) & (x < BLOCK[1])).all(dim=-1)
        return torch.where(inside, torch.tensor(4.0), torch.tensor(0.0))

    def forward(self, x, directions=None):
        return self.density(x), torch.sigmoid(x)

    def features(self, x):
        return torch.cat([x, x.square()], dim=-1)


def _rays(n, generator):
    origins = torch.tensor([[0.4, 0.4, -4.0]]).expand(n, 3) + torch.randn(n, 3, generator=generator) * 0.3
    directions = torch.tensor([[0.0, 0.0, 1.0]]).expand(n, 3).clone()
    return origins, directions


def _bank(config, generator):
    origins, directions = _rays(64, torch.Generator().manual_seed(5))
    return TeacherBank(BlockTeacher(), origins, directions, torch.ones(3), config, 32, True, generator)


def test_occupancy_grid_marks_exactly_the_teachers_cells_and_never_samples_empty_space():
    grid = teacher_occupancy(BlockTeacher(), 8, torch.Generator().manual_seed(0), dilate=0)
    assert grid.occupied.sum() == 8 and grid.occupied[4:6, 4:6, 4:6].all()
    points = grid.sample(4000, torch.Generator().manual_seed(1))
    assert (BlockTeacher().density(points) > 0).all()
    assert torch.allclose(points.mean(0), torch.full((3,), 0.375), atol=0.02)  # uniform over the block
    assert grid.contains(points).all() and not grid.contains(torch.tensor([[-1.0, 0.2, 0.2]])).any()
    dilated = teacher_occupancy(BlockTeacher(), 8, torch.Generator().manual_seed(0), dilate=1)
    assert dilated.occupied.sum() == 4 ** 3


def test_fresh_points_fill_the_occupied_share_and_carry_the_teachers_answers():
    config = BankConfig(points=1000, rays=8, occupied_share=0.75, occupancy_resolution=8, occupancy_dilate=0)
    bank = _bank(config, torch.Generator().manual_seed(0))
    inside = BlockTeacher().density(bank.points.points) > 0
    # 750 occupancy draws, all inside; of the 250 uniform ones about (0.75 / 3)^3 = 1.6% land in the block
    assert 750 <= int(inside.sum()) <= 770
    expected = ask_teacher(BlockTeacher(), bank.points.points, True)
    assert torch.equal(bank.points.density, expected.density) and torch.equal(bank.points.features, expected.features)


def test_refresh_keeps_the_highest_error_entries_and_answers_the_rest_afresh():
    config = BankConfig(points=100, rays=20, keep_hardest=0.3, occupancy_resolution=8)
    bank = _bank(config, torch.Generator().manual_seed(0))
    point_error = torch.rand(100, generator=torch.Generator().manual_seed(2))
    ray_error = torch.rand(20, generator=torch.Generator().manual_seed(3))
    bank.record(torch.arange(100), point_error, torch.arange(20), ray_error)
    hardest_points = bank.points.points[point_error.topk(30).indices]
    hardest_rays = bank.rays[ray_error.topk(6).indices]
    bank.refresh(torch.Generator().manual_seed(4))
    kept = bank.points.points[:30]
    assert torch.equal(kept, hardest_points) and torch.equal(bank.rays[:6], hardest_rays)
    assert torch.equal(bank.point_error[:30], point_error.topk(30).values) and bank.point_error[30:].eq(0).all()
    fresh = ask_teacher(BlockTeacher(), bank.points.points[30:], True)
    assert torch.equal(bank.points.density[30:], fresh.density) and torch.equal(bank.points.rgb[30:], fresh.rgb)
    assert bank.points.points.shape == (100, 3) and bank.rays.shape == (20,)


def test_cached_rays_skip_empty_cells_without_changing_the_render():
    from gendistill.render.nerf import render_rays

    teacher = BlockTeacher()
    origins, directions = _rays(64, torch.Generator().manual_seed(0))
    grid = teacher_occupancy(teacher, 8, torch.Generator().manual_seed(0), dilate=0)
    rgb, alpha = render_teacher_rays(teacher, origins, directions, 48, torch.ones(3), grid)
    full = render_rays(teacher, origins, directions, 48, background=torch.ones(3))  # midpoints, every sample
    assert torch.allclose(rgb, full.rgb, atol=1e-6) and torch.allclose(alpha, full.alpha, atol=1e-6)
    assert alpha.max() > 0.9 and alpha.min() < 0.01  # some rays cross the block, some miss it


@pytest.mark.nerf
def test_a_cached_bank_step_has_the_on_the_fly_steps_loss_for_the_same_points():
    pytest.importorskip("nerfstudio")
    from gendistill.convert.data import sphere_cameras
    from gendistill.convert.pvd import PVDConfig, PVDRecipe, StageStarts
    from gendistill.render.nerf import FieldConfig, build_field

    cameras = sphere_cameras(2, torch.Generator().manual_seed(0), size=8)
    config = PVDConfig(steps=10, points_per_step=256, rays_per_step=8, num_samples=8,
                       stages=StageStarts(0.0, 0.0, 0.0, 0.5), bank=BankConfig(points=512, rays=16,
                                                                               occupancy_resolution=8))
    student = build_field(FieldConfig(architecture="tensorf-cp", bound=BOUND), seed=0)
    recipe = PVDRecipe(BlockTeacher(), student, cameras, torch.ones(3), config, torch.Generator().manual_seed(0))
    batch = recipe.batch(0, torch.Generator().manual_seed(1))
    assert batch.from_bank and batch.points.shape == (256,)
    cached = recipe.stage_losses(batch, 0.1, torch.Generator().manual_seed(2))
    points = recipe.bank.points.points[batch.points]
    on_the_fly, _ = recipe.point_losses(recipe.teacher_answers(points), 0.1)
    assert set(cached) == {"features", "density", "colour"} == set(on_the_fly)
    for name in cached:
        assert torch.equal(cached[name], on_the_fly[name]), name


def test_student_render_on_occupied_samples_matches_the_full_render_where_it_can_and_keeps_gradients():
    from gendistill.convert.occupancy import OccupancyGrid
    from gendistill.convert.teacher_bank import render_occupied
    from gendistill.render.nerf import render_rays

    field = BlockTeacher()
    origins, directions = _rays(32, torch.Generator().manual_seed(0))
    full_grid = OccupancyGrid(torch.ones(4, 4, 4, dtype=torch.bool), BOUND)
    rgb, alpha = render_occupied(field, origins, directions, 24, torch.ones(3), full_grid,
                                 torch.Generator().manual_seed(3))
    full = render_rays(field, origins, directions, 24, generator=torch.Generator().manual_seed(3),
                       background=torch.ones(3))  # the same jitter, every sample
    assert torch.allclose(rgb, full.rgb, atol=1e-6) and torch.allclose(alpha, full.alpha, atol=1e-6)
    scale = torch.tensor(1.0, requires_grad=True)  # a stand-in parameter: scales the field's density

    class Scaled(BlockTeacher):
        def forward(self, x, directions=None):
            return scale * self.density(x) + 0.1, torch.sigmoid(x)

    empty_grid = OccupancyGrid(torch.zeros(4, 4, 4, dtype=torch.bool), BOUND)
    block_grid = teacher_occupancy(BlockTeacher(), 8, torch.Generator().manual_seed(0), dilate=0)
    _, alpha_empty = render_occupied(Scaled(), origins, directions, 24, torch.ones(3), empty_grid)
    assert alpha_empty.abs().max() < 1e-6  # nothing occupied: the 0.1 haze everywhere is skipped
    _, alpha_block = render_occupied(Scaled(), origins, directions, 24, torch.ones(3), block_grid)
    alpha_block.sum().backward()
    assert scale.grad is not None and scale.grad > 0


def test_focus_replays_the_entries_with_the_largest_recorded_error():
    bank = _bank(BankConfig(points=200, rays=40, occupancy_resolution=8), torch.Generator().manual_seed(0))
    point_error = torch.rand(200, generator=torch.Generator().manual_seed(1))
    ray_error = torch.rand(40, generator=torch.Generator().manual_seed(2))
    bank.record(torch.arange(200), point_error, torch.arange(40), ray_error)
    points, rays = bank.draw(64, 16, torch.Generator().manual_seed(3), hardest_share=0.25)
    assert points.shape == (64,) and rays.shape == (16,)
    assert set(points[:16].tolist()) == set(point_error.topk(16).indices.tolist())
    assert set(rays[:4].tolist()) == set(ray_error.topk(4).indices.tolist())
    plain, _ = bank.draw(64, 16, torch.Generator().manual_seed(3))
    assert not set(point_error.topk(16).indices.tolist()) <= set(plain.tolist())  # no replay without focus
