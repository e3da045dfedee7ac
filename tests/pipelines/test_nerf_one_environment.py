"""The nerf extra in one environment with demo, eval and dev: nerfstudio 1.1.5 installed with ``--no-deps`` beside
the ``nerf-numpy2`` extra, numpy 2 and gsplat 1.5 (README, "One environment"). These checks run wherever
nerfstudio is installed, the two-environment route's .venv-nerf included:

- every distribution that the nerfstudio modules gendistill and ``ns-train`` load import is declared: gendistill's
  own dependencies, the ``nerf-numpy2`` extra, or what those depend on (so the extra's list is complete; only
  where nerfstudio went in with ``--no-deps``: with all its dependencies, optional imports load too);
- those modules use no numpy name that the installed numpy lacks (numpy 2 removed ``np.float``, ``np.product``...);
- nerfstudio's splatfacto passes gsplat's strategy and rasteriser only arguments that the installed gsplat takes
  (nerfstudio pins gsplat 1.4.0; the one environment has 1.5).

The components themselves and ``ns-train gendistill-sds`` are run by the other tests marked ``nerf``."""

import ast
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

pytest.importorskip("nerfstudio")
tomllib = pytest.importorskip("tomllib")
from packaging.requirements import Requirement  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402

pytestmark = pytest.mark.nerf

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
NUMPY_ALIASES = ("np", "_np", "onp", "numpy")
# Imported only when installed (try/except ImportError), so they need no declaring.
OPTIONAL = {"brotli": "urllib3's brotli decoding", "pysocks": "urllib3's SOCKS proxies",
            "defusedxml": "PIL's XMP reader",
            **dict.fromkeys(("boto3", "botocore", "jmespath", "s3transfer"),
                            "tensorboard's s3:// files (its gfile tries boto3, in a try block)"),
            "colorama": "torch inductor's coloured logs (runtime_utils tries it)"}
"""Distributions that modules import only when they happen to be installed (inside try/except ImportError): a
machine that has them (e.g. for the AWS command line) loads them, one without does not miss them."""

# What a process running ns-train gendistill-sds (and gendistill's field components) loads, then prints as JSON.
PROBE = """
import json, sys
before = set(sys.modules)
from gendistill.compat.torchvision_ops import define_missing_torchvision_ops
define_missing_torchvision_ops()
from gendistill.render.nerf import fields
fields._nerfstudio()
import gendistill.pipelines.nerfstudio_method
import nerfstudio.scripts.train
from nerfstudio.configs.method_configs import all_methods
assert "gendistill-sds" in all_methods, sorted(all_methods)
loaded = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items()) if n not in before}
print(json.dumps(loaded))
"""


@pytest.fixture(scope="module")
def loaded() -> dict:
    """Module name -> file of everything the probe process imported (a fresh interpreter, ~10 s)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def declared_closure(extra: str) -> set[str]:
    """gendistill's dependencies plus ``extra``'s, and everything installed that they require, transitively."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"][extra]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for line in dist.requires or []:
            sub = Requirement(line)
            environments = [{"extra": e} for e in req.extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(e) for e in environments):
                todo.append(sub)
    return seen


def nerfstudio_came_with_its_dependencies() -> bool:
    """Whether every requirement of nerfstudio's is installed (the two-environment route's .venv-nerf), rather than
    the one environment's ``--no-deps`` install beside the nerf-numpy2 extra."""
    for line in metadata.requires("nerfstudio") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            return False
    return True


def test_every_distribution_that_ns_train_imports_is_declared(loaded):
    if nerfstudio_came_with_its_dependencies():  # then optional imports (boto3 by tensorboard, ...) load as well
        pytest.skip("nerfstudio came with all its dependencies here: the nerf-numpy2 list is checked beside --no-deps")
    owners = metadata.packages_distributions()
    closure = declared_closure("nerf-numpy2")
    assert "viser" in closure and "tyro" in closure  # the extra was read (and is installed)
    undeclared = {}
    for top in sorted({name.split(".")[0] for name in loaded}):
        dists = {canonicalize_name(d) for d in owners.get(top, [])} - {"nerfstudio", "gendistill", *OPTIONAL}
        if dists and not dists & closure:
            undeclared[top] = sorted(dists)
    assert not undeclared, f"imported by ns-train's modules but not in the nerf-numpy2 extra: {undeclared}"


def _library_files(loaded: dict, packages: tuple[str, ...]) -> list[Path]:
    return sorted({Path(f) for name, f in loaded.items()
                   if f and f.endswith(".py") and name.split(".")[0] in packages})


def test_the_loaded_nerfstudio_code_uses_only_names_this_numpy_has(loaded):
    import numpy

    files = _library_files(loaded, ("nerfstudio", "viser", "nerfacc", "splines", "pyquaternion", "tensorly"))
    assert any("nerfstudio" in f.parts for f in files)
    pattern = re.compile(r"(?<![\w.])(?:%s)\.([A-Za-z_]\w*)" % "|".join(NUMPY_ALIASES))
    missing = {}
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        if not re.search(r"import numpy|from numpy", text):
            continue
        for attr in set(pattern.findall(text)):
            if not hasattr(numpy, attr):
                missing.setdefault(attr, []).append(str(path))
    assert not missing, f"numpy {numpy.__version__} lacks names that nerfstudio's loaded code uses: {missing}"


def _keywords_of_calls(tree: ast.AST, callee: str) -> set[str]:
    return {kw.arg for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == callee
            for kw in node.keywords if kw.arg}


def test_splatfacto_passes_gsplat_only_arguments_the_installed_gsplat_takes():
    import dataclasses
    import inspect

    import gsplat
    import nerfstudio.models

    from gsplat.rendering import rasterization
    from gsplat.strategy import DefaultStrategy

    source = Path(nerfstudio.models.__file__).with_name("splatfacto.py").read_text()
    tree = ast.parse(source)
    takes = {
        "DefaultStrategy": {f.name for f in dataclasses.fields(DefaultStrategy)},
        "rasterization": set(inspect.signature(rasterization).parameters),
        "step_post_backward": set(inspect.signature(DefaultStrategy.step_post_backward).parameters),
    }
    for callee, accepted in takes.items():
        passed = _keywords_of_calls(tree, callee)
        assert passed, f"splatfacto no longer calls {callee}: update this test"
        assert passed <= accepted, f"gsplat {gsplat.__version__}'s {callee} does not take {sorted(passed - accepted)}"
