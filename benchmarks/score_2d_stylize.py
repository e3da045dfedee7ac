"""Benchmark: Attention Distillation style transfer (``gendistill stylize``) on the shapes teacher, against
no-attention-loss baselines in the same run.

    OMP_NUM_THREADS=1 python benchmarks/score_2d_stylize.py [--pairs 12] [--iterations 200] [--out benchmarks/results]

Each pair is a content render (one shape in one colour, from a held-out camera) and a reference render (another
shape in another colour). Every method starts from the content's latents and runs the same number of steps on the
trainer; the shapes classifier then reads the output: **colour accuracy** against the reference's colour (did the
style come across?) and **shape accuracy** against the content's shape (did the layout stay?). Methods:

- ``attention distillation``: the shapes-stylize preset (L_AD + content loss);
- ``content loss only``: the same run with ``loss.ad_weight=0`` (no attention loss);
- ``attention distillation from AdaIN-initialised latents`` (``transfer.init=adain``: the content's latents with
  the reference's channel means and stds), and the same start with the content loss alone;
- ``SDS toward the caption``: prompt-only SDS (CFG 7.5) toward "a <reference colour> <content shape>", which is
  told in words what AD has to read from the reference image.

A second table runs the text-to-image mode (no content): the content's caption sampled by DDIM (50 steps, CFG 7.5)
with attention-distillation guidance toward the reference (the preset's; with AdaIN; at the paper's step size),
against the same sampler without guidance.
CPU time per image is process time on one thread. Writes score_2d_stylize.json and .md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


TRANSFER_OVERRIDES = {"attention_distillation": [], "content_only": ["loss.ad_weight=0"],
                      "ad_adain": ["transfer.init=adain"], "adain_content_only": ["transfer.init=adain",
                                                                                  "loss.ad_weight=0"]}
"""Each transfer method as overrides of the shapes-stylize preset (sds is built apart)."""


def make_pairs(n: int):
    """``n`` (content scene, content camera, reference scene, reference camera): different colour and shape."""
    from gendistill.domains.shapes.scene import COLOURS, SHAPES, Scene
    from gendistill.jobs.text_to_3d.evaluate3d import heldout_cameras

    colours, cameras = list(COLOURS), heldout_cameras()
    pairs = []
    for k in range(n):
        content = Scene(SHAPES[k % len(SHAPES)], colours[k % len(colours)])
        reference = Scene(SHAPES[(k + 2) % len(SHAPES)], colours[(k + 3 + k // len(colours)) % len(colours)])
        pairs.append((content, cameras[k % len(cameras)], reference, cameras[(k + 3) % len(cameras)]))
    return pairs


def write_renders(pairs, folder: Path) -> list[tuple[Path, Path]]:
    from gendistill.domains.shapes import render_batch
    from gendistill.render.images import save_png

    paths = []
    for i, (content, c_cam, reference, r_cam) in enumerate(pairs):
        rgb = render_batch([content, reference], [c_cam, r_cam]).rgb
        paths.append((save_png(rgb[0], folder / f"content_{i}.png"), save_png(rgb[1], folder / f"reference_{i}.png")))
    return paths


def run_method(method: str, pair_paths, pairs, iterations: int, folder: Path):
    """(images (N, 3, 64, 64), CPU seconds per image) of one method over every pair."""
    import torch

    from gendistill.jobs.score_2d.stylize import StylizeInputs, load_stylize_config, run_stylize
    from gendistill.shipped import resolve_preset

    preset = resolve_preset("shapes-stylize", "stylize")
    overrides = ["progress=false", "device=cpu", f"transfer.run.iterations={iterations}",
                 f"transfer.run.checkpoint_every={iterations}"]
    images, seconds = [], 0.0
    for i, ((content_path, reference_path), (content, _, reference, _)) in enumerate(zip(pair_paths, pairs)):
        prompt = f"{reference.colour} {content.shape}"
        start = time.process_time()
        if method == "sds":
            image = sds_baseline(content_path, f"a {prompt}", iterations, folder / f"{method}_{i}")
        else:
            config = load_stylize_config(preset, overrides + TRANSFER_OVERRIDES[method])
            inputs = StylizeInputs(reference_path, f"a {prompt}", content_path)
            image = run_stylize(inputs, config, folder / f"{method}_{i}", progress=False).images[0]
        seconds += time.process_time() - start
        images.append(image)
    return torch.stack(images), seconds / len(pairs)


def sds_baseline(content_path: Path, prompt: str, iterations: int, out_dir: Path):
    """Prompt-only SDS on the content's latents (the text-to-3D job's SDS settings on a latent scene)."""
    import torch

    from gendistill.backends.loading import load_pipeline
    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.jobs.score_2d.run import Run2DConfig, run_scene_2d
    from gendistill.render.images import load_image
    from gendistill.score.teacher import image_latents
    from gendistill.jobs.text_to_3d.config import default_method
    from gendistill.render.scenes.latents import LatentSceneConfig

    model = _model(TextToImageModel, load_pipeline)
    scene = LatentSceneConfig(lr=0.02, betas=(0.9, 0.999)).build(image_latents(model, load_image(content_path)),
                                                                  model.decode)
    guidance = default_method().build(model)
    run = Run2DConfig(iterations=iterations, checkpoint_every=iterations)
    run_scene_2d(scene, guidance, prompt, model.image_size(), run, 0, out_dir, lambda r: r, torch.device("cpu"),
                 progress=False)
    return scene.image()


_MODEL = {}


def _model(cls, loader):
    if "m" not in _MODEL:
        _MODEL["m"] = cls(loader("shapes-teacher"))
    return _MODEL["m"]


def sampler_rows(pairs, pair_paths, steps: int):
    """Text-to-image with a style: (guided, plain) images and CPU seconds per image."""
    import torch

    from gendistill.backends.loading import load_pipeline
    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.domains.shapes import caption
    from gendistill.jobs.score_2d.stylize import load_stylize_config, stylized_samples
    from gendistill.render.images import load_image
    from gendistill.score.teacher import image_latents
    from gendistill.shipped import resolve_preset

    model = _model(TextToImageModel, load_pipeline)
    out = {}
    variants = {"guided": [], "guided_adain": ["sample.guide.adain=true"],
                "paper": ["sample.guide.lr=0.015", "sample.guide.steps=2"], "plain": ["sample.guide.lr=0"]}
    for name, extra in variants.items():
        config = load_stylize_config(resolve_preset("shapes-stylize", "stylize"),
                                     ["device=cpu", f"sample.steps={steps}", *extra])
        images, start = [], time.process_time()
        for i, ((_, reference_path), (content, _, _, _)) in enumerate(zip(pair_paths, pairs)):
            config.seed = i
            reference = image_latents(model, load_image(reference_path))
            images.append(stylized_samples(model, caption(content), reference, config)[0][0])
        out[name] = (torch.stack(images), (time.process_time() - start) / len(pairs))
    return out


def scores(classifier, images, pairs) -> dict:
    """Colour accuracy against the references, shape accuracy against the contents."""
    from gendistill.domains.shapes.scene import Scene
    from gendistill.domains.shapes.metrics import colour_accuracy, shape_accuracy

    outputs = classifier.classify(images)
    refs = [Scene(content.shape, reference.colour) for content, _, reference, _ in pairs]
    return {"colour_accuracy_vs_reference": colour_accuracy(outputs, refs),
            "shape_accuracy_vs_content": shape_accuracy(outputs, refs),
            "colour_accuracy_vs_content": colour_accuracy(outputs, [c for c, _, _, _ in pairs])}


LABELS = {"attention_distillation": "attention distillation (shapes-stylize: L_AD + 0.5 L_c)",
          "content_only": "content loss only (no attention loss)",
          "ad_adain": "attention distillation from AdaIN-initialised latents",
          "adain_content_only": "AdaIN-initialised latents, content loss only (no attention loss)",
          "sds": "SDS toward the caption (prompt only)", "guided": "DDIM + AD guidance (lr 0.1, 3 steps)",
          "guided_adain": "DDIM + AD guidance + AdaIN", "paper": "DDIM + AD guidance at the paper's lr 0.015, 2 steps",
          "plain": "DDIM, no guidance"}


def main(argv=None) -> int:
    from gendistill.compat import prepare_process

    prepare_process()
    import torch

    from gendistill.domains.shapes.classifier import load_classifier
    from gendistill.domains.shapes.evaluation import CLASSIFIER_DIR
    from gendistill.render.images import make_grid, save_png

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--methods", default="attention_distillation,content_only,ad_adain,adain_content_only,sds")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--grid", default=None, help="also write a PNG grid of inputs and outputs here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    classifier = load_classifier(CLASSIFIER_DIR)
    pairs = make_pairs(args.pairs)
    rows, grids = {}, []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        pair_paths = write_renders(pairs, folder)
        inputs = torch.stack([torch.stack([_read(c), _read(r)]) for c, r in pair_paths])
        rows["content renders (input)"] = {**scores(classifier, inputs[:, 0], pairs), "cpu_seconds_per_image": 0.0}
        grids += [inputs[:, 0], inputs[:, 1]]
        run_method("attention_distillation", pair_paths[:1], pairs[:1], 1, folder / "warm-up")  # imports, caches
        for method in args.methods.split(","):
            images, seconds = run_method(method, pair_paths, pairs, args.iterations, folder)
            rows[LABELS[method]] = {**scores(classifier, images, pairs), "cpu_seconds_per_image": round(seconds, 2)}
            grids.append(images)
        sampled = sampler_rows(pairs, pair_paths, args.sample_steps) if args.sample_steps else {}
    sampler = {LABELS[k]: {**scores(classifier, images, pairs), "cpu_seconds_per_image": round(s, 2)}
               for k, (images, s) in sampled.items()}
    grids += [images for images, _ in sampled.values()]
    if args.grid:
        save_png(make_grid(torch.stack(grids, 1).flatten(0, 1), columns=len(grids)), args.grid)
    result = {"model": "shapes-teacher", "pairs": args.pairs, "iterations": args.iterations,
              "sample_steps": args.sample_steps, "threads": 1,
              "pairs_list": [f"{c.colour} {c.shape} <- {r.colour} {r.shape}" for c, _, r, _ in pairs],
              "transfer": rows, "sampler": sampler}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "score_2d_stylize.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (out / "score_2d_stylize.md").write_text(text)
    print(text, end="")
    return 0


def _read(path):
    from gendistill.render.images import load_image

    return load_image(path)


def markdown(result: dict) -> str:
    head = ("| method | colour acc. vs reference | shape acc. vs content | colour acc. vs content | "
            "CPU s / image |\n|---|---|---|---|---|\n")
    lines = [f"Attention Distillation on the shapes teacher: {result['pairs']} (content, reference) pairs of "
             f"different colour and shape, {result['iterations']} steps from the content's latents, one thread.\n",
             head]
    for name, row in result["transfer"].items():
        lines.append(_row(name, row))
    if result["sampler"]:
        lines.append(f"\nText-to-image with the reference's style (the content's caption, DDIM "
                     f"{result['sample_steps']} steps, CFG 7.5):\n\n{head}")
        lines += [_row(name, row) for name, row in result["sampler"].items()]
    return "".join(lines)


def _row(name: str, row: dict) -> str:
    return (f"| {name} | {row['colour_accuracy_vs_reference']:.3f} | {row['shape_accuracy_vs_content']:.3f} | "
            f"{row['colour_accuracy_vs_content']:.3f} | {row['cpu_seconds_per_image']:.2f} |\n")


if __name__ == "__main__":
    raise SystemExit(main())
