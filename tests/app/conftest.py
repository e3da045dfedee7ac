"""One demo server per test session, on a free localhost port, serving two tiny random pipelines.

The teacher ("teacher", no recipe) and a student ("student-2step", a DMD-style gendistill.json) share the tiny
VAE, so hybrid sampling works. Text-to-3D runs the real ``run_text_to_3d`` on the tiny teacher, except for
prompts that start with "slow" or "quick", which a stand-in runner answers: "slow" streams renders until Stop,
"quick" streams a few steps and writes the files of a run (splats in a ball, a turntable GIF, metrics) at once.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import time
from pathlib import Path

import pytest
import torch

from tiny_pipelines import tiny_sd_pipeline

NEEDS_GRADIO = "the demo tests need gradio and gradio_client: pip install -e '.[demo]'"
HAS_GRADIO = all(importlib.util.find_spec(m) is not None for m in ("gradio", "gradio_client"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demo-models")
    teacher, student = root / "teacher", root / "student-2step"
    tiny_sd_pipeline(teacher, seed=0)
    tiny_sd_pipeline(student, seed=1)
    (teacher / "gendistill.json").write_text(json.dumps({"guidance": 3.0}))
    (student / "gendistill.json").write_text(json.dumps({"recipe": "dmd", "steps": 2, "max_steps": 4,
                                                         "guidance": 0.0}))
    return {"teacher": teacher, "student-2step": student}


def write_quick_run(out_dir: Path) -> None:
    """The files a Gaussians run leaves, made without optimising: 300 splats in a ball, a 3-frame GIF."""
    from PIL import Image

    from gendistill.render.gaussians import init_from_sphere
    from gendistill.render.ply import save_ply

    save_ply(init_from_sphere(300, 0.8, torch.Generator().manual_seed(0), sh_degree=0, opacity=0.8),
             out_dir / "scene.ply")
    frames = [Image.new("RGB", (32, 32), (200, 40 * i, 40)) for i in range(3)]
    frames[0].save(out_dir / "turntable.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    (out_dir / "metrics.json").write_text(json.dumps({"steps": 3}))


class SlowRunner:
    """Stand-in runs for prompts starting with "slow" (4 renders of 8x8 noise every 20 ms until stopped) or
    "quick" (3 such steps, then the files of a run); other prompts go to the real runner."""

    def __init__(self):
        self.running = 0
        self.model_paths = []
        """The model folder each run was given, in order."""

    def __call__(self, settings, model_path, out_dir, on_step):
        from gendistill.app.text_to_3d_jobs import start_text_to_3d

        self.model_paths.append(model_path)

        if settings.prompt.startswith("quick"):
            for step in range(3):
                on_step(step, torch.rand(4, 3, 8, 8), 1.0 / (step + 1))
            return write_quick_run(out_dir)
        if not settings.prompt.startswith("slow"):
            return start_text_to_3d(settings, model_path, out_dir, on_step)
        self.running += 1
        try:
            for step in range(settings.iterations):
                on_step(step, torch.rand(4, 3, 8, 8), 1.0 / (step + 1))
                time.sleep(0.02)
        finally:
            self.running -= 1
        raise AssertionError("the stand-in runner was never stopped")


class SceneRunner:
    """Stand-in for the image-to-3D and edit-3D runs: 3 streamed steps, then a run's files; remembers the
    settings it was given (the edit's scene must be the session's text-to-3D scene)."""

    def __init__(self, animation: str):
        self.animation, self.calls = animation, []

    def __call__(self, settings, model_path, out_dir, on_step):
        self.calls.append(settings)
        for step in range(3):
            on_step(step, torch.rand(4, 3, 8, 8), 1.0 / (step + 1))
        write_quick_run(out_dir)
        (out_dir / "turntable.gif").rename(out_dir / self.animation)


@pytest.fixture(scope="session")
def demo_server(demo_models):
    """(url, demo, runner) of a running demo; closed at the end of the session."""
    if not HAS_GRADIO:
        pytest.skip(NEEDS_GRADIO)
    from gendistill.app.demo import DemoOptions, launch

    runner = SlowRunner()
    options = DemoOptions(models=tuple(str(p) for p in demo_models.values()), assets_dir=None, port=free_port())
    scene_runners = {"image_runner": SceneRunner("turntable.gif"), "edit3d_runner": SceneRunner("before_after.gif")}
    demo, url = launch(options, block=False, runner=runner, **scene_runners)
    demo.scene_runners = scene_runners  # for the tests of the two 3D tabs
    yield url, demo, runner
    demo.close()


@pytest.fixture()
def client(demo_server):
    from gradio_client import Client

    return Client(demo_server[0], verbose=False)
