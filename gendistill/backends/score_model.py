"""The model a score-distillation job (text-to-3D, 3D editing) scores with: any text-to-image model, students
included, each guided its own way.

``load_score_model`` takes what ``load_pipeline`` takes (a pipeline folder, a shipped model, a hub id) and also a
LoRA student's folder (``pytorch_lora_weights.safetensors`` beside a ``gendistill.json`` naming its base, as the
shipped ``shapes-lcm-lora``): the base is loaded, the adapters fused into it (stock ``load_lora_weights``) and
the LoRA's card kept, so the model is guided as the student it is. How a model is guided
(``TextToImageModel.guidance_kind``): a w-embedding UNet (LCM, multi-CFG) gets the scale embedded, a student whose
card samples at guidance 0 is used conditionally (its guidance is distilled in), the rest get classifier-free
guidance; ``cfg_on_distilled`` applies CFG to a distilled student too.
"""

from __future__ import annotations

from pathlib import Path

from gendistill.backends.loading import load_pipeline
from gendistill.backends.lora import LORA_WEIGHTS_FILE, apply_lora_file
from gendistill.backends.student_card import StudentCard
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.errors import UserError
from gendistill.shipped import resolve_model_name


def lora_folder(model: str) -> Path | None:
    """The folder ``model`` names when it holds LoRA weights and no pipeline (``model_index.json``); else None."""
    folder = Path(resolve_model_name(model)).expanduser()
    if (folder / LORA_WEIGHTS_FILE).is_file() and not (folder / "model_index.json").is_file():
        return folder
    return None


def lora_base(folder: Path) -> str:
    """The model a LoRA folder's ``gendistill.json`` names as its teacher (the base its adapters apply to)."""
    card = StudentCard.read(folder)
    if card is None or not card.teacher:
        raise UserError(f"{folder} holds LoRA weights but no gendistill.json naming the model they apply to; "
                        "give that model as the model and the LoRA with the config's lora key")
    return card.teacher


def load_score_model(model: str, device: str = "cpu", lora: str | None = None, lora_scale: float = 1.0,
                     cfg_on_distilled: bool = False) -> TextToImageModel:
    """``model`` as a score: a pipeline (with ``lora`` fused in at ``lora_scale`` when given), or a LoRA
    student's folder on its base. ``cfg_on_distilled`` applies CFG to a guidance-distilled student as well."""
    folder = lora_folder(model)
    if folder is not None and lora is not None:
        raise UserError(f"{model} is itself a LoRA; give its base model as the model to add another LoRA")
    pipe = load_pipeline(lora_base(folder) if folder is not None else model, device=device)
    adapters = folder if folder is not None else lora
    if adapters is not None:
        apply_lora_file(pipe, adapters, lora_scale)
    scored = TextToImageModel(pipe)
    if folder is not None:
        scored.card = StudentCard.read(folder)
    elif lora is not None:
        scored.card = StudentCard.read(Path(resolve_model_name(lora)).expanduser()) or scored.card
    scored.cfg_on_distilled = cfg_on_distilled
    return scored
