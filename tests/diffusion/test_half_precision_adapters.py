"""float16 and bfloat16: every adapter (VP epsilon / v / sample, flow, LCM boundary, guidance with rescale) is
finite and within half-precision accuracy of float32 on the tiny pipelines' networks.

The half denoiser gets half inputs and a half copy of the network; the reference is the float32 denoiser on
the float32 network. Its error is the network's own rounding error, carried through the adapter: the test
allows ``NETWORK_ROUNDING`` units of the dtype's epsilon relative to the output's scale, times the factor by
which classifier-free guidance amplifies a difference of the two branches. Before the adapters computed their
coefficients in float32, LCM's boundary condition at DMD2's timestep scaling 1e6 returned NaN in float16
(``k t`` overflows at 65504) and v-prediction x0 at zero terminal SNR's sigma 4096 was 0 (``sigma**2``
overflowed). CPU: bfloat16 and (where this torch runs float16 convolutions on the CPU) float16; CUDA: both, in
the ``gpu``-marked test.
"""

from __future__ import annotations

import copy

import pytest
import torch

from gendistill.diffusion.adapters import FlowDenoiser, LCMBoundaryDenoiser, VPDenoiser, lcm_boundary_coefficients
from gendistill.diffusion.denoiser import TextCondition
from gendistill.diffusion.guidance import CFGDenoiser
from tiny_pipelines import tiny_sd3_pipeline, tiny_sd_pipeline

EPS = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
NETWORK_ROUNDING = 8  # measured on the CPU: at most 5.1 units (float16 v-prediction)
GUIDANCE, RESCALE = 3.0, 0.7
VP_SIGMAS = [0.03, 1.0, 14.6, 4096.0]  # SD's sigma_min and sigma_max, and zero terminal SNR's first sigma
FLOW_SIGMAS = [0.05, 1.0, 19.0]  # flow times 0.048, 0.5, 0.95


@pytest.fixture(scope="module")
def networks():
    return tiny_sd_pipeline(seed=0), tiny_sd3_pipeline(seed=0)


def relative_error(half: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest per-sample max |difference|, relative to that sample's max |reference|."""
    diff = (half.float() - ref.float()).abs().flatten(1).amax(1)
    return (diff / ref.float().abs().flatten(1).amax(1)).max().item()


def in_dtype(cond: TextCondition, dtype, device) -> TextCondition:
    return cond.to(device=device, dtype=dtype)


def adapter_pairs(networks, dtype, device):
    """(name, float32 denoiser, half denoiser, sigmas, condition factory, tolerance factor) for every adapter."""
    sd, sd3 = networks
    alphas = sd.scheduler.alphas_cumprod
    unet32 = copy.deepcopy(sd.unet).to(device)
    unet16 = copy.deepcopy(sd.unet).to(device=device, dtype=dtype)
    g = torch.Generator().manual_seed(3)
    vp_cond = TextCondition(torch.randn(len(VP_SIGMAS), 16, 32, generator=g))
    vp_uncond = TextCondition(torch.randn(len(VP_SIGMAS), 16, 32, generator=g))
    pairs = []
    for prediction in ("epsilon", "v_prediction", "sample"):
        ref, half = VPDenoiser(unet32, alphas, prediction), VPDenoiser(unet16, alphas, prediction)
        pairs.append((f"vp-{prediction}", ref, half, VP_SIGMAS, vp_cond, 1))
        for scaling in (10.0, 1e6):  # LCM's default and DMD2's
            pairs.append((f"lcm-{prediction}-{scaling:g}", LCMBoundaryDenoiser(ref, scaling),
                          LCMBoundaryDenoiser(half, scaling), VP_SIGMAS, vp_cond, 1))
        pairs.append((f"cfg-rescale-{prediction}", CFGDenoiser(ref, vp_uncond.to(device), GUIDANCE, RESCALE),
                      CFGDenoiser(half, in_dtype(vp_uncond, dtype, device), GUIDANCE, RESCALE), VP_SIGMAS,
                      vp_cond, 2 * GUIDANCE - 1))
    net32 = copy.deepcopy(sd3.transformer).to(device)
    net16 = copy.deepcopy(sd3.transformer).to(device=device, dtype=dtype)
    n = len(FLOW_SIGMAS)
    flow_cond = TextCondition(torch.randn(n, 8, 4096, generator=g), torch.randn(n, 64, generator=g))
    flow_uncond = TextCondition(torch.randn(n, 8, 4096, generator=g), torch.randn(n, 64, generator=g))
    ref, half = FlowDenoiser(net32), FlowDenoiser(net16)
    pairs.append(("flow", ref, half, FLOW_SIGMAS, flow_cond, 1))
    pairs.append(("cfg-rescale-flow", CFGDenoiser(ref, flow_uncond.to(device), GUIDANCE, RESCALE),
                  CFGDenoiser(half, in_dtype(flow_uncond, dtype, device), GUIDANCE, RESCALE), FLOW_SIGMAS, flow_cond,
                  2 * GUIDANCE - 1))
    return pairs


def check_half_precision(networks, dtype, device):
    failures = []
    for name, ref, half, sigmas, cond, amplification in adapter_pairs(networks, dtype, device):
        sigma = torch.tensor(sigmas, device=device)
        x = torch.randn(len(sigmas), 4, 8, 8, generator=torch.Generator().manual_seed(1)).to(device)  # both nets
        x = x * (1 + sigma.reshape(-1, 1, 1, 1) ** 2).sqrt()
        with torch.no_grad():
            expected = ref(x, sigma, cond.to(device))
            got = half(x.to(dtype), sigma, in_dtype(cond, dtype, device))
        assert got.dtype == dtype, name
        error = relative_error(got, expected)
        tolerance = NETWORK_ROUNDING * EPS[dtype] * amplification
        if not torch.isfinite(got).all() or error > tolerance:
            failures.append(f"{name}: finite={torch.isfinite(got).all().item()} error {error:.3g} > {tolerance:.3g}")
    assert not failures, "\n".join(failures)


def cpu_runs_float16_convolutions() -> bool:
    try:
        one = torch.ones(1, 1, 3, 3, dtype=torch.float16)
        torch.nn.functional.conv2d(one, one)
        return True
    except RuntimeError:
        return False


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_adapters_in_half_precision_on_cpu(networks, dtype):
    if dtype == torch.float16 and not cpu_runs_float16_convolutions():
        pytest.skip("this torch has no float16 convolutions on the CPU (the coefficient test covers float16)")
    check_half_precision(networks, dtype, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_adapters_in_half_precision_on_cuda(networks, dtype, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # a true float32 reference
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    check_half_precision(networks, dtype, "cuda")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_lcm_boundary_coefficients_are_finite_and_exact_for_half_timesteps(dtype):
    t = torch.tensor([0.0, 1.0, 19.0, 500.0, 999.0], dtype=dtype)
    for scaling in (10.0, 1e6):
        c_skip, c_out = lcm_boundary_coefficients(t, scaling)
        assert torch.isfinite(c_skip).all() and torch.isfinite(c_out).all()
        scaled = t.double() * scaling
        assert torch.allclose(c_skip.double(), 0.25 / (scaled**2 + 0.25), rtol=1e-6, atol=0)
        assert torch.allclose(c_out.double(), scaled / (scaled**2 + 0.25).sqrt(), rtol=1e-6, atol=0)
        assert c_skip[0] == 1 and c_out[0] == 0  # the boundary: the identity at t = 0
