"""benchmarks/multi_cfg.py: its negatives are another shape and colour, fixed by the seed, and its teacher is the
three-condition guidance of the recipe's formula in one network call per step."""

import importlib.util
import sys
from pathlib import Path

import torch

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.distill.multi_cfg import multi_cfg_target
from gendistill.domains.shapes import all_scenes
from tiny_pipelines import tiny_sd_pipeline

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "multi_cfg.py"
_spec = importlib.util.spec_from_file_location("bench_multi_cfg", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench
_spec.loader.exec_module(bench)


def test_negatives_are_another_shape_and_colour_fixed_by_the_seed():
    scenes = all_scenes()[:10]
    negatives = bench.negative_captions(scenes, seed=0)
    assert negatives == bench.negative_captions(scenes, seed=0) != bench.negative_captions(scenes, seed=1)
    for scene, negative in zip(scenes, negatives):
        assert scene.shape not in negative and scene.colour not in negative


def test_teacher_is_the_three_condition_guidance_in_one_call():
    model = TextToImageModel(tiny_sd_pipeline(seed=0))
    prompts, negatives = ["a red cube", "a blue cone"], ["a green ball", ""]
    with torch.no_grad():
        denoiser, _ = bench.teacher_denoiser(model, prompts, negatives, 2.5, 0.5)
        calls = []
        model.network.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
        x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([1.0, 3.0])
        got = denoiser(x, sigma)
        cond, uncond = model.encode_batch(prompts)
        negative, _ = model.encode_batch(negatives)
        inner = model.denoiser()
        expected = multi_cfg_target(inner(x, sigma, cond), inner(x, sigma, negative), inner(x, sigma, uncond),
                                    torch.full((2,), 2.5), torch.full((2,), 0.5))
    assert calls[0] == 6
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
