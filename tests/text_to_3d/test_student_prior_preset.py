"""The shipped student-prior preset (shapes-sds-lcm) is what the benchmark measured: the SDS preset with the LCM
student as the model, half the iterations and the densification schedule scaled with them."""

import dataclasses
import json

from gendistill.backends.student_card import StudentCard
from gendistill.jobs.text_to_3d.config import load_text3d_config
from gendistill.shipped import resolve_preset, shipped_model

MEASURED = ["model=shapes-lcm-4step", "iterations=300", "scene.densify.strategy.refine_start=50",
            "scene.densify.strategy.refine_every=25", "scene.densify.prune.after=225", "scene.densify.prune.every=25"]
"""benchmarks/text_to_3d.py --models lcm --tag it300's overrides of the SDS preset (README's command)."""


def test_the_lcm_prior_preset_is_the_sds_preset_as_measured():
    lcm = load_text3d_config(resolve_preset("shapes-sds-lcm", "text-to-3d"))
    measured = load_text3d_config(resolve_preset("shapes-sds", "text-to-3d"), MEASURED)
    assert dataclasses.asdict(lcm) == dataclasses.asdict(measured)


def test_its_schedule_keeps_the_sds_presets_proportions():
    lcm = load_text3d_config(resolve_preset("shapes-sds-lcm", "text-to-3d"))
    sds = load_text3d_config(resolve_preset("shapes-sds", "text-to-3d"))
    ratio = lcm.iterations / sds.iterations
    pairs = ((lcm.scene.densify.strategy, sds.scene.densify.strategy), (lcm.scene.densify.prune, sds.scene.densify.prune))
    for a, b in pairs:
        for key in ("refine_start", "refine_every", "after", "every"):
            if hasattr(a, key):
                assert getattr(a, key) == getattr(b, key) * ratio, key


def test_its_model_embeds_the_guidance_scale():
    folder = shipped_model("shapes-lcm-4step")
    unet = json.loads((folder / "unet" / "config.json").read_text())
    assert unet["time_cond_proj_dim"] and StudentCard.read(folder).recipe == "lcm"
