"""The orbit rig (random cameras on a sphere, turntables) and the view phrases of its cameras."""

import math

import pytest
import torch

from gendistill.errors import UserError
from gendistill.render.cameras import DISTANCE, Camera, Cameras, stack_cameras
from gendistill.render.rig import ELEVATION_RANGE_DEG, OrbitRig, orbit
from gendistill.render.view_prompts import VIEW_PHRASES, view_phrase


def _look_at(position: torch.Tensor) -> torch.Tensor:
    """Reference world-to-camera (4, 4) float64 by cross products: OpenCV axes, world z up, looking at 0."""
    forward = -position / position.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = torch.stack([right, down, forward])
    m[:3, 3] = -m[:3, :3] @ position
    return m


def test_sample_draws_the_same_cameras_as_before_for_a_seed():
    """Numbers drawn by the shapes world's sample_cameras before the rig existed (seed 0)."""
    rig = OrbitRig(elevation_range_deg=(-10.0, 60.0), width=32, height=24)
    cams = rig.sample(3, torch.Generator().manual_seed(0))
    expected = [(349.2190806503591, 39.547390507985156), (165.37785952588231, 54.452337888537215),
                (232.20868324419533, 45.38035245262126)]
    assert [(c.azimuth_deg, c.elevation_deg) for c in cams] == expected
    assert all((c.distance, c.fov_deg, c.width, c.height) == (DISTANCE, 35.0, 32, 24) for c in cams)


def test_sample_is_one_uniform_draw_per_camera_and_prefix_stable():
    rig = OrbitRig(distance=3.0, fov_deg=50.0, elevation_range_deg=(0.0, 30.0))
    u = torch.rand(5, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    cams = rig.sample(5, torch.Generator().manual_seed(7))
    for cam, (ua, ue) in zip(cams, u.tolist()):
        assert cam == Camera(360.0 * ua, 30.0 * ue, 3.0, 50.0, 64, 64)
    assert rig.sample(2, torch.Generator().manual_seed(7)) == cams[:2]
    many = OrbitRig().sample(2000, torch.Generator().manual_seed(1))
    elevations = torch.tensor([c.elevation_deg for c in many])
    lo, hi = ELEVATION_RANGE_DEG
    assert lo <= elevations.min() and elevations.max() < hi and abs(elevations.mean() - (lo + hi) / 2) < 2


def test_orbit_azimuths_are_evenly_spaced_from_the_start():
    cams = OrbitRig().orbit(8, 25.0, start_azimuth_deg=350.0)
    azimuths = [c.azimuth_deg for c in cams]
    assert azimuths[0] == 350.0 and all(0.0 <= a < 360.0 for a in azimuths)
    steps = [(b - a) % 360.0 for a, b in zip(azimuths, azimuths[1:] + azimuths[:1])]
    assert steps == pytest.approx([45.0] * 8)
    assert {c.elevation_deg for c in cams} == {25.0}
    assert [c.azimuth_deg for c in OrbitRig().orbit(4)] == [0.0, 90.0, 180.0, 270.0]


@pytest.mark.parametrize("n, elevation, start", [(4, 20.0, 0.0), (7, -10.0, 33.0), (1, 60.0, 359.0)])
def test_batched_orbit_is_the_rigs_orbit_and_a_true_look_at(n, elevation, start):
    batch = orbit(n, elevation, distance=3.0, fov_deg=40.0, width=48, height=40, start_azimuth_deg=start)
    rig = OrbitRig(distance=3.0, fov_deg=40.0, width=48, height=40)
    stacked = stack_cameras(rig.orbit(n, elevation, start_azimuth_deg=start))
    assert isinstance(batch, Cameras) and (batch.width, batch.height) == (48, 40) and len(batch) == n
    assert torch.equal(batch.viewmats, stacked.viewmats) and torch.equal(batch.Ks, stacked.Ks)
    torch.testing.assert_close(batch.positions.norm(dim=1), torch.full((n,), 3.0))
    for i in range(n):
        a, e = math.radians(start + 360.0 * i / n), math.radians(elevation)
        position = 3.0 * torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)],
                                      dtype=torch.float64)
        torch.testing.assert_close(batch.viewmats[i].double(), _look_at(position), atol=1e-6, rtol=0)
    focal = 20.0 / math.tan(math.radians(20.0))
    torch.testing.assert_close(batch.Ks[0], torch.tensor([[focal, 0, 24.0], [0, focal, 20.0], [0, 0, 1.0]]))


def test_stack_cameras_needs_one_image_size():
    with pytest.raises(ValueError, match="one image size"):
        stack_cameras([Camera(0, 0, width=8, height=8), Camera(0, 0, width=9, height=8)])
    with pytest.raises(ValueError, match="at least one"):
        stack_cameras([])


@pytest.mark.parametrize("kwargs, message", [
    ({"elevation_range_deg": (30.0, 10.0)}, "elevation_range_deg[1]"),
    ({"elevation_range_deg": (-95.0, 10.0)}, "elevation_range_deg[0]"),
    ({"distance": 0.5}, "distance"),
    ({"fov_deg": 180.0}, "fov_deg"),
])
def test_a_bad_rig_is_a_user_error(kwargs, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        OrbitRig(**kwargs)


@pytest.mark.parametrize("azimuth, elevation, phrase", [
    (0.0, 0.0, "front view"), (44.99, 10.0, "front view"), (315.01, 10.0, "front view"),
    (45.0, 10.0, "side view"), (315.0, 10.0, "side view"), (90.0, -10.0, "side view"),
    (135.0, 10.0, "side view"), (225.0, 10.0, "side view"),
    (135.01, 10.0, "back view"), (180.0, 10.0, "back view"), (224.99, 10.0, "back view"),
    (180.0, 50.0, "back view"), (0.0, 50.01, "overhead view"), (180.0, 60.0, "overhead view"),
    (-30.0, 0.0, "front view"), (720.0, 0.0, "front view"),
])
def test_view_phrase_boundaries(azimuth, elevation, phrase):
    assert view_phrase(Camera(azimuth, elevation)) == phrase
    assert phrase in VIEW_PHRASES


def test_a_batch_converts_and_indexes_keeping_the_batch_dimension():
    batch = orbit(3, 20.0, width=16, height=12)
    again = Cameras.from_batch(batch)
    assert torch.equal(again.viewmats, batch.viewmats) and (again.width, again.height) == (16, 12)
    assert len(batch[0]) == 1 and len(batch[-1]) == 1 and len(batch[1:]) == 2
    torch.testing.assert_close(batch[2].viewmats[0], Camera(240.0, 20.0, width=16, height=12).viewmat)
