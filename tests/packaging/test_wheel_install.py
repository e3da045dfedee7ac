"""A built wheel, installed into a fresh venv and run from an empty folder, finds its shipped models and presets.

The venv sees the current environment's packages (``--system-site-packages``: torch, diffusers) but gets
gendistill only from the wheel; the test checks that the checkout's editable install does not shadow it.
"""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

DISTILL_FAST = ["trainer.steps=2", "trainer.checkpoint_every=2", "trainer.eval_every=0", "data.batch_size=2",
                "recipe.fake_updates=1", "eval.during_training_samples=0", "eval.num_samples=2",
                "eval.teacher_steps=[1]", "eval.student_steps=[1]", "eval.grid_prompts=2"]
TEXT3D_FAST = ["iterations=5", "batch_size=1", "turntable.frames=2", "turntable.size=16", "progress=false"]


def _sets(values: list[str]) -> list[str]:
    return [item for value in values for item in ("--set", value)]


def _run(argv: list[str], cwd: Path, timeout: float = 300, code: int = 0) -> subprocess.CompletedProcess:
    """Run ``argv`` in ``cwd`` with a clean environment (no PYTHONPATH, no hub access); check its exit code."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    what = " ".join(argv[:3])
    assert proc.returncode == code, f"{what} exited {proc.returncode}:\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (so the checkout gets no build/ folder)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "pkg"  # not "src": pip mistakes a folder of that name for something else
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "gendistill", source / "gendistill", ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(work / "dist"), str(source)], cwd=work)
    (found,) = (work / "dist").glob("gendistill-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A venv on top of this environment's packages, with gendistill installed from the wheel only."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(root)], cwd=root.parent)
    python = root / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", "--no-index", str(wheel)],
         cwd=root.parent)
    return root


@pytest.fixture
def empty(tmp_path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def test_the_wheel_carries_the_shipped_models_and_presets(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for path in ("gendistill/assets/shapes-teacher/model_index.json",
                 "gendistill/assets/shapes-teacher/unet/diffusion_pytorch_model.safetensors",
                 "gendistill/assets/shapes-teacher/tokenizer/merges.txt",
                 "gendistill/assets/shapes-dmd2-1step/gendistill.json",
                 "gendistill/assets/shapes-classifier/model.safetensors",
                 "gendistill/configs/distill/shapes-lcm.yaml", "gendistill/configs/shapes-teacher.yaml"):
        assert path in names, path
    shipped = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "gendistill").glob("assets/**/*") if p.is_file())
    assert set(shipped) <= set(names)  # every shipped file, not just the ones named above


def test_the_wheel_installs_the_torchvision_startup_hook(wheel, venv, empty):
    """``gendistill_torchvision_shim.pth`` sits at the wheel's root (site-packages once installed) and puts the
    shim's finder on ``sys.meta_path`` of every interpreter of the venv (what ``ns-train`` needs)."""
    assert "gendistill_torchvision_shim.pth" in zipfile.ZipFile(wheel).namelist()
    assert list(venv.glob("lib/python*/site-packages/gendistill_torchvision_shim.pth"))
    code = ("import sys; shims = [f for f in sys.meta_path if type(f).__name__ == 'TorchvisionOpsShim']; "
            "print(len(shims), sys.modules[type(shims[0]).__module__].__file__, 'torch' in sys.modules)")
    count, where, torch_loaded = _run([str(venv / "bin" / "python"), "-c", code], cwd=empty).stdout.split()
    assert count == "1" and where.startswith(str(venv)) and torch_loaded == "False"  # the wheel's; no torch yet


def test_installed_gendistill_is_the_wheel_not_the_checkout(venv, empty):
    code = "import gendistill, gendistill.shipped as s; print(gendistill.__file__); print(s.shipped_models_dir())"
    out = _run([str(venv / "bin" / "python"), "-c", code], cwd=empty).stdout.splitlines()
    assert all(line.startswith(str(venv)) for line in out[-2:]), out


def test_generate_with_a_short_model_name(venv, empty):
    _run([str(venv / "bin" / "gendistill"), "generate", "--model", "shapes-dmd2-1step", "--prompt", "a red cube",
          "--steps", "1", "--num-images", "1", "--out", "g.png"], cwd=empty)
    assert (empty / "g.png").stat().st_size > 0


def test_distill_from_an_empty_folder(venv, empty):
    _run([str(venv / "bin" / "gendistill"), "distill", *_sets(DISTILL_FAST), "--out", "OUT1"], cwd=empty)
    out = empty / "OUT1"
    for name in ("config.yaml", "metrics.json", "grid.png", "pipeline/model_index.json", "pipeline/gendistill.json"):
        assert (out / name).is_file(), name


def test_presets_by_name_and_legacy_paths_from_an_empty_folder(venv, empty):
    """A preset found by name reaches the config checks (a bad key), instead of "config file not found"."""
    for preset in ("shapes-lcm", "configs/distill/shapes-lcm.yaml"):
        proc = _run([str(venv / "bin" / "gendistill"), "distill", preset, "--set", "trainer.stepz=1", "--out", "OUT"],
                    cwd=empty, code=2)
        assert "unknown config key 'trainer.stepz'" in proc.stderr, proc.stderr[-500:]


def test_text_to_3d_from_an_empty_folder(venv, empty):
    _run([str(venv / "bin" / "gendistill"), "text-to-3d", "a red sphere", *_sets(TEXT3D_FAST), "--out", "OUT2"],
         cwd=empty)
    out = empty / "OUT2"
    for name in ("scene.ply", "config.yaml", "metrics.json"):
        assert (out / name).is_file(), name
