"""Run at interpreter start by ``gendistill_torchvision_shim.pth`` (installed with the package, see ``_install``).

Commands that are not ours, nerfstudio's ``ns-train`` first, import torchvision before any gendistill code
runs; under a CPU-only torch the CUDA-only torchvision wheel then dies with "operator torchvision::nms does
not exist". This module puts a finder at the head of ``sys.meta_path`` that waits for the import of
``torchvision._meta_registrations`` (the module that fails). By then torchvision has tried to load its compiled
ops; only if they are still missing (a CPU torch, or any mismatched build) it declares their schemas
(:func:`~gendistill.compat.torchvision_ops.define_missing_torchvision_ops`), then steps aside and lets the
import go on. A working torchvision is left alone.

Cost at start-up: this small module and one string comparison per import until torchvision is imported; no
torch import (a process that never imports torchvision never sees it). Nothing here may raise.
"""

from __future__ import annotations

import sys

_TRIGGER = "torchvision._meta_registrations"


class TorchvisionOpsShim:
    """Meta path finder that finds nothing: it only runs the shim just before ``_TRIGGER`` is imported."""

    def find_spec(self, name, path=None, target=None):
        if name == _TRIGGER:
            remove()
            try:
                from gendistill.compat.torchvision_ops import define_missing_torchvision_ops

                define_missing_torchvision_ops()
            except Exception:  # never break an import that might have worked without us
                pass
        return None

    def invalidate_caches(self) -> None:
        pass


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once), unless torchvision's fragile module is already in."""
    if _TRIGGER in sys.modules or any(isinstance(f, TorchvisionOpsShim) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, TorchvisionOpsShim())


def remove() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, TorchvisionOpsShim)]


install()
