"""The analytic ray caster: exact silhouettes and depths, shading range, determinism, distinct shapes."""

import math

import numpy as np
import pytest
import torch

from gendistill.domains.shapes import (
    COLOURS,
    SHAPES,
    Camera,
    Scene,
    camera_rays,
    orbit_cameras,
    render,
    render_batch,
    stack_cameras,
)
from gendistill.domains.shapes import intersect as geo


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small renders gain nothing from intra-op threads, and on a busy 2-core box they thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("azimuth, elevation", [(0, 0), (123, 35), (250, -10)])
def test_sphere_silhouette_area_matches_the_analytic_disc(azimuth, elevation):
    """A centred sphere images to a disc of radius f r / sqrt(d^2 - r^2) around the principal point."""
    cam = Camera(azimuth, elevation, width=96, height=96)
    out = render(Scene("sphere", "red"), cam, supersample=4)
    d, r, f = cam.distance, geo.SPHERE_RADIUS, cam.focal
    radius = f * r / math.sqrt(d * d - r * r)
    area = out.alpha.sum().item()
    assert area == pytest.approx(math.pi * radius**2, rel=0.02)
    # and it is centred on the principal point
    v, u = torch.meshgrid(torch.arange(96) + 0.5, torch.arange(96) + 0.5, indexing="ij")
    w = out.alpha[0]
    assert (w * u).sum().item() / area == pytest.approx(48.0, abs=0.05)
    assert (w * v).sum().item() / area == pytest.approx(48.0, abs=0.05)


def _centre_depth(shape: str, cam: Camera) -> float:
    out = render(Scene(shape, "blue"), cam, supersample=1)
    assert out.alpha[0, cam.height // 2, cam.width // 2] == 1
    return out.depth[0, cam.height // 2, cam.width // 2].item()


@pytest.mark.parametrize("azimuth, elevation", [(0, 0), (77, 12), (200, 48), (315, -10)])
def test_centre_depth_is_exact_for_sphere_cube_cylinder(azimuth, elevation):
    """An odd-sized image's centre pixel looks down the optical axis, through the origin."""
    cam = Camera(azimuth, elevation, width=65, height=65)
    d = cam.distance
    assert _centre_depth("sphere", cam) == pytest.approx(d - geo.SPHERE_RADIUS, abs=1e-5)
    h = geo.CUBE_HALF_EDGE
    assert _centre_depth("cube", cam) == pytest.approx(d * (1 - h / cam.position.abs().max().item()), abs=1e-5)
    # the axis ray enters a cylinder through its side or its cap, whichever comes first
    horizontal = d * math.cos(math.radians(elevation))
    vertical = d * abs(math.sin(math.radians(elevation)))
    side = d * (1 - geo.CYLINDER_RADIUS / horizontal)
    cap = d * (1 - geo.CYLINDER_HALF_HEIGHT / vertical) if vertical > 0 else -math.inf
    assert _centre_depth("cylinder", cam) == pytest.approx(max(side, cap), abs=1e-5)


def test_centre_depth_is_exact_for_the_cone_from_the_horizon():
    cam = Camera(140, 0, width=65, height=65)
    radius_at_z0 = geo.CONE_RADIUS * geo.CONE_APEX_Z / (geo.CONE_APEX_Z - geo.CONE_BASE_Z)
    assert _centre_depth("cone", cam) == pytest.approx(cam.distance - radius_at_z0, abs=1e-5)


def _pmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Product of per-row polynomials (coefficients lowest degree first), (M, n) x (M, m) -> (M, n+m-1)."""
    out = np.zeros((a.shape[0], a.shape[1] + b.shape[1] - 1))
    for i in range(a.shape[1]):
        out[:, i:i + b.shape[1]] += a[:, i:i + 1] * b
    return out


def _reference_torus_depth(cam: Camera) -> np.ndarray:
    """First root of the torus's implicit quartic along each pixel-centre ray, in float64 with numpy."""
    b = stack_cameras([cam])
    origins, dirs = camera_rays(b.viewmats.double(), b.Ks.double(), cam.width, cam.height)
    rot = geo.torus_rotation(torch.float64).numpy()
    d = dirs.reshape(-1, 3).numpy() @ rot
    o = np.broadcast_to(origins[0].numpy() @ rot, d.shape)
    x, y, z = (np.stack([o[:, k], d[:, k]], 1) for k in range(3))  # coordinates, linear in t
    R, r = geo.TORUS_MAJOR_RADIUS, geo.TORUS_MINOR_RADIUS
    rho2 = _pmul(x, x) + _pmul(y, y)
    s = rho2 + _pmul(z, z)
    s[:, 0] += R * R - r * r
    quartic = _pmul(s, s) - 4 * R * R * np.pad(rho2, ((0, 0), (0, 2)))
    monic = quartic / quartic[:, 4:]
    companion = np.zeros((len(d), 4, 4))
    companion[:, 1, 0] = companion[:, 2, 1] = companion[:, 3, 2] = 1
    companion[:, :, 3] = -monic[:, :4]
    roots = np.linalg.eigvals(companion)
    real = (abs(roots.imag) < 1e-7) & (roots.real > 0)
    return np.where(real, roots.real, np.inf).min(1).reshape(cam.height, cam.width)


@pytest.mark.parametrize("azimuth, elevation", [(0, 20), (135, 5), (280, -10), (60, 58)])
def test_torus_depth_matches_the_quartic(azimuth, elevation):
    cam = Camera(azimuth, elevation, width=48, height=48)
    out = render(Scene("torus", "green"), cam, supersample=1)
    ref = _reference_torus_depth(cam)
    hit = np.isfinite(ref)
    assert (out.alpha[0].numpy() == 1).tolist() == hit.tolist()
    np.testing.assert_allclose(out.depth[0].numpy()[hit], ref[hit], atol=1e-4, rtol=0)


def test_torus_hole_shows_from_the_front():
    out = render(Scene("torus", "red"), Camera(0, 0, width=65, height=65), supersample=1)
    assert out.alpha[0, 32, 32] == 0  # the optical axis passes through the hole
    assert out.alpha[0].sum() > 500


def test_render_range_background_and_shading():
    out = render_batch([Scene(s, c) for s in SHAPES for c in ("red", "cyan")], orbit_cameras(10, 30))
    assert out.rgb.shape == (10, 3, 64, 64) and out.alpha.shape == out.depth.shape == (10, 1, 64, 64)
    assert out.rgb.min() >= 0 and out.rgb.max() <= 1
    background = out.alpha == 0
    assert (out.rgb[background.expand_as(out.rgb)] == 1).all()
    assert (out.depth[background] == 0).all()
    covered = out.depth[out.alpha == 1]
    assert covered.min() > 4.0 - 1.0 and covered.max() < 4.0 + 1.0
    # inside the object, each pixel is the albedo scaled by a shading factor in [AMBIENT, 1]
    for i, name in enumerate(c for _ in SHAPES for c in ("red", "cyan")):
        inner = (out.alpha[i, 0] == 1)
        albedo = torch.tensor(COLOURS[name])
        factor = out.rgb[i][:, inner].T / albedo
        assert factor.min() >= 0.4 - 1e-5 and factor.max() <= 1 + 1e-5
        assert torch.allclose(factor, factor[:, :1].expand_as(factor), atol=1e-5)  # hue is kept


def test_front_is_lit_and_back_is_darker():
    def mean_object_colour(camera: Camera) -> float:
        out = render(Scene("sphere", "yellow"), camera, supersample=1)
        return out.rgb[:, out.alpha[0] == 1].mean().item()

    assert mean_object_colour(Camera(180, 10)) < mean_object_colour(Camera(0, 10)) - 0.1


def test_renders_are_deterministic_and_batch_equals_single():
    scenes = [Scene(s, "pink") for s in SHAPES]
    cams = [Camera(20 + 50 * i, 5 + 10 * i) for i in range(5)]
    a = render_batch(scenes, cams)
    b = render_batch(scenes, cams)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.depth, b.depth)
    single = render(scenes[3], cams[3])
    assert torch.equal(single.rgb, a.rgb[3]) and torch.equal(single.alpha, a.alpha[3])


def test_every_shape_fits_the_frame_with_a_margin():
    cams = [c for el in (-10, 25, 60) for c in orbit_cameras(8, el)]
    for shape in SHAPES:
        out = render_batch([Scene(shape, "red")] * len(cams), cams, supersample=1)
        alpha = out.alpha[:, 0]
        border = torch.ones(64, 64, dtype=torch.bool)
        border[3:-3, 3:-3] = False
        assert alpha[:, border].sum() == 0, shape
        coverage = alpha.mean(dim=(1, 2))
        assert coverage.min() > 0.08, shape


def test_shapes_have_distinct_silhouettes():
    cams = [Camera(0, 0), Camera(30, 25), Camera(200, 55), Camera(100, -10)]
    masks = {}
    for shape in SHAPES:
        masks[shape] = render_batch([Scene(shape, "red")] * len(cams), cams, supersample=1).alpha[:, 0] > 0.5
    for i, a in enumerate(SHAPES):
        for b in SHAPES[i + 1:]:
            inter = (masks[a] & masks[b]).flatten(1).sum(1).float()
            union = (masks[a] | masks[b]).flatten(1).sum(1).float()
            assert (inter / union).max() < 0.95, (a, b)
