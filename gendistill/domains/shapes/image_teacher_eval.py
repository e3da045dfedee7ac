"""What the image/camera teacher's model card measures: does it draw the reference's object, from the camera
it is asked for?

For every one of the 40 objects, a reference render from a held-out-split camera is embedded with the CLIP;
the teacher samples the object from ``cameras_per_object`` other cameras (DDIM, ``steps`` steps, CFG against
the zero embedding). Each sample is scored by the shapes classifier (shape, colour, both) and by the
silhouette IoU of its non-white pixels against the analytic render at the asked camera (the camera
conditioning's test: a sample of the right object from the wrong camera has a low IoU for the cube, cone and
cylinder). The same is done with the null embedding, whose samples should match the object only by chance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from gendistill.backends.image_camera_model import ImageCameraCondition, ImageCameraModel
from gendistill.diffusion.guidance import CFGDenoiser
from gendistill.diffusion.samplers import final_sample, initial_scale, sample_euler

WHITE_THRESHOLD = 0.1
"""A sample's pixel is object when some channel is this far below white."""


@dataclass(frozen=True)
class TeacherSampleScores:
    """Scores of samples against the objects and cameras they were asked for."""

    prompt_accuracy: float
    shape_accuracy: float
    colour_accuracy: float
    silhouette_iou: float
    samples: int

    def as_dict(self) -> dict:
        return asdict(self)


def sampling_sigmas(model: ImageCameraModel, steps: int) -> Tensor:
    """``steps`` training sigmas evenly spaced in timestep from the last (trailing spacing), then 0."""
    sigmas = model.train_sigmas
    T = len(sigmas)
    idx = torch.linspace(T - 1, 0, steps + 1)[:-1].round().long()
    return torch.cat([sigmas[idx], sigmas.new_zeros(1)]).float()


@torch.no_grad()
def sample_views(model: ImageCameraModel, cond: ImageCameraCondition, scale: float, steps: int,
                 generator: torch.Generator) -> Tensor:
    """Images (B, 3, H, W) in [0, 1] of the condition's rows, DDIM with CFG against the zero embedding."""
    sigmas = sampling_sigmas(model, steps)
    size = model.unet.config.sample_size
    shape = (len(cond.embeds), model.unet.config.in_channels, size, size)
    x = torch.randn(shape, generator=generator) * initial_scale(float(sigmas[0]))
    denoiser = CFGDenoiser(model.denoiser(), cond.null(), scale)
    return model.decode(final_sample(sample_euler(denoiser, x, sigmas, cond)))


def silhouette(images: Tensor) -> Tensor:
    """(B, 1, H, W) 1 where an image is not white."""
    return ((1 - images).amax(dim=1, keepdim=True) > WHITE_THRESHOLD).float()


def silhouette_iou(pred: Tensor, true: Tensor) -> Tensor:
    """IoU of two (B, 1, H, W) masks per image (1 where both are empty)."""
    pred, true = pred > 0.5, true > 0.5
    inter, union = (pred & true).flatten(1).sum(1).double(), (pred | true).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def score_samples(images: Tensor, scenes: list, cameras: list, classifier) -> TeacherSampleScores:
    from gendistill.domains.shapes import render_batch
    from gendistill.domains.shapes.metrics import colour_accuracy, prompt_accuracy, shape_accuracy
    truth = render_batch(scenes, cameras)
    outputs = classifier.classify(images)
    iou = silhouette_iou(silhouette(images), truth.alpha).mean().item()
    return TeacherSampleScores(prompt_accuracy(outputs, scenes), shape_accuracy(outputs, scenes),
                               colour_accuracy(outputs, scenes), iou, len(scenes))


def evaluate_teacher(model: ImageCameraModel, encoder, classifier, scale: float, steps: int = 25,
                     cameras_per_object: int = 2, seed: int = 0) -> tuple[dict[str, TeacherSampleScores], Tensor]:
    """({"image": scores with the reference embeddings, "null": with zeros}, a grid of samples' rows)."""
    from gendistill.domains.shapes import all_scenes, render_batch
    from gendistill.domains.shapes.camera import sample_cameras
    from gendistill.domains.shapes.image_teacher import camera_features_of

    generator = torch.Generator().manual_seed(seed + 1)
    scenes = all_scenes()
    references = render_batch(scenes, sample_cameras(len(scenes), generator)).rgb
    embeds = encoder.embed_images(references)
    targets = sample_cameras(len(scenes) * cameras_per_object, generator)
    rows = torch.arange(len(scenes)).repeat_interleave(cameras_per_object)
    asked = [scenes[i] for i in rows.tolist()]
    az = torch.tensor([c.azimuth_deg for c in targets])
    el = torch.tensor([c.elevation_deg for c in targets])
    cond = ImageCameraCondition(embeds[rows], camera_features_of(az, el))
    results, images = {}, {}
    for name, c in (("image", cond), ("null", cond.null())):
        images[name] = sample_views(model, c, scale, steps, torch.Generator().manual_seed(seed))
        results[name] = score_samples(images[name], asked, targets, classifier)
    shown = torch.arange(0, len(rows), max(1, len(rows) // 16))[:16]  # spread over the five shapes
    truth = render_batch([asked[i] for i in shown.tolist()], [targets[i] for i in shown.tolist()]).rgb
    grid = torch.cat([references[rows[shown]], truth, images["image"][shown]])
    return results, grid
