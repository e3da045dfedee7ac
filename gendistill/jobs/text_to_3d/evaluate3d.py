"""How close a text-to-3D result is to the object its shapes caption names (DESIGN.md §5, "For 3D").

From 8 fixed held-out cameras (4 azimuths at 10 deg elevation, 4 others at 40 deg, none on the training
cameras' random draws) at the shapes world's distance, field of view and 64x64 size:

- **silhouette IoU**: ``alpha > 0.5`` of the render against ``alpha > 0.5`` of the analytic render, per view,
  averaged over views (a view where both are empty counts 1);
- **colour error**: mean absolute RGB difference (over pixels and channels, in [0, 1]) inside the true
  silhouette, pooled over views;
- **prompt accuracy**: share of the 8 renders in which the shapes classifier reads both the caption's shape
  and its colour (plus shape and colour accuracy separately);
- for scenes that render depth (Gaussians), **depth error**: mean |expected depth - analytic depth| (camera
  units; the object spans 2) over the pixels inside both silhouettes, pooled over views; and **floaters**:
  Gaussians with opacity > 0.1 whose centre lies outside the shapes world's bounding sphere (radius 1), where
  no object is (structure-aware SDS's targets, issue 17).

The shapes domain (captions, analytic renders, classifier) is imported by the functions that need it, so a
run whose prompt is not a shapes caption never imports it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from gendistill.errors import UserError
from gendistill.render.cameras import Camera, stack_cameras
from gendistill.render.gaussians import GaussianParams, GaussianRenderer
from gendistill.render.rig import OrbitRig

if TYPE_CHECKING:
    from gendistill.domains.shapes import Scene

ALPHA_THRESHOLD = 0.5
"""A pixel is inside a silhouette when its alpha exceeds this."""


def heldout_cameras(size: int = 64) -> list[Camera]:
    """The 8 evaluation cameras: azimuths 22.5 + 90 k at 10 deg elevation and 67.5 + 90 k at 40 deg."""
    rig = OrbitRig(width=size, height=size)
    return rig.orbit(4, 10.0, start_azimuth_deg=22.5) + rig.orbit(4, 40.0, start_azimuth_deg=67.5)


@dataclass(frozen=True)
class Eval3DResult:
    """Agreement of a 3D result with the analytic object from the held-out cameras."""

    prompt: str
    """The caption that was evaluated."""
    iou: float
    """Mean silhouette IoU over the views, in [0, 1]."""
    colour_error: float
    """Mean absolute RGB error inside the true silhouette, in [0, 1]."""
    prompt_accuracy: float | None
    """Share of views classified with the right shape and colour; None without a classifier."""
    shape_accuracy: float | None
    """Share of views classified with the right shape."""
    colour_accuracy: float | None
    """Share of views classified with the right colour."""
    per_view_iou: list[float]
    """Silhouette IoU of each held-out view."""
    num_views: int
    """Number of held-out views."""
    depth_error: float | None = None
    """Mean absolute depth error inside both silhouettes; None for scenes without depth."""
    floaters: int | None = None
    """Opaque Gaussians outside the bounding sphere; None for other scenes."""

    def as_dict(self) -> dict:
        return asdict(self)


def silhouette_iou(pred_alpha: Tensor, true_alpha: Tensor, threshold: float = ALPHA_THRESHOLD) -> Tensor:
    """IoU of ``alpha > threshold`` per view, (V,), for alphas (V, 1, H, W); 1 where both are empty."""
    pred, true = pred_alpha > threshold, true_alpha > threshold
    inter = (pred & true).flatten(1).sum(1).double()
    union = (pred | true).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def colour_error(pred_rgb: Tensor, true_rgb: Tensor, true_alpha: Tensor, threshold: float = ALPHA_THRESHOLD) -> float:
    """Mean |pred - true| over channels and the pixels inside the true silhouettes (all views pooled)."""
    inside = (true_alpha > threshold).expand_as(true_rgb)
    if not inside.any():
        raise ValueError("the true silhouettes are empty: colour error is undefined")
    return (pred_rgb.float() - true_rgb.float()).abs()[inside].mean().item()


def depth_error(pred_depth: Tensor, pred_alpha: Tensor, true_depth: Tensor, true_alpha: Tensor,
                threshold: float = ALPHA_THRESHOLD) -> float | None:
    """Mean |pred - true| depth over the pixels inside both silhouettes (all views pooled); None if none."""
    inside = (pred_alpha > threshold) & (true_alpha > threshold)
    if not inside.any():
        return None
    return (pred_depth.float() - true_depth.float()).abs()[inside].mean().item()


FLOATER_OPACITY = 0.1
"""A Gaussian at least this opaque counts as a floater when it lies outside the bounding sphere."""


def count_floaters(params: GaussianParams, radius: float | None = None, min_opacity: float = FLOATER_OPACITY) -> int:
    """Gaussians more opaque than ``min_opacity`` whose centre is farther than ``radius`` (default: the shapes
    world's bounding radius) from the origin."""
    if radius is None:
        from gendistill.domains.shapes.intersect import BOUNDING_RADIUS

        radius = BOUNDING_RADIUS
    with torch.no_grad():
        outside = params.splats["means"].norm(dim=-1) > radius
        opaque = torch.sigmoid(params.splats["opacities"]) > min_opacity
    return int((outside & opaque).sum().item())


def caption_scene(prompt: str) -> Scene:
    """The shapes scene a prompt names, or a UserError saying eval-3d measures shapes captions only."""
    from gendistill.domains.shapes import parse_caption

    try:
        return parse_caption(prompt)
    except UserError as err:
        raise UserError(f"eval-3d measures shapes-world captions only; {err}") from None


def evaluate_renders(rgb: Tensor, alpha: Tensor, prompt: str, cameras: list[Camera], classifier=None,
                     depth: Tensor | None = None, floaters: int | None = None) -> Eval3DResult:
    """Score renders (V, 3, H, W) on white and alphas (V, 1, H, W) of ``cameras`` against the caption's
    analytic object; ``classifier`` (a ShapeClassifier) adds the prompt accuracy, ``depth`` (V, 1, H, W) the
    depth error; ``floaters`` is passed through."""
    from gendistill.domains.shapes import render_batch
    from gendistill.domains.shapes.metrics import colour_accuracy, prompt_accuracy, shape_accuracy

    scene = caption_scene(prompt)
    truth = render_batch([scene] * len(cameras), cameras)
    rgb, alpha = rgb.detach().float().cpu().clamp(0, 1), alpha.detach().float().cpu()
    ious = silhouette_iou(alpha, truth.alpha)
    accuracies: tuple[float | None, ...] = (None, None, None)
    if classifier is not None:
        outputs = classifier.classify(rgb)
        scenes = [scene] * len(cameras)
        accuracies = tuple(f(outputs, scenes) for f in (prompt_accuracy, shape_accuracy, colour_accuracy))
    depth_err = None if depth is None else depth_error(depth.detach().float().cpu(), alpha, truth.depth, truth.alpha)
    return Eval3DResult(prompt, ious.mean().item(), colour_error(rgb, truth.rgb, truth.alpha), *accuracies,
                        [round(v, 4) for v in ious.tolist()], len(cameras), depth_err, floaters)


def load_default_classifier():
    """The shipped shapes classifier, or None (with a note on stderr) when it cannot be loaded."""
    import sys

    from gendistill.domains.shapes.evaluation import CLASSIFIER_DIR

    from gendistill.domains.shapes.classifier import load_classifier

    try:
        return load_classifier(CLASSIFIER_DIR)
    except (UserError, OSError) as err:
        print(f"note: no prompt accuracy ({err})", file=sys.stderr)
        return None


@torch.no_grad()
def evaluate_views(render_views, prompt: str, classifier=None, background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                   scene=None) -> tuple[Eval3DResult, Tensor]:
    """Render the held-out cameras with ``render_views(cameras, background) -> (rgb, alpha)`` (a scene's, see
    gendistill.render.scene) and score them; returns the result and the renders (V, 3, H, W) on the CPU.
    ``scene``, when it renders depth (Gaussians), adds the depth error and the floater count."""
    caption_scene(prompt)  # fail before rendering
    cameras = heldout_cameras()
    stacked, bg = stack_cameras(cameras), torch.tensor(background)
    depth, floaters = None, None
    if scene is not None and getattr(scene, "RENDERS_DEPTH", False):  # one render gives colour and depth
        device = scene.params.splats["means"].device
        out = scene.render(stacked.to(device), bg.to(device))
        rgb, alpha, depth, floaters = out.rgb, out.alpha, out.depth, count_floaters(scene.params)
    else:
        rgb, alpha = render_views(stacked, bg)
    result = evaluate_renders(rgb, alpha, prompt, cameras, classifier, depth, floaters)
    return result, rgb.detach().cpu()


def evaluate_gaussians(params: GaussianParams, prompt: str, classifier=None,
                       background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                       renderer: GaussianRenderer | None = None) -> tuple[Eval3DResult, Tensor]:
    """Render ``params`` from the held-out cameras and score them; returns the result and the renders."""
    def render_views(cameras, bg):
        out = (renderer or GaussianRenderer()).render(params, cameras, bg)
        return out.rgb, out.alpha

    return evaluate_views(render_views, prompt, classifier, background)


def format_eval_table(result: Eval3DResult) -> str:
    """A markdown table of one result."""
    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    head = "| prompt | views | silhouette IoU | colour error | prompt acc | shape acc | colour acc |"
    row = (f"| {result.prompt} | {result.num_views} | {result.iou:.3f} | {result.colour_error:.3f} | "
           f"{fmt(result.prompt_accuracy)} | {fmt(result.shape_accuracy)} | {fmt(result.colour_accuracy)} |")
    columns = 7
    if result.floaters is not None:  # a scene with depth: its structure columns
        head += " depth error | floaters |"
        row += f" {fmt(result.depth_error)} | {result.floaters} |"
        columns += 2
    return "\n".join([head, "|" + "---|" * columns, row])


def evaluate_run_dir(run_dir: str | Path, classifier="auto") -> Eval3DResult:
    """``gendistill eval-3d DIR``: score the scene in DIR (scene.ply of Gaussians, or a NeRF's field.safetensors)
    for the prompt in DIR/config.yaml; writes DIR/eval3d.json."""
    from gendistill.config import load_config
    from gendistill.jobs.text_to_3d.config import Text3DConfig

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder; give the --out folder of a text-to-3d run")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} has no config.yaml; give the --out folder of a text-to-3d run")
    config = load_config(Text3DConfig, run_dir / "config.yaml")
    needed = config.scene.FILES[-1]
    if not (run_dir / needed).is_file():
        raise UserError(f"{run_dir} has no {needed}; give the --out folder of a text-to-3d run")
    caption_scene(config.prompt)  # fail before loading the scene
    scene = config.scene.load(run_dir)
    classifier = load_default_classifier() if classifier == "auto" else classifier
    result, _ = evaluate_views(scene.render_views, config.prompt, classifier, config.background, scene)
    (run_dir / "eval3d.json").write_text(json.dumps(result.as_dict(), indent=2))
    return result
