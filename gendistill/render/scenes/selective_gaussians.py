"""3D Gaussians edited in one place only: a selection of the Gaussians is optimised, the rest keep their values.

GSEditPro (Sun et al. 2024, "GSEditPro: 3D Gaussian Splatting Editing with Attention-based Progressive
Localization", arXiv 2411.10033; no public reference code was found to compare with) labels the Gaussians an
edit is about and optimises only those, with a pseudo-ground-truth image term that keeps everything else as
it was. Here:

- **Selection.** Each Gaussian carries a relevance (an EMA of what the localiser measured) and a selected
  flag, kept in the densifier's per-Gaussian state so that gsplat's clone/split/prune carry them (a clone or
  split of a selected Gaussian is selected: the paper's labels follow densification) and checkpoints hold
  them. ``update_relevance`` is how a localiser (``score/localised_edit.py``) sets them.
- **Masked updates.** Renders use ``where(selected, p, p.detach())`` for every parameter, so the gradient of
  an unselected Gaussian is exactly zero; its Adam first moment is zeroed after every step, so Adam's update
  ``m / (sqrt(v) + eps)`` is exactly zero too and it never moves (not even by momentum from a time it was
  selected). The screen-space gradient that drives densification is masked the same way.
- **Pseudo ground truth.** ``pseudo_gt_weight * |render - (m * sg(render) + (1 - m) * original)|``, mean
  over pixels, with ``m`` the render of the selected Gaussians' footprint (their summed blending weights) and
  ``original`` the scene before the edit under the same cameras. Outside the selection's footprint the edit
  must look like the original; inside, only the score acts. (The paper's pseudo-GT takes the inside from a
  diffusion-denoised image; here it is the render itself, so the term only guards the rest of the scene.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from gendistill.recipe import ParamGroup, Update
from gendistill.render.cameras import Cameras
from gendistill.render.gaussians import GaussianParams, RenderOutput
from gendistill.render.scenes.gaussians import GaussianScene
from gendistill.render.splat_weights import SplatWeights, splat_weights

SELECTED = "edit_selected"
RELEVANCE = "edit_relevance"
"""Keys of the per-Gaussian state in the densifier's state (gsplat's ops carry every tensor there)."""


@dataclass(frozen=True)
class _PartlyFrozen:
    """The tensors a GaussianRenderer reads, with the unselected rows cut from the graph."""

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    sh_coeffs: Tensor
    sh_degree: int


def _rows(selected: Tensor, x: Tensor) -> Tensor:
    keep = selected.reshape(-1, *([1] * (x.dim() - 1)))
    return torch.where(keep, x, x.detach())


class SelectiveGaussianScene:
    """A GaussianScene whose optimisation changes only the selected Gaussians (module docstring)."""

    kind = "gaussians"

    def __init__(self, inner: GaussianScene, pseudo_gt_weight: float = 0.0):
        if inner.densifier is None:
            raise ValueError("SelectiveGaussianScene edits a scene built for optimisation (total_steps > 0)")
        self.inner, self.pseudo_gt_weight = inner, pseudo_gt_weight
        self.original = GaussianParams(*(t.detach() for t in (inner.params.means, inner.params.log_scales,
                                                              inner.params.quats, inner.params.opacity_logits,
                                                              inner.params.sh0, inner.params.shN)))
        n = len(inner.params)
        self.state[SELECTED] = torch.ones(n, dtype=torch.bool, device=inner.params.means.device)
        self.state[RELEVANCE] = torch.zeros(n, device=inner.params.means.device)
        self._cameras: Cameras | None = None
        self._background: Tensor | None = None

    # --- the selection -----------------------------------------------------------------------------------
    @property
    def state(self) -> dict:
        return self.inner.densifier.state

    @property
    def params(self) -> GaussianParams:
        return self.inner.params

    @property
    def selected(self) -> Tensor:
        """Which Gaussians the edit may change, (N,) bool."""
        return self.state[SELECTED]

    @property
    def relevance(self) -> Tensor:
        """Each Gaussian's smoothed relevance to the edit, (N,)."""
        return self.state[RELEVANCE]

    def splat_weights(self, cameras: Cameras, maps: Tensor) -> SplatWeights:
        """``maps`` (C, 1, H, W) summed onto the Gaussians by their blending weights (``render.splat_weights``)."""
        return splat_weights(self.inner.renderer, self.params, cameras, maps)

    @torch.no_grad()
    def select(self, selected: Tensor) -> None:
        """Fix the selection (N,) bool by hand (its relevance becomes 1 where selected, 0 elsewhere)."""
        if selected.shape != self.selected.shape:
            raise ValueError(f"a selection needs one flag per Gaussian, {tuple(self.selected.shape)}, "
                             f"got {tuple(selected.shape)}")
        self.state[SELECTED] = selected.to(self.selected).clone()
        self.state[RELEVANCE] = self.state[SELECTED].float()

    @torch.no_grad()
    def update_relevance(self, measured: Tensor, seen: Tensor, momentum: float, threshold: float,
                         keep_selected: bool) -> None:
        """Blend a new measurement (N,) into the relevance (EMA with weight ``momentum`` on it; Gaussians not
        ``seen`` keep theirs) and select those above ``threshold`` (plus those selected before, with
        ``keep_selected``: the union over steps). Call ``freeze_moments`` after it, before the next step."""
        old = self.relevance
        new = torch.where(seen, (1 - momentum) * old + momentum * measured.to(old), old)
        self.state[RELEVANCE] = new
        chosen = new > threshold
        self.state[SELECTED] = (chosen | self.selected) if keep_selected else chosen

    # --- the scene protocol --------------------------------------------------------------------------------
    def parameter_groups(self) -> tuple[ParamGroup, ...]:
        return self.inner.parameter_groups()

    def modules(self) -> dict[str, nn.Module]:
        return self.inner.modules()

    def render(self, cameras: Cameras, background: Tensor, generator: torch.Generator | None = None) -> RenderOutput:
        self._background = background
        p, sel = self.params, self.selected
        view = _PartlyFrozen(_rows(sel, p.means), _rows(sel, p.quats), torch.exp(_rows(sel, p.log_scales)),
                             torch.sigmoid(_rows(sel, p.opacity_logits)), _rows(sel, p.sh_coeffs), p.sh_degree)
        return self.inner.renderer.render(view, cameras, background)

    def render_views(self, cameras: Cameras, background: Tensor) -> tuple[Tensor, Tensor]:
        return self.inner.render_views(cameras, background)

    def regularisation(self, render: RenderOutput, step: int) -> Tensor | None:
        """The pseudo-ground-truth term on the step's render (its cameras came through ``before_backward``)."""
        if self.pseudo_gt_weight <= 0 or self._cameras is None:
            return None
        with torch.no_grad():
            renderer = self.inner.renderer
            original = renderer.render(self.original, self._cameras, self._background).rgb
            footprint = renderer.render_features(self.params, self._cameras, self.selected.float()[:, None])
            target = footprint * render.rgb.detach() + (1 - footprint) * original
        return self.pseudo_gt_weight * (render.rgb - target).abs().mean()

    def before_backward(self, step: int, render: RenderOutput, cameras: Cameras) -> None:
        self._cameras = cameras
        if render.means2d.requires_grad:
            keep = self.selected.to(render.means2d.dtype)[None, :, None]
            render.means2d.register_hook(lambda grad: grad * keep)
        self.inner.before_backward(step, render, cameras)

    def after_update(self, update: Update, render: RenderOutput, cameras: Cameras) -> dict[str, float]:
        terms = self.inner.after_update(update, render, cameras)  # densification carries the selection
        self.freeze_moments(update.optimizers)
        return {**terms, "selected": float(self.selected.sum())}

    @torch.no_grad()
    def freeze_moments(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """Zero Adam's first moment on the unselected rows: with their zero gradient, their next updates are
        exactly zero."""
        frozen = ~self.selected
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    moment = optimizer.state.get(p, {}).get("exp_avg")
                    if moment is not None and moment.shape[:1] == frozen.shape:
                        moment[frozen] = 0

    def extra_state(self) -> dict[str, Tensor]:
        return self.inner.extra_state()

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        self.inner.load_extra_state(state)

    def export(self, out_dir: Path) -> list[Path]:
        return self.inner.export(out_dir)

    def summary(self) -> dict:
        return {**self.inner.summary(), "selected_gaussians": int(self.selected.sum())}

    def describe(self) -> str:
        return f"{self.inner.describe()}, {int(self.selected.sum())} selected"
