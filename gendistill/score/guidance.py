"""Every score-distillation method's config, as one union type (a config field of that type picks one with
``kind:``), and the by-name entry point for callers that hold a method name rather than a config.

Each config builds its own guidance (``config.build(model)``); nothing here dispatches on a name except
``guidance_from_model``, which only finds the config class for a name.
"""

from __future__ import annotations

from typing import Union

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.errors import UserError, check_choice
from gendistill.score.base import ScoreGuidance
from gendistill.score.csd import CSDConfig
from gendistill.score.npg import NPGConfig
from gendistill.score.sds import SDSConfig
from gendistill.score.vsd import VSDConfig

GuidanceConfig = Union[SDSConfig, VSDConfig, CSDConfig, NPGConfig]
"""Any score-distillation method's config."""
GUIDANCE_CONFIGS: tuple[type, ...] = (SDSConfig, VSDConfig, CSDConfig, NPGConfig)
METHODS = tuple(cls.KIND for cls in GUIDANCE_CONFIGS)
"""The method names: sds, vsd, csd, npg."""


def guidance_from_model(model: TextToImageModel, method: str, config: GuidanceConfig | None = None) -> ScoreGuidance:
    """The guidance ``method`` ("sds", "vsd", "csd" or "npg") on ``model``: ``config.build(model)``, with the
    method's default config when ``config`` is None. Prefer ``config.build(model)`` when you hold a config."""
    check_choice("score distillation method", method, METHODS)
    if config is None:
        config = {cls.KIND: cls for cls in GUIDANCE_CONFIGS}[method]()
    if config.KIND != method:
        raise UserError(f"method {method!r} takes its own config, got a {type(config).__name__}")
    return config.build(model)
