"""Load a diffusers text-to-image pipeline from a local folder or a hub id, with clear user errors."""

from __future__ import annotations

import json
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from gendistill.errors import UserError, first_line
from gendistill.shipped import is_shipped_reference, list_shipped_models, resolve_model_name

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(model: str) -> str:
    """The diffusers pipeline folder or hub id ``model`` names: a folder, a shipped model's short name
    (``shapes-dmd2-1step``, or ``assets/shapes-dmd2-1step`` from any folder), or a hub id like owner/name."""
    local = resolve_model_name(model)
    path = Path(local).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise UserError(f"{model} is not a diffusers pipeline folder (no model_index.json); "
                            "give a folder saved with save_pretrained or a hub id like owner/name")
        return str(path)
    if HUB_ID.match(model) and not model.startswith((".", "/")) and not is_shipped_reference(model):
        return model
    raise UserError(f"model {model!r} does not exist; give a diffusers pipeline folder, a shipped model "
                    f"({_shipped_names()}) or a hub id like owner/name")


def _shipped_names() -> str:
    return ", ".join(list_shipped_models()) or "none installed"


def load_pipeline(model: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """``DiffusionPipeline.from_pretrained`` without a safety checker (pipelines lacking one ignore it)."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    _disable_transformers_progress()  # its per-weight "Loading weights" bar, a blink for our models
    source = resolve_model(model)
    try:
        with quiet_pipeline_notices():
            pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype, trust_remote_code=ships_our_pipeline(source),
                                                     **{"safety_checker": None, **dropped_components(source)})
    except (OSError, ValueError, EnvironmentError) as err:
        raise UserError(f"could not load a diffusers pipeline from {model!r}: {first_line(err)}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def dropped_components(source: str) -> dict[str, None]:
    """``{name: None}`` for each component a local folder saved as absent (``[null, null]`` in model_index.json),
    e.g. an SD3 pipeline without T5: diffusers wants those passed as None, as in its "drop the T5 text encoder"
    recipe ``StableDiffusion3Pipeline.from_pretrained(path, text_encoder_3=None, tokenizer_3=None)``."""
    index = Path(source) / "model_index.json"
    if not index.is_file():
        return {}
    try:
        entries = json.loads(index.read_text())
    except (OSError, ValueError):
        return {}  # from_pretrained says what is wrong with the folder
    return {name: None for name, value in entries.items()
            if not name.startswith("_") and isinstance(value, list) and value in ([None, None], [])}


def ships_our_pipeline(source: str) -> bool:
    """Whether ``source`` is a folder whose ``pipeline.py`` and every other ``.py`` file in it are gendistill's own
    pipeline files, byte for byte (a Phased DMD, MeanFlow or multi-CFG export; MeanFlow also ships its interval embedder's
    code in that component's folder): that code is ours, so it runs; a folder with any other code keeps diffusers'
    refusal."""
    from gendistill.backends import meanflow_pipeline, multi_cfg_pipeline, phased_pipeline

    folder = Path(source)
    if not (folder / "pipeline.py").is_file():
        return False
    ours = {Path(m.__file__).read_bytes() for m in (phased_pipeline, meanflow_pipeline, multi_cfg_pipeline)}
    return all(code.read_bytes() in ours for code in folder.rglob("*.py"))


@contextmanager
def quiet_pipeline_notices():
    """Silence notices that building and saving our pipelines always trigger and that say nothing to our users:
    the disabled safety checker (we pass None on purpose), an absent component that "cannot be saved" (SD3
    without T5) and ``steps_offset != 1`` (unused by the trailing spacing every shipped scheduler has). Other
    warnings still show."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"(?s).*steps_offset", category=FutureWarning)
            yield
    finally:
        diffusers_logging.set_verbosity(level)


def _disable_transformers_progress() -> None:
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    transformers_logging.disable_progress_bar()
