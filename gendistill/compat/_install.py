"""Build hooks (``[tool.setuptools.cmdclass]`` in pyproject.toml) that install ``gendistill_torchvision_shim.pth``
at the root of site-packages, by a wheel install and by an editable install alike.

Python runs a ``.pth`` file's ``import`` lines at every start-up (``site``), before any command's code: the
only place a shim can act before ``ns-train`` imports torchvision. setuptools offers no option for a file at
the root of site-packages: ``data_files`` land under ``sys.prefix``, and an editable install copies no build
output at all. So ``build_py`` adds the file to ``build_lib`` (what a wheel holds) and ``editable_wheel`` writes
it beside the editable finder's own ``.pth``. pip records it in RECORD: uninstalling removes it.

Loaded by setuptools from its file at build time: it must import nothing from gendistill.
"""

from __future__ import annotations

from pathlib import Path

from setuptools.command.build_py import build_py as _build_py

try:
    from setuptools.command.editable_wheel import editable_wheel as _editable_wheel
except ImportError:  # setuptools < 64: no PEP 660 editable installs
    _editable_wheel = None

PTH_NAME = "gendistill_torchvision_shim.pth"
# an ImportError (gendistill removed, the .pth left behind) must not print a traceback at every start-up
PTH_TEXT = ("import sys; exec('try:\\n import gendistill.compat._startup\\nexcept Exception:\\n pass')\n")


def write_pth(folder: str | Path) -> Path:
    path = Path(folder) / PTH_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PTH_TEXT)
    return path


class BuildPy(_build_py):
    """``build_py`` that also puts the start-up ``.pth`` at the root of ``build_lib`` (the wheel's purelib)."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            write_pth(self.build_lib)

    def get_outputs(self, include_bytecode=True):
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs.append(str(Path(self.build_lib) / PTH_NAME))
        return outputs


if _editable_wheel is not None:
    class EditableWheel(_editable_wheel):
        """``editable_wheel`` that writes the start-up ``.pth`` into the editable wheel's root too."""

        def _install_namespaces(self, installation_dir, pth_prefix):
            # a private hook of setuptools (64 to 84 at least): if a later one drops it, the editable install
            # still works, only without the .pth (tests/pipelines/test_ns_train_command.py would say so)
            parent = getattr(super(), "_install_namespaces", None)
            if parent is not None:
                parent(installation_dir, pth_prefix)
            write_pth(installation_dir)
