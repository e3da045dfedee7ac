"""The configuration of a ``gendistill distill`` run (YAML files in configs/ load into it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gendistill.distill.boot import BOOTConfig
from gendistill.distill.consistency import LCMConfig
from gendistill.distill.dmd import DMD2Config
from gendistill.distill.finetune import FineTuneConfig
from gendistill.distill.koala import KoalaConfig
from gendistill.distill.meanflow import MeanFlowConfig
from gendistill.distill.multi_cfg import MultiCFGConfig
from gendistill.distill.twinflow import TwinFlowConfig
from gendistill.distill.phased_dmd import PhasedDMDConfig
from gendistill.distill.flash_dmd import FlashDMDConfig
from gendistill.distill.progressive import ProgressiveConfig
from gendistill.errors import check_choice, check_range, key_path
from gendistill.train.config import OptimizerConfig, TrainerConfig


@dataclass
class DataConfig:
    """Where training prompts (and real latents) come from."""

    source: Literal["shapes", "prompts", "images"] = "shapes"
    """shapes: the embedded world's captions and renders; prompts: lines of ``prompts_file`` (no images);
    images: ``image_folder`` of pictures with same-named .txt captions."""
    prompts_file: str | None = None
    """A text file with one prompt per line (source "prompts")."""
    image_folder: str | None = None
    """A folder of images with same-named .txt captions (source "images")."""
    batch_size: int = 16
    """Prompts per micro-batch."""
    with_latents: bool = False
    """Encode renders to real latents (recipes that use data: LCM, progressive, DMD2's GAN term); false: the
    batches carry prompts only and nothing is rendered (BOOT's data-free runs)."""
    view_phrase_prob: float = 0.5
    """Share of shapes captions that carry a view phrase ("..., front view")."""
    shapes_image: Literal["rgb", "depth"] = "rgb"
    """What a shapes render gives: rgb, or its depth as a grey image (``domains/shapes/depth.py``: the data of
    a depth-branch teacher for structure-aware SDS)."""
    shapes_camera_distance: float | None = None
    """Shapes renders from this camera distance (None: the world's 4.0); closer makes objects larger, the
    data of a size slider (``configs/distill/shapes-size-slider.yaml``)."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "batch_size"), self.batch_size, 1)
        check_range(key_path(path, "view_phrase_prob"), self.view_phrase_prob, 0.0, 1.0)
        check_choice(key_path(path, "shapes_image"), self.shapes_image, ("rgb", "depth"))
        if self.shapes_camera_distance is not None:
            check_range(key_path(path, "shapes_camera_distance"), self.shapes_camera_distance, 2.0, 8.0)


@dataclass
class EvalConfig:
    """What is measured during training and in the final teacher-vs-student table (shapes world only)."""

    student_steps: list[int] = field(default_factory=lambda: [1, 2])
    """Student step counts in the final table (those the student cannot take are skipped)."""
    teacher_steps: list[int] = field(default_factory=lambda: [50, 8, 4, 2, 1])
    """Teacher step counts in the final table."""
    teacher_guidance: float | None = None
    """Teacher guidance in the table (None: the teacher folder's default)."""
    student_guidance: float | None = None
    """Student guidance (None: 0, or the recipe's scale for a w-embedding student)."""
    num_samples: int = 120
    """Images per row of the final table (spread over all 40 prompts)."""
    during_training_samples: int = 80
    """Images per evaluation during training, over all 40 prompts (>= 80 gives diversity; 0: none)."""
    grid_prompts: int = 8
    """Prompts in the teacher-vs-student grid."""

    def check(self, path: str) -> None:
        for name in ("student_steps", "teacher_steps"):
            for i, steps in enumerate(getattr(self, name)):
                check_range(f"{key_path(path, name)}[{i}]", steps, 1)
        for name in ("num_samples", "grid_prompts"):
            check_range(key_path(path, name), getattr(self, name), 1)
        check_range(key_path(path, "during_training_samples"), self.during_training_samples, 0)


@dataclass
class DistillConfig:
    """A step-distillation run: the teacher, the recipe, the loop, the data and the evaluation."""

    teacher: str = "shapes-teacher"
    """Diffusers folder, shipped model (shapes-teacher) or hub id of the teacher."""
    recipe: (DMD2Config | LCMConfig | ProgressiveConfig | FineTuneConfig | FlashDMDConfig | PhasedDMDConfig | BOOTConfig
             | MeanFlowConfig | TwinFlowConfig | KoalaConfig | MultiCFGConfig) = field(
        default_factory=lambda: DMD2Config(guidance_scale=2.0, fake_updates=5, student_steps=1))
    """The recipe; ``kind:`` picks dmd2, lcm, progressive, finetune (plain diffusion fine-tuning), flash_dmd,
    phased_dmd, meanflow (a flow-matching teacher's any-step MeanFlow student), twinflow (one self-adversarial
    network, no teacher), boot (data-free, 1 step), koala (a UNet with fewer blocks, same steps) or multi_cfg
    (prompt and negative-prompt guidance folded into one pass, FADA)."""
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(
        steps=400, ema_decay=0.99, checkpoint_every=100, eval_every=100,
        optimizers={"generator": OptimizerConfig(lr=1e-4, warmup_steps=20),
                    "fake_score": OptimizerConfig(lr=1e-4, warmup_steps=20)}))
    """Loop settings; ``optimizers`` is keyed by phase (dmd2: generator, fake_score; lcm, progressive and
    finetune: student)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    device: str = "auto"
    """torch device; auto picks cuda when available."""
