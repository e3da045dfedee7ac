"""The HumanGaussian presets against the reference's own settings (alvinliu0/HumanGaussian, configs/test.yaml
and threestudio/models/guidance/dual_branch_guidance.py): CFG 7.5, t in [0.02, 0.98], the negative score only at
t >= 200 of 1000 with the noise-free domain score, depth loss weight 0.5, and a prune-only phase late in
training (the reference: steps 2400-3300 of 3600, every 300) that stops growth and prunes by size and opacity."""

from gendistill.config import load_config
from gendistill.jobs.text_to_3d.config import Text3DConfig

PRESETS = "configs/text-to-3d"


def preset(name: str) -> Text3DConfig:
    return load_config(Text3DConfig, f"{PRESETS}/{name}.yaml")


def test_npg_preset_holds_the_references_guidance_schedule():
    method = preset("shapes-npg").method
    assert method.KIND == "npg" and method.guidance_scale == 7.5
    assert method.negative_t_min == 0.2 and method.domain_score == "nfsd"  # mask = t < 200 -> eps_u, else eps_u - eps_n
    assert (method.negative_scale.start, method.negative_scale.end) == (1.0, 1.0)
    # the reference samples t in [0.02, 0.98]; the preset also anneals the upper end to 0.5 (the reference code's
    # max_step_percent_annealed, which its test.yaml leaves off)
    assert method.timesteps.t_min == 0.02 and method.timesteps.t_max_start == 0.98
    assert method.timesteps.t_max_end == 0.5


def test_sds_rgbd_preset_holds_the_references_depth_weight_and_shared_timesteps():
    method = preset("shapes-sds-rgbd").method
    assert method.KIND == "sds-rgbd" and method.depth_weight == 0.5 and method.depth_guidance_scale is None
    assert method.depth_model == "shapes-depth-teacher" and tuple(method.depth_range) == (3.0, 5.0)


def test_prune_only_phase_comes_late_and_prunes_by_size_and_opacity():
    for name in ("shapes-npg", "shapes-sds-rgbd"):
        config = preset(name)
        prune = config.scene.densify.prune
        start = prune.after / config.iterations
        assert 2 / 3 <= start <= 0.8, name  # the reference: 2400 / 3600
        assert prune.every / config.iterations <= 300 / 3600 + 1e-9
        assert prune.max_scale > 0 and prune.min_opacity > 0
