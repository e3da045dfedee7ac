"""Let torchvision import under a CPU-only torch build.

PyPI has torchvision only as CUDA builds. Under a CPU torch its ``_meta_registrations`` fail with
"operator torchvision::nms does not exist" because its compiled ops never registered. diffusers,
transformers, open_clip and nerfstudio import torchvision whenever it is installed, so that failure would
break them too. Declaring the two op schemas with ``torch.library`` first lets the import finish; the
ops themselves stay unavailable (gendistill never calls them).
"""

from __future__ import annotations

import importlib.util

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # kept alive: dropping the Library object would remove the definitions


def define_missing_torchvision_ops() -> bool:
    """Declare ``torchvision::nms``/``qnms`` if torchvision is installed and they are missing.

    Returns True if it declared them. Safe to call many times and where torchvision is absent.
    """
    global _library
    if _library is not None or importlib.util.find_spec("torchvision") is None:
        return False
    missing = [name for name in _SCHEMAS if not _op_exists(name)]
    if not missing:
        return False
    _library = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 (we own no other ops here)
    for name in missing:
        _library.define(_SCHEMAS[name])
    return True


def _op_exists(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False
