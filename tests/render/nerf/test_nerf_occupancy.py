"""The occupancy grid: it never drops a cell the field has density in, its dilation, ray spans, and renders
through it that match the full render where it skips only empty space."""

import pytest
import torch

pytest.importorskip("nerfstudio")

from gendistill.render.nerf import FieldConfig, build_field, render_cameras, render_rays  # noqa: E402
from gendistill.render.nerf.occupancy import OccupancyGrid, dilate  # noqa: E402
from gendistill.render.rig import orbit  # noqa: E402
from gendistill.render.scenes.nerf import BlobField, set_initial_density  # noqa: E402

pytestmark = pytest.mark.nerf


def ball_density(centre, radius, value=50.0):
    """A density that is ``value`` inside a ball and 0 elsewhere."""
    centre = torch.tensor(centre)
    return lambda x: torch.where((x - centre).norm(dim=-1) < radius, value, 0.0)


def test_a_cell_the_field_has_density_in_is_never_dropped():
    field = BlobField(build_field(FieldConfig(architecture="tensorf-vm", bound=1.2), seed=0), 8.0, 0.6)
    grid = OccupancyGrid(1.2, 16, threshold=1.0, dilation=0)
    grid.update(field.density, torch.Generator().manual_seed(0))
    points = (torch.rand(200_000, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 1.2
    with torch.no_grad():
        dense = field.density(points) > 1.0
    assert dense.any() and (~dense).any()
    assert grid.contains(points[dense]).all()  # every point with density lies in a set cell
    assert 0.0 < grid.fraction < 0.5  # and the grid does skip space: the blob fills a ball of radius 0.6


def test_a_small_ball_between_the_cell_corners_is_found_by_the_inner_sample():
    grid = OccupancyGrid(1.0, 4, threshold=1.0)
    grid.update(ball_density((0.25, 0.25, 0.25), 0.05))  # the centre of cell (2, 2, 2), no corner inside
    assert grid.occupied.sum() == 1 and grid.occupied[2, 2, 2]


def test_dilation_grows_the_set_cells_by_whole_cells():
    bits = torch.zeros(7, 7, 7, dtype=torch.bool)
    bits[3, 3, 3] = True
    assert dilate(bits, 1).sum() == 27 and dilate(bits, 2).sum() == 125 and torch.equal(dilate(bits, 0), bits)
    grid = OccupancyGrid(1.0, 8, threshold=1.0, dilation=1)
    grid.update(ball_density((0.0, 0.0, 0.0), 0.1))  # the 8 cells that share the centre corner
    assert grid.occupied.sum() == 4 ** 3


def test_span_keeps_the_occupied_stretch_and_empties_rays_that_miss():
    grid = OccupancyGrid(1.0, 16, threshold=1.0, march_steps=64)
    grid.update(ball_density((0.0, 0.0, 0.0), 0.3))
    origins = torch.tensor([[-3.0, 0.0, 0.0], [-3.0, 0.8, 0.0]])
    directions = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    near, far = grid.span(origins, directions, torch.full((2,), 2.0), torch.full((2,), 4.0))
    assert near[0] <= 3.0 - 0.3 and far[0] >= 3.0 + 0.3  # the whole ball is kept
    assert near[0] > 2.0 + 0.4 and far[0] < 4.0 - 0.4  # and most of the empty cube is cut
    assert near[1] == far[1]  # the second ray passes beside the ball


class CountingField(torch.nn.Module):
    """A field that counts the points it is asked about."""

    def __init__(self, field):
        super().__init__()
        self.field, self.config, self.points = field, field.config, 0

    def forward(self, x, directions=None):
        self.points += x.shape[0]
        return self.field(x, directions)


def test_a_render_through_the_grid_matches_the_full_render_and_queries_fewer_points():
    empty = build_field(FieldConfig(architecture="tensorf-vm", bound=1.2), seed=0)
    set_initial_density(empty, 0.01)
    field = CountingField(BlobField(empty, 8.0, 0.6))
    grid = OccupancyGrid(1.2, 24, threshold=0.05, dilation=1, march_steps=96)
    grid.update(field.field.density)
    cameras = orbit(2, width=12, height=12)
    with torch.no_grad():
        full_rgb, full_alpha = render_cameras(field, cameras, 256, background=torch.ones(3))
        full_points, field.points = field.points, 0
        rgb, alpha = render_cameras(field, cameras, 128, background=torch.ones(3), occupancy=grid)
    # half the samples, all of them where the density is: the same picture up to quadrature error
    assert (alpha - full_alpha).abs().max() < 0.03 and (rgb - full_rgb).abs().max() < 0.03
    assert full_alpha.max() > 0.9 and full_alpha.min() < 0.1
    assert field.points < 0.25 * full_points


def test_gradients_reach_the_field_only_through_occupied_samples():
    field = build_field(FieldConfig(architecture="tensorf-vm", bound=1.0), seed=0)
    grid = OccupancyGrid(1.0, 8, threshold=1.0)
    grid.occupied.zero_()
    grid.occupied[4:, 4:, 4:] = True  # only the octant x, y, z > 0
    origins = torch.tensor([[-2.0, 0.5, 0.5], [-2.0, -0.5, -0.5]])
    directions = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    out = render_rays(field, origins, directions, 16, occupancy=grid)
    assert out.weights[1].abs().sum() == 0  # the second ray never meets a set cell
    assert (out.positions[0, :, 0] >= -0.26).all()  # the first ray's samples start at the set cells
    out.rgb[0].sum().backward()
    assert field.encoder.plane_coef.grad.abs().sum() > 0
