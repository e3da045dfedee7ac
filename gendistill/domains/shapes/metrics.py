"""Image-quality metrics of the shapes domain, measured with the shapes classifier (DESIGN.md §5).

- **prompt accuracy**: the classifier reads back both the shape and the colour the prompt asked for;
- **FID**: Fréchet distance between Gaussians fitted to classifier features of the images and of held-out
  real renders of the same prompt mix (see :func:`matched_reference`);
- **diversity**: per prompt, mean pairwise feature distance among the images divided by the same among real
  renders of that scene (same object, random cameras), averaged over prompts. About 1 for a generator as
  varied as the renders, near 0 for a mode-collapsed one.

The metric functions are pure functions of tensors; :func:`evaluate_images` runs the classifier and joins them.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from gendistill.errors import UserError

from .camera import sample_cameras
from .classifier import ClassifierOutput, ShapeClassifier, classifier_fingerprint, scene_key, scene_labels
from .dataset import split_generator
from .raycast import render_batch
from .scene import Scene, all_scenes

REFERENCE_SEED_OFFSET = 1_000_000
"""Reference renders use held-out split streams from this seed on, away from ``fixed_split``'s small seeds."""

SceneKey = tuple[str, str]
"""A prompt's identity for diversity: ``(shape, colour)``."""


# ----------------------------------------------------------------------------- accuracy

def shape_accuracy(outputs: ClassifierOutput, scenes: Sequence) -> float:
    """Fraction of images whose predicted shape is the scene's shape."""
    shape_ids, _ = scene_labels(scenes)
    return _mean(outputs.shape_logits.argmax(-1).cpu() == shape_ids)


def colour_accuracy(outputs: ClassifierOutput, scenes: Sequence) -> float:
    """Fraction of images whose predicted colour is the scene's colour."""
    _, colour_ids = scene_labels(scenes)
    return _mean(outputs.colour_logits.argmax(-1).cpu() == colour_ids)


def prompt_accuracy(outputs: ClassifierOutput, scenes: Sequence) -> float:
    """Fraction of images whose predicted shape and colour are both the scene's."""
    shape_ids, colour_ids = scene_labels(scenes)
    shape_ok = outputs.shape_logits.argmax(-1).cpu() == shape_ids
    colour_ok = outputs.colour_logits.argmax(-1).cpu() == colour_ids
    return _mean(shape_ok & colour_ok)


def _mean(correct: Tensor) -> float:
    if correct.numel() == 0:
        raise ValueError("accuracy of an empty batch is undefined")
    return correct.double().mean().item()


# ----------------------------------------------------------------------------- Fréchet distance

@dataclass(frozen=True)
class GaussianStats:
    """Mean (F,) and covariance (F, F) of a set of feature vectors, float64."""

    mean: Tensor
    cov: Tensor


def gaussian_stats(feats: Tensor, weights: Tensor | None = None) -> GaussianStats:
    """Fit a Gaussian to (N, F) features, N >= 2: unbiased covariance, optionally with (N,) sample weights
    (reliability weights; equal weights give the plain unbiased estimate)."""
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need (N, F) features with N >= 2, got shape {tuple(feats.shape)}")
    x = feats.detach().cpu().double()
    w = torch.ones(x.shape[0], dtype=torch.float64) if weights is None else weights.detach().cpu().double()
    w = w / w.sum()
    mean = w @ x
    xc = x - mean
    return GaussianStats(mean, (xc.T * w) @ xc / (1 - w.square().sum()))


def frechet_distance_from_stats(a: GaussianStats, b: GaussianStats) -> float:
    """``||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^{1/2})``.

    ``tr (C_a C_b)^{1/2}`` is computed as the sum of square roots of the eigenvalues of the symmetric PSD
    matrix ``C_a^{1/2} C_b C_a^{1/2}`` (same nonzero spectrum as ``C_a C_b``), so only symmetric eigensolvers
    are used and rank-deficient covariances (fewer samples than features) are fine.
    """
    mu_a, mu_b = a.mean.double(), b.mean.double()
    cov_a, cov_b = _symmetric(a.cov.double()), _symmetric(b.cov.double())
    sqrt_a = _psd_sqrt(cov_a)
    cross = _without_roundoff(torch.linalg.eigvalsh(_symmetric(sqrt_a @ cov_b @ sqrt_a))).sqrt().sum()
    dist = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return max(dist.item(), 0.0)


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, F) feature sets (FID on any features)."""
    return frechet_distance_from_stats(gaussian_stats(feats_a), gaussian_stats(feats_b))


def _symmetric(m: Tensor) -> Tensor:
    return 0.5 * (m + m.T)


def _psd_sqrt(m: Tensor) -> Tensor:
    evals, evecs = torch.linalg.eigh(m)
    return (evecs * _without_roundoff(evals).sqrt()) @ evecs.T


def _without_roundoff(evals: Tensor) -> Tensor:
    """Eigenvalues of a PSD matrix with those below the eigensolver's round-off set to zero.

    A zero eigenvalue comes back as +-1e-16 or so; its square root (1e-8) would otherwise bias the trace term
    by about 1e-8 per null direction, and by a different amount depending on the argument order.
    """
    floor = evals.abs().max() * evals.numel() * torch.finfo(evals.dtype).eps
    return torch.where(evals > floor, evals, torch.zeros_like(evals))


# ----------------------------------------------------------------------------- diversity

def mean_pairwise_distance(feats: Tensor) -> float:
    """Mean Euclidean distance over all unordered pairs of rows of (N, F) features, N >= 2."""
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need (N, F) features with N >= 2, got shape {tuple(feats.shape)}")
    return torch.pdist(feats.detach().cpu().double()).mean().item()


def diversity(feats_by_prompt_generated: Mapping[Hashable, Tensor],
              feats_by_prompt_real: Mapping[Hashable, Tensor]) -> float:
    """Mean over prompts of (mean pairwise distance of generated features) / (same for real features).

    Both arguments map a prompt key to (n, F) features, n >= 2; every generated key must have real features.
    """
    if not feats_by_prompt_generated:
        raise ValueError("diversity needs at least one prompt")
    ratios = []
    for key, generated in feats_by_prompt_generated.items():
        if key not in feats_by_prompt_real:
            raise KeyError(f"no real features for prompt {key!r}")
        real_spread = mean_pairwise_distance(feats_by_prompt_real[key])
        if real_spread <= 0:
            raise ValueError(f"real features of prompt {key!r} are all identical; diversity is undefined")
        ratios.append(mean_pairwise_distance(generated) / real_spread)
    return sum(ratios) / len(ratios)


# ----------------------------------------------------------------------------- reference statistics

@dataclass(frozen=True)
class ReferenceStats:
    """Classifier features of held-out real renders: the yardstick FID and diversity are measured against."""

    gaussian: GaussianStats
    """Mean and covariance of all reference features (FID)."""
    features_by_scene: dict[SceneKey, Tensor]
    """(n_per_scene, F) features per ``(shape, colour)``: one scene, random cameras (diversity)."""
    n_per_scene: int
    seed: int
    classifier_id: str = ""
    """Fingerprint of the classifier whose features these are (see ``classifier_fingerprint``)."""


def reference_stats(classifier: ShapeClassifier, n_per_scene: int = 16, seed: int = 0,
                    scenes: Sequence[Scene] | None = None, batch_size: int = 256) -> ReferenceStats:
    """Render ``n_per_scene`` random views of every (shape, colour) scene (or of ``scenes``) and fit the
    reference statistics.

    Cameras come from a held-out stream (``split_generator("heldout", REFERENCE_SEED_OFFSET + seed)``), so
    they never coincide with training renders nor with the first renders of ``fixed_split(..., "heldout")``.
    """
    if n_per_scene < 2:
        raise UserError(f"n_per_scene must be >= 2 (diversity needs pairs), got {n_per_scene}")
    generator = split_generator("heldout", REFERENCE_SEED_OFFSET + seed)
    by_scene: dict[SceneKey, Tensor] = {}
    for scene in all_scenes() if scenes is None else scenes:
        images = render_batch([scene] * n_per_scene, sample_cameras(n_per_scene, generator)).rgb
        by_scene[scene_key(scene)] = classifier.classify(images, batch_size=batch_size).features
    everything = torch.cat(list(by_scene.values()))
    return ReferenceStats(gaussian_stats(everything), by_scene, n_per_scene, seed,
                          classifier_fingerprint(classifier))


def cached_reference_stats(classifier: ShapeClassifier, cache_dir: str | Path, n_per_scene: int = 16,
                           seed: int = 0, scenes: Sequence[Scene] | None = None) -> ReferenceStats:
    """:func:`reference_stats` of all scenes (or ``scenes``), read from ``cache_dir`` when a file for this
    classifier is there, else computed and written there (best effort: a read-only folder skips the write)."""
    subset = "" if scenes is None else "-" + _digest(sorted(map(scene_key, scenes)))
    path = Path(cache_dir) / f"reference-n{n_per_scene}-seed{seed}{subset}.safetensors"
    fingerprint = classifier_fingerprint(classifier)
    if path.is_file():
        cached = load_reference_stats(path)
        if cached.classifier_id == fingerprint:
            return cached
    stats = reference_stats(classifier, n_per_scene, seed, scenes)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_reference_stats(stats, path)
    except OSError:
        pass
    return stats


def _digest(obj) -> str:
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:8]


def save_reference_stats(stats: ReferenceStats, path: str | Path) -> None:
    """Write reference statistics to one safetensors file (atomic replace)."""
    from safetensors.torch import save_file

    tensors = {"mean": stats.gaussian.mean.contiguous(), "cov": stats.gaussian.cov.contiguous()}
    for (shape, colour), feats in stats.features_by_scene.items():
        tensors[f"scene/{shape}/{colour}"] = feats.float().contiguous()
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata={"n_per_scene": str(stats.n_per_scene), "seed": str(stats.seed),
                                           "classifier_id": stats.classifier_id})
    tmp.replace(path)


def load_reference_stats(path: str | Path) -> ReferenceStats:
    """Read statistics written by :func:`save_reference_stats`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"reference statistics not found: {path} (make them with reference_stats + "
                        "save_reference_stats)")
    by_scene: dict[SceneKey, Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        mean, cov = f.get_tensor("mean"), f.get_tensor("cov")
        for name in f.keys():
            if name.startswith("scene/"):
                _, shape, colour = name.split("/")
                by_scene[(shape, colour)] = f.get_tensor(name)
    return ReferenceStats(GaussianStats(mean, cov), by_scene, int(meta.get("n_per_scene", 0)),
                          int(meta.get("seed", -1)), meta.get("classifier_id", ""))


def matched_reference(reference: ReferenceStats, keys: Sequence[SceneKey]) -> GaussianStats:
    """Gaussian of the reference features mixed in the proportions the scenes appear in ``keys``.

    FID against it compares images with real renders *of the same prompts*, so evaluating on a subset of
    the 40 scenes (or an uneven mix) is not penalised for the prompt mix itself.
    """
    counts = Counter(keys)
    missing = [key for key in counts if key not in reference.features_by_scene]
    if missing:
        raise KeyError(f"reference statistics have no features for scenes {missing}")
    feats = [reference.features_by_scene[key] for key in counts]
    weights = [torch.full((len(f),), count / len(f)) for f, count in zip(feats, counts.values())]
    return gaussian_stats(torch.cat(feats), torch.cat(weights))


# ----------------------------------------------------------------------------- one call for trainer and CLI

@dataclass(frozen=True)
class ImageQuality:
    """What the shapes evaluator says about a set of generated images."""

    prompt_accuracy: float
    """Fraction with shape and colour both right."""
    shape_accuracy: float
    colour_accuracy: float
    fid: float
    """Fréchet distance of classifier features against reference renders of the same prompt mix (lower is
    better). Biased upwards for few images: compare runs at the same number of images (>= ~100)."""
    diversity: float
    """Generated / real mean pairwise feature distance per prompt, averaged (about 1 is real-like);
    NaN when no prompt has two or more images."""
    num_images: int


def evaluate_images(classifier: ShapeClassifier, images: Tensor, scenes: Sequence,
                    reference: ReferenceStats, batch_size: int = 256) -> ImageQuality:
    """Score (N, 3, 64, 64) images in [0, 1] generated for ``scenes`` (one Scene per image).

    FID is against :func:`matched_reference`; diversity uses the prompts with at least two images.
    Needs N >= 2.
    """
    if images.ndim != 4 or images.shape[0] != len(scenes):
        raise ValueError(f"need (N, 3, H, W) images and N scenes, got {tuple(images.shape)} "
                         f"and {len(scenes)} scenes")
    outputs = classifier.classify(images, batch_size=batch_size)
    feats, keys = outputs.features, [scene_key(scene) for scene in scenes]
    groups: dict[SceneKey, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    by_prompt = {key: feats[idx] for key, idx in groups.items() if len(idx) >= 2}
    return ImageQuality(
        prompt_accuracy=prompt_accuracy(outputs, scenes),
        shape_accuracy=shape_accuracy(outputs, scenes),
        colour_accuracy=colour_accuracy(outputs, scenes),
        fid=frechet_distance_from_stats(gaussian_stats(feats), matched_reference(reference, keys)),
        diversity=diversity(by_prompt, reference.features_by_scene) if by_prompt else math.nan,
        num_images=len(scenes),
    )
