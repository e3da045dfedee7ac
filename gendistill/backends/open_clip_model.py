"""open_clip models built from a config dict, saved as open_clip's own folder layout, and used as image
encoders (Isotropic3D conditions its teacher on a CLIP image embedding alone).

A folder written by :func:`save_clip` is what ``open_clip.create_model("local-dir:FOLDER")`` loads
(``open_clip_config.json`` with ``model_cfg`` and ``preprocess_cfg``, ``open_clip_model.safetensors``), plus a
``tokenizer/`` that ``transformers.CLIPTokenizer.from_pretrained`` reads (a small domain vocabulary: open_clip's
own 49k-token BPE would be most of a miniature model's weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gendistill.errors import UserError

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
TOKENIZER_DIR = "tokenizer"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP's input normalisation (open_clip's default for its models)."""


def import_open_clip():
    """open_clip, or a UserError naming the extra that installs it."""
    try:
        import open_clip
    except ImportError as error:
        raise UserError("this needs open-clip-torch: pip install 'gendistill[eval]'") from error
    return open_clip


def build_clip(model_cfg: dict) -> nn.Module:
    """``open_clip.CLIP(embed_dim, vision_cfg, text_cfg)`` from a plain dict (open_clip's ``model_cfg``
    layout), randomly initialised: no weights are downloaded."""
    open_clip = import_open_clip()
    cfg = json.loads(json.dumps(model_cfg))  # a private copy: open_clip reads the dicts into its own dataclasses
    return open_clip.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])


def save_clip(model: nn.Module, model_cfg: dict, tokenizer, folder: str | Path,
              dtype: torch.dtype = torch.float16) -> Path:
    """Write ``folder`` in open_clip's layout (weights in ``dtype``) with the tokenizer beside them."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image_size = model_cfg["vision_cfg"]["image_size"]
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                                                        "image_size": image_size}}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    tokenizer.save_pretrained(str(folder / TOKENIZER_DIR))
    return folder


def load_clip(folder: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, object]:
    """(model in float32, eval mode, frozen; its CLIPTokenizer) from a :func:`save_clip` folder."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise UserError(f"{folder} is not an open_clip folder (it needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    open_clip = import_open_clip()
    model = open_clip.create_model(f"local-dir:{folder}", device=device).float().eval().requires_grad_(False)
    return model, CLIPTokenizer.from_pretrained(str(folder / TOKENIZER_DIR))


def clip_image_size(model: nn.Module) -> int:
    """The square input size of an open_clip vision tower."""
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def preprocess(images: Tensor, size: int) -> Tensor:
    """Images (B, 3, H, W) in [0, 1] -> CLIP's input: bilinear (antialiased) resize, OpenAI normalisation."""
    if tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images, (size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(OPENAI_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def tokenize(tokenizer, prompts: list[str], context_length: int) -> Tensor:
    """Token ids (B, context_length), padded with the end token (open_clip pools at the first argmax id,
    the end token, as OpenAI CLIP)."""
    return tokenizer(prompts, padding="max_length", max_length=context_length, truncation=True,
                     return_tensors="pt").input_ids


@dataclass
class ClipImageEncoder:
    """A frozen open_clip model as an image embedder: unit-norm image embeddings (CLIP's joint space)."""

    model: nn.Module
    tokenizer: object

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> ClipImageEncoder:
        return cls(*load_clip(folder, device))

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    @torch.no_grad()
    def embed_images(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> (B, embed_dim), unit norm."""
        device = next(self.model.parameters()).device
        x = preprocess(images.to(device).float(), clip_image_size(self.model))
        return F.normalize(self.model.encode_image(x), dim=-1)

    @torch.no_grad()
    def embed_texts(self, prompts: list[str]) -> Tensor:
        """Prompts -> (B, embed_dim), unit norm."""
        device = next(self.model.parameters()).device
        ids = tokenize(self.tokenizer, prompts, self.model.context_length).to(device)
        return F.normalize(self.model.encode_text(ids), dim=-1)
