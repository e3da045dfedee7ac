"""Benchmark: a multi-CFG student (one pass) against its teacher's three-pass guidance, over a grid of scales.

    python benchmarks/multi_cfg.py [--student DIR] [--teacher shapes-teacher] [--num-prompts 40] [--steps 25]

For each cell of w_c in {1.5, 2.5, 3.5} x w_n in {0, 0.5, 1.0} (``--cond-scales``, ``--negative-scales``), the
teacher samples ``x0_u + w_c (x0_c - x0_u) - w_n (x0_n - x0_u)`` (one batched call of 3 rows per image per step)
and the student its single pass at (w_c, w_n), from the SAME initial noise with the same deterministic scheduler
(the teacher's DDIM) and steps. Each prompt ("a red cube") gets a negative prompt of another shape and another
colour ("a blue sphere"), fixed by ``--seed``. Per cell: prompt accuracy of each (shapes classifier), latent error
(RMS of the final latent difference / RMS of the teacher's final latents), images per second of each (sampling and
VAE decoding, same batch size, measured in this run), and the speed-up. Writes multi_cfg.json and multi_cfg.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def negative_captions(scenes, seed: int) -> list[str]:
    """For each scene, the caption of a random scene with another shape and another colour."""
    import torch

    from gendistill.domains.shapes import all_scenes, caption

    generator, pool = torch.Generator().manual_seed(seed), all_scenes()
    out = []
    for scene in scenes:
        others = [s for s in pool if s.shape != scene.shape and s.colour != scene.colour]
        out.append(caption(others[int(torch.randint(len(others), (1,), generator=generator))]))
    return out


def teacher_denoiser(model, prompts: list[str], negatives: list[str], w_c: float, w_n: float):
    """(denoiser, condition) of the teacher's three-condition guidance, one network call of 3B rows per step."""
    import torch

    from gendistill.diffusion.denoiser import TextCondition
    from gendistill.distill.multi_cfg import multi_cfg_target

    cond, uncond = model.encode_batch(prompts)
    negative, _ = model.encode_batch(negatives)
    inner, n = model.denoiser(), len(prompts)
    both = TextCondition.concat([cond, negative, uncond])
    scale_c, scale_n = torch.full((n,), w_c), torch.full((n,), w_n)

    def guided(x, sigma, _cond=None):
        sig = torch.as_tensor(sigma, device=x.device)
        x0_c, x0_n, x0_u = inner(torch.cat([x, x, x]), sig.repeat(3) if sig.ndim else sig, both).chunk(3)
        return multi_cfg_target(x0_c, x0_n, x0_u, scale_c, scale_n)

    return guided, None


def student_denoiser(model, prompts: list[str], negatives: list[str], w_c: float, w_n: float):
    """(denoiser, condition) of the student's single pass at (w_c, w_n)."""
    cond = model.encode_multi_cfg(prompts, negatives)
    return model.denoiser(w_c, len(prompts), boundary=None, negative_guidance=w_n), cond


def sample(model, make_denoiser, prompts, negatives, w_c, w_n, steps: int, seed: int):
    """(final latents, images, seconds of sampling, seconds in all) on the model's own scheduler from noise
    seeded ``seed`` (sampling: text encoding and the denoising loop; in all: plus VAE decoding)."""
    import torch

    from gendistill.backends.scheduler_driver import TimestepUnits, sample_with_scheduler

    start = time.perf_counter()
    with torch.inference_mode():
        denoiser, cond = make_denoiser(model, prompts, negatives, w_c, w_n)
        noise = torch.randn(model.latent_shape(len(prompts)), generator=torch.Generator().manual_seed(seed))
        scheduler = type(model.pipe.scheduler).from_config(model.pipe.scheduler.config)
        for step in sample_with_scheduler(scheduler, denoiser, noise, cond, steps, TimestepUnits.of(model)):
            latents = step.latents
        sampled = time.perf_counter()
        images = model.decode(latents)
    return latents.float(), images, sampled - start, time.perf_counter() - start


def measure_cell(teacher, student, evaluator, scenes, prompts, negatives, w_c, w_n, args) -> dict:
    """One grid cell: both models on the same noise, batch by batch; accuracy, latent error and speed."""
    import torch

    rows = {label: {"latents": [], "images": [], "sampling": 0.0, "total": 0.0} for label in ("teacher", "student")}
    for start in range(0, len(prompts), args.batch_size):
        chunk = slice(start, start + args.batch_size)
        for label, model, make in (("teacher", teacher, teacher_denoiser), ("student", student, student_denoiser)):
            latents, images, sampling, total = sample(model, make, prompts[chunk], negatives[chunk], w_c, w_n,
                                                      args.steps, args.seed + start)
            row = rows[label]
            row["latents"].append(latents)
            row["images"].append(images)
            row["sampling"], row["total"] = row["sampling"] + sampling, row["total"] + total
    t_lat, s_lat = torch.cat(rows["teacher"]["latents"]), torch.cat(rows["student"]["latents"])
    cell = {"cond_scale": w_c, "negative_scale": w_n,
            "latent_error": float((s_lat - t_lat).pow(2).mean().sqrt() / t_lat.pow(2).mean().sqrt())}
    for label, nfe in (("teacher", 3), ("student", 1)):
        quality = evaluator.score(torch.cat(rows[label]["images"]), scenes)
        cell[label] = {"prompt_accuracy": quality.prompt_accuracy, "nfe_per_step": nfe,
                       "images_per_second": len(prompts) / rows[label]["total"],
                       "sampling_images_per_second": len(prompts) / rows[label]["sampling"]}
    cell["speedup"] = cell["student"]["images_per_second"] / cell["teacher"]["images_per_second"]
    cell["sampling_speedup"] = (cell["student"]["sampling_images_per_second"]
                                / cell["teacher"]["sampling_images_per_second"])
    return cell


def markdown(cells: list[dict], args) -> str:
    head = ("| w_c | w_n | teacher acc | student acc | diff (pts) | latent error | teacher img/s | student img/s "
            "| speed-up | sampling speed-up |")
    lines = [f"Multi-CFG student `{args.student}` vs teacher `{args.teacher}`: {args.num_prompts} prompts per cell, "
             f"{args.steps} steps, batch {args.batch_size}, seed {args.seed}; NFE per step: teacher 3 (one call of "
             "3 rows per image), student 1.", "", head, "|" + "---|" * (head.count("|") - 1)]
    for c in cells:
        t, s = c["teacher"], c["student"]
        lines.append(f"| {c['cond_scale']:g} | {c['negative_scale']:g} | {t['prompt_accuracy']:.3f} | "
                     f"{s['prompt_accuracy']:.3f} | {100 * (s['prompt_accuracy'] - t['prompt_accuracy']):+.1f} | "
                     f"{c['latent_error']:.3f} | {t['images_per_second']:.2f} | {s['images_per_second']:.2f} | "
                     f"{c['speedup']:.2f}x | {c['sampling_speedup']:.2f}x |")
    mean = lambda key: sum(key(c) for c in cells) / len(cells)  # noqa: E731
    lines += ["", f"Mean over the grid: teacher accuracy {mean(lambda c: c['teacher']['prompt_accuracy']):.3f}, "
              f"student {mean(lambda c: c['student']['prompt_accuracy']):.3f}, latent error "
              f"{mean(lambda c: c['latent_error']):.3f}, speed-up {mean(lambda c: c['speedup']):.2f}x per image "
              f"({mean(lambda c: c['sampling_speedup']):.2f}x without VAE decoding).",
              "", "img/s and speed-up: text encoding, denoising loop and VAE decoding; sampling speed-up: without "
              "the decoding (the same for both)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from gendistill.compat import prepare_process

    prepare_process()
    from gendistill.backends.loading import load_pipeline
    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.domains.shapes.evaluation import ShapesEvaluator, evaluation_scenes
    from gendistill.domains.shapes import caption

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="shapes-multi-cfg",
                        help="the student folder (the shipped one, or a shapes-multi-cfg run's pipeline/)")
    parser.add_argument("--teacher", default="shapes-teacher")
    parser.add_argument("--num-prompts", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cond-scales", type=float, nargs="+", default=[1.5, 2.5, 3.5])
    parser.add_argument("--negative-scales", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    teacher = TextToImageModel(load_pipeline(args.teacher))
    student = TextToImageModel(load_pipeline(args.student))
    if student.negative_token is None:
        raise SystemExit(f"{args.student} is not a multi-CFG student (no negative_token in model_index.json)")
    evaluator = ShapesEvaluator.load()
    scenes = evaluation_scenes(args.num_prompts)
    prompts, negatives = [caption(s) for s in scenes], negative_captions(scenes, args.seed)
    cells = []
    for w_c in args.cond_scales:
        for w_n in args.negative_scales:
            cell = measure_cell(teacher, student, evaluator, scenes, prompts, negatives, w_c, w_n, args)
            cells.append(cell)
            print(f"w_c {w_c:g} w_n {w_n:g}: accuracy teacher {cell['teacher']['prompt_accuracy']:.3f} student "
                  f"{cell['student']['prompt_accuracy']:.3f}, latent error {cell['latent_error']:.3f}, speed-up "
                  f"{cell['speedup']:.2f}x", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "multi_cfg.json").write_text(json.dumps({"args": vars(args), "cells": cells}, indent=2))
    (out / "multi_cfg.md").write_text(markdown(cells, args))
    print(markdown(cells, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
