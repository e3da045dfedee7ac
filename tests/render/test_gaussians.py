"""The pure-PyTorch Gaussian rasterizer against gsplat's own reference functions, cameras, and PLY files.

gsplat's ``_rasterize_to_pixels`` needs its CUDA intersection kernel and nerfacc, so the reference here
composites with a literal transcription of gsplat's CUDA forward kernel (one Gaussian at a time, in depth
order, over every pixel), fed by gsplat's pure-torch projection and spherical harmonics.
"""

import math

import numpy as np
import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics

from gendistill.errors import UserError
from gendistill.render.gaussians import GaussianParams, GaussianRenderer, init_from_points, init_from_sphere
from gendistill.render.ply import load_ply, ply_property_names, save_ply
from gendistill.render.rasterize_torch import rasterize_gaussians
from gendistill.render.rig import orbit


def _reference(means, quats, scales, opacities, coeffs, viewmats, Ks, width, height, sh_degree, bg):
    """gsplat's torch projection + SH, then gsplat's CUDA compositing rules one Gaussian at a time."""
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(means, covars, viewmats, Ks, width, height)
    campos = torch.inverse(viewmats)[:, :3, 3]
    dirs = means[None] - campos[:, None]
    colors = _spherical_harmonics(sh_degree, dirs, coeffs.expand(len(viewmats), *coeffs.shape))
    colors = torch.clamp_min(colors + 0.5, 0.0)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 2).to(means.dtype) + 0.5
    images, alphas, exp_depths, n_stopped = [], [], [], 0
    for c in range(len(viewmats)):
        T, rgb, dsum = pix.new_ones(len(pix)), pix.new_zeros(len(pix), 3), pix.new_zeros(len(pix))
        done = torch.zeros(len(pix), dtype=torch.bool)
        for g in torch.argsort(depths[c], stable=True).tolist():
            if not (radii[c, g] > 0).all():
                continue
            dx, dy = (means2d[c, g] - pix).unbind(-1)
            a, b, cc = conics[c, g]
            sigma = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
            alpha = torch.clamp_max(opacities[g] * torch.exp(-sigma), 0.999)
            use = (sigma >= 0) & (alpha >= 1 / 255) & ~done
            next_T = T * (1 - alpha)
            stop = use & (next_T <= 1e-4)
            done, use = done | stop, use & ~stop
            w = torch.where(use, alpha * T, torch.zeros_like(T))
            rgb, dsum = rgb + w[:, None] * colors[c, g], dsum + w * depths[c, g]
            T = torch.where(use, next_T, T)
        n_stopped += int(done.sum())
        images.append((rgb + T[:, None] * bg[c]).reshape(height, width, 3))
        alphas.append((1 - T).reshape(height, width, 1))
        exp_depths.append((dsum / (1 - T).clamp(min=1e-10)).reshape(height, width, 1))
    return torch.stack(images), torch.stack(alphas), torch.stack(exp_depths), n_stopped


def _random_scene(n=200, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 0.5
    means[0] = torch.tensor([5.0, 0.0, 0.0])  # behind camera 0 (culled there), seen by camera 1
    means[1] = torch.tensor([0.0, 0.0, 1.45])  # partly off the top of the image
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.02), math.log(0.25), generator=g))
    quats = torch.randn(n, 4, generator=g)
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    opacities[2:12] = 0.99999  # alpha clamps at 0.999; overlapping, they stop many pixels' compositing
    means[2:12] *= 0.3
    scales[2:12] = 0.2
    coeffs = torch.randn(n, 16, 3, generator=g) * 0.3
    tensors = [means, quats, scales, opacities, coeffs]
    return [t.to(dtype).requires_grad_(True) for t in tensors]


def _cameras(dtype=torch.float64):
    return orbit(2, 20.0, distance=4.0, fov_deg=40.0, width=40, height=32, start_azimuth_deg=10.0).to(dtype=dtype)


@pytest.mark.parametrize("dtype, image_tol, grad_tol", [(torch.float64, 1e-12, 1e-10), (torch.float32, 1e-5, 5e-4)])
def test_torch_rasterizer_matches_gsplat_reference_images_and_gradients(dtype, image_tol, grad_tol):
    scene, cams = _random_scene(dtype=dtype), _cameras(dtype)
    bg = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.4, 0.6]], dtype=dtype)
    args = (*scene, cams.viewmats, cams.Ks, cams.width, cams.height)
    out = rasterize_gaussians(*args, sh_degree=3, backgrounds=bg)
    ref_rgb, ref_alpha, ref_depth, n_stopped = _reference(*args, 3, bg)
    assert n_stopped > 20 and ref_alpha.min() < 0.01 and ref_alpha.max() > 0.999  # every rule is exercised
    for got, want in [(out.colors, ref_rgb), (out.alphas, ref_alpha), (out.depths, ref_depth)]:
        torch.testing.assert_close(got, want, atol=image_tol * want.abs().max().item(), rtol=0)

    weights = [torch.rand(t.shape, generator=torch.Generator().manual_seed(i), dtype=dtype) for i, t in
               enumerate((ref_rgb, ref_alpha, ref_depth))]
    grads = []
    for images in ((out.colors, out.alphas, out.depths), (ref_rgb, ref_alpha, ref_depth)):
        loss = sum((w * x).sum() for w, x in zip(weights, images))
        grads.append(torch.autograd.grad(loss, scene))
    for name, got, want in zip(["means", "quats", "scales", "opacities", "sh"], *grads):
        scale = want.abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(got, want, atol=grad_tol * scale, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


def test_chunked_blending_changes_nothing():
    scene, cams = _random_scene(dtype=torch.float64), _cameras(torch.float64)
    args = (*scene, cams.viewmats, cams.Ks, cams.width, cams.height)
    outs = [rasterize_gaussians(*args, sh_degree=2, chunk_hits=chunk) for chunk in (1 << 20, 300)]
    grads = [torch.autograd.grad((out.colors.sum() + out.alphas.sum() + out.depths.sum()), scene) for out in outs]
    for name in ("colors", "alphas", "depths"):
        torch.testing.assert_close(getattr(outs[1], name), getattr(outs[0], name), atol=1e-12, rtol=0)
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-10 * want.abs().max().item(), rtol=0)


def test_gradients_match_finite_differences_float64():
    g = torch.Generator().manual_seed(3)
    means = (torch.randn(4, 3, generator=g) * 0.3).double().requires_grad_(True)
    log_scales = torch.empty(4, 3).uniform_(-2.0, -1.2, generator=g).double().requires_grad_(True)
    quats = torch.randn(4, 4, generator=g).double().requires_grad_(True)
    logits = torch.randn(4, generator=g).double().requires_grad_(True)
    coeffs = (torch.randn(4, 4, 3, generator=g) * 0.3).double().requires_grad_(True)
    cams = orbit(2, 30.0, distance=3.0, fov_deg=40.0, width=12, height=10).to(dtype=torch.float64)

    def render(means, log_scales, quats, logits, coeffs):
        out = rasterize_gaussians(means, quats, log_scales.exp(), torch.sigmoid(logits), coeffs, cams.viewmats,
                                  cams.Ks, cams.width, cams.height, sh_degree=1,
                                  backgrounds=torch.full((2, 3), 0.5, dtype=torch.float64))
        return out.colors, out.alphas, out.depths

    assert render(means, log_scales, quats, logits, coeffs)[1].max() > 0.5
    assert torch.autograd.gradcheck(render, (means, log_scales, quats, logits, coeffs), eps=1e-6, atol=1e-5,
                                    fast_mode=True)


@pytest.mark.parametrize("mean", [(0.0, 0.0, 0.0), (0.3, -0.2, 0.25)])
def test_single_gaussian_peaks_at_its_projected_pixel(mean):
    cams = orbit(1, 25.0, width=64, height=48, start_azimuth_deg=30.0)
    mean = torch.tensor([mean])
    out = rasterize_gaussians(mean, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.03), torch.tensor([0.8]),
                              torch.ones(1, 3), cams.viewmats, cams.Ks, cams.width, cams.height)
    uvw = cams.Ks[0] @ (cams.viewmats[0] @ torch.cat([mean[0], torch.ones(1)]))[:3]
    u, v = (uvw[:2] / uvw[2]).tolist()
    alpha = out.alphas[0, ..., 0]
    # the peak is at the pixel(s) whose centre is closest to (u, v); with a sub-pixel offset compare both ways
    row, col = divmod(int(alpha.argmax()), cams.width)
    assert abs(col + 0.5 - u) <= 0.5 + 1e-4 and abs(row + 0.5 - v) <= 0.5 + 1e-4
    torch.testing.assert_close(out.means2d[0, 0], torch.tensor([u, v]), atol=1e-4, rtol=0)
    assert alpha.max() <= 0.8 and alpha.sum() > 0.8  # a blob, not a spike
    torch.testing.assert_close(out.colors[0], out.alphas[0].expand(-1, -1, 3))  # black background


def test_renderer_output_layout_and_parameter_groups():
    params = init_from_sphere(300, 0.8, torch.Generator().manual_seed(0), sh_degree=2)
    assert params.sh_degree == 2 and params.sh_coeffs.shape == (300, 9, 3)
    cams = orbit(3, 15.0, width=24, height=20)
    out = GaussianRenderer().render(params, cams, background=torch.ones(3), sh_degree=1)
    assert out.rgb.shape == (3, 3, 20, 24) and out.alpha.shape == out.depth.shape == (3, 1, 20, 24)
    assert out.means2d.shape == out.radii.shape == (3, 300, 2)
    centre = out.depth[:, 0, 10, 12]
    assert (centre > 3.0).all() and (centre < 4.0).all()  # the ball of radius 0.8 seen from distance 4
    groups = params.parameter_groups()
    assert [g.name for g in groups] == ["means", "scales", "quats", "opacities", "sh0", "shN"]
    optimizer = torch.optim.Adam([g.as_torch() for g in groups])
    out.rgb.mean().backward()
    optimizer.step()
    assert all(g.param.grad is not None for g in groups[:5])
    with pytest.raises(ValueError, match="sh_degree"):
        GaussianRenderer().render(params, cams, sh_degree=3)


def test_gsplat_densification_strategy_runs_on_the_render_output():
    from gsplat.strategy import DefaultStrategy

    params = init_from_sphere(200, 0.8, torch.Generator().manual_seed(0), sh_degree=1)
    optimizers = {g.name: torch.optim.SGD([g.as_torch()]) for g in params.parameter_groups()}
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=2, grow_grad2d=1e-9, verbose=False)
    strategy.check_sanity(params.splats, optimizers)
    state, cams = strategy.initialize_state(), orbit(2, 20.0, width=32, height=32)
    for step in range(3):
        out = GaussianRenderer().render(params, cams)
        info = {"means2d": out.means2d, "radii": out.radii, "width": cams.width, "height": cams.height,
                "n_cameras": len(cams), "gaussian_ids": None}
        strategy.step_pre_backward(params.splats, optimizers, state, step, info)
        out.rgb.mean().backward()
        strategy.step_post_backward(params.splats, optimizers, state, step, info, packed=False)
    assert len(params) > 200 and params.sh_coeffs.shape == (len(params), 4, 3)
    assert params.parameter_groups()[0].param is params.means


def test_empty_views_and_a_gaussian_at_the_camera_still_give_finite_gradients():
    cams = orbit(2, 20.0, width=16, height=12)
    params = init_from_sphere(10, 0.5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        params.means.add_(torch.tensor([0.0, 0.0, 100.0]))  # above every camera: nothing on screen
    out = GaussianRenderer().render(params, cams, background=torch.ones(3))
    assert torch.equal(out.rgb, torch.ones_like(out.rgb)) and out.alpha.max() == 0 and out.depth.max() == 0
    (out.rgb.sum() + out.depth.sum()).backward()
    assert params.means.grad.abs().max() == 0
    with torch.no_grad():
        params.means[0] = cams.positions[0]  # depth exactly 0 in camera 0
        params.means[1:] -= torch.tensor([0.0, 0.0, 100.0])
    params.zero_grad()
    out = GaussianRenderer().render(params, cams)
    (out.rgb.sum() + out.depth.sum()).backward()
    assert all(p.grad.isfinite().all() for p in params.parameters()) and out.alpha.max() > 0.05


def test_init_from_points_colours_and_scales():
    points = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1], [0.1, 0.1, 0.1]])
    colors = torch.rand(5, 3)
    params = init_from_points(points, colors, sh_degree=0, opacity=0.25)
    torch.testing.assert_close(params.base_colors, colors)
    torch.testing.assert_close(params.opacities, torch.full((5,), 0.25))
    assert params.shN.shape == (5, 0, 3) and (params.scales > 0.05).all() and (params.scales < 0.2).all()


def _random_params(sh_degree, n=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    return GaussianParams(torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g),
                          torch.randn(n, 4, generator=g), torch.randn(n, generator=g),
                          torch.randn(n, 1, 3, generator=g), torch.randn(n, k - 1, 3, generator=g))


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_ply_round_trip_is_exact(tmp_path, sh_degree):
    params = _random_params(sh_degree)
    loaded = load_ply(save_ply(params, tmp_path / "sub" / "scene.ply"))
    for key in params.splats:
        assert torch.equal(loaded.splats[key], params.splats[key]), key


def test_ply_header_is_the_3dgs_layout(tmp_path):
    path = save_ply(_random_params(3, n=5), tmp_path / "scene.ply")
    raw = path.read_bytes()
    header, body = raw.split(b"end_header\n")
    lines = header.decode("ascii").splitlines()
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 5"]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)] + [
        "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert lines[3:] == [f"property float {name}" for name in names] and ply_property_names(15) == names
    assert len(body) == 5 * len(names) * 4
    data = np.frombuffer(body, dtype="<f4").reshape(5, len(names))
    params = load_ply(path)
    # channel-major f_rest, as the original 3DGS code writes it: all red coefficients first
    np.testing.assert_array_equal(data[:, 9:24], params.shN[:, :, 0].detach().numpy())
    np.testing.assert_array_equal(data[:, 6:9], params.sh0[:, 0].detach().numpy())


def test_ply_reads_gsplat_exports_and_rejects_bad_files(tmp_path):
    from gsplat.exporter import splat2ply_bytes

    params = _random_params(1, n=6)
    shN = params.shN.detach().permute(0, 2, 1).reshape(6, -1)  # noqa: N806 - gsplat's export layout
    raw = splat2ply_bytes(params.means.detach(), params.log_scales.detach(), params.quats.detach(),
                          params.opacity_logits.detach(), params.sh0.detach()[:, 0], shN)
    (tmp_path / "gsplat.ply").write_bytes(raw)
    loaded = load_ply(tmp_path / "gsplat.ply")
    for key in params.splats:
        assert torch.equal(loaded.splats[key], params.splats[key]), key
    with pytest.raises(UserError, match="no PLY file"):
        load_ply(tmp_path / "missing.ply")
    (tmp_path / "mesh.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 0\n"
                                        b"property float x\nend_header\n")
    with pytest.raises(UserError, match="missing vertex properties"):
        load_ply(tmp_path / "mesh.ply")


@pytest.mark.gpu
def test_torch_rasterizer_matches_gsplat_cuda():
    params = init_from_sphere(2000, 0.9, torch.Generator().manual_seed(0), opacity=0.6).cuda()
    with torch.no_grad():
        params.shN.normal_(0, 0.1)
    cams = orbit(3, 20.0, width=64, height=48).to("cuda")
    outs, grads = [], []
    for backend in ("gsplat", "torch"):
        params.zero_grad()
        out = GaussianRenderer(backend=backend).render(params, cams, background=torch.ones(3, device="cuda"))
        (out.rgb.square().sum() + out.alpha.sum() + 0.1 * out.depth.sum()).backward()
        outs.append(out)
        grads.append({k: p.grad.clone() for k, p in params.splats.items()})
    # a pair right at alpha = 1/255 may go either way under CUDA's fast exp: allow one such flip per pixel
    for name in ("rgb", "alpha"):
        torch.testing.assert_close(getattr(outs[1], name), getattr(outs[0], name), atol=5e-3, rtol=0)
    assert (outs[1].rgb - outs[0].rgb).abs().mean() < 1e-4
    solid = (outs[0].alpha > 0.5) & (outs[1].alpha > 0.5)
    torch.testing.assert_close(outs[1].depth[solid], outs[0].depth[solid], atol=5e-2, rtol=0)
    radii_diff = (outs[1].radii - outs[0].radii).abs()  # CUDA's fast log/sqrt may round a ceil differently
    assert radii_diff.max() <= 1 and (radii_diff > 0).float().mean() < 0.01
    for key in params.splats:
        want = grads[0][key]
        torch.testing.assert_close(grads[1][key], want, atol=1e-2 * want.abs().max().item(), rtol=0)
