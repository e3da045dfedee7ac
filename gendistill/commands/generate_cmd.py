"""``gendistill generate``: sample a grid of images from any diffusers text-to-image pipeline."""

from __future__ import annotations

from gendistill.commands.parsing import DefaultsFormatter
from gendistill.devices import pick_device
from gendistill.diffusion.samplers import SAMPLERS


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="sample images from a diffusers text-to-image pipeline",
                       description="Sample images from a diffusers text-to-image pipeline folder (or hub id) with "
                                   "gendistill's samplers; writes a grid PNG (the image itself for --num-images 1) "
                                   "and prints NFE and seconds per image.",
                       formatter_class=DefaultsFormatter)
    p.add_argument("--model", required=True,
                   help="diffusers pipeline folder, shipped model (e.g. shapes-dmd2-1step) or hub id (owner/name)")
    p.add_argument("--prompt", required=True, help="text prompt")
    p.add_argument("--negative-prompt", default=None, help="negative prompt (replaces the empty prompt in guidance)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps (>= 1), on --model's schedule")
    p.add_argument("--sampler", default="auto",
                   help=f"auto (run the pipeline's own diffusers scheduler, as the stock pipeline does) or one of "
                        f"gendistill's samplers: {', '.join(SAMPLERS)} (consistency is for LCM and DMD students)")
    p.add_argument("--scheduler", default=None,
                   help="with --sampler auto: a diffusers scheduler class to use instead of the pipeline's own, "
                        "built from its config (e.g. DPMSolverMultistepScheduler, UniPCMultistepScheduler)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1] (euler/ddim only): 0 deterministic")
    p.add_argument("--guidance", type=float, default=7.5,
                   help="classifier-free guidance scale (>= 0); as in diffusers, <= 1 means conditional only")
    p.add_argument("--negative-guidance", type=float, default=0.0,
                   help="a multi-CFG student only (e.g. shapes-multi-cfg): the scale of --negative-prompt, applied "
                        "in the same single network call as --guidance")
    p.add_argument("--guidance-rescale", type=float, default=0.0, help="guidance rescale in [0, 1]")
    p.add_argument("--karras", action="store_true",
                   help="Karras sigmas (auto: the scheduler's use_karras_sigmas; a note says when it has none)")
    p.add_argument("--seed", type=int, default=0, help="random seed (diffusers' seed-to-noise convention)")
    p.add_argument("--num-images", type=int, default=4, help="images to sample (one grid; 1 writes the image itself)")
    p.add_argument("--base-model", default=None,
                   help="hybrid sampling (diversity distillation): this model (e.g. the teacher) takes the first "
                        "--base-steps of the --steps, --model the rest")
    p.add_argument("--base-steps", type=int, default=0, help="how many of the --steps --base-model takes")
    p.add_argument("--base-guidance", type=float, default=1.0,
                   help="guidance scale for --base-model's steps (1: conditional only, which keeps the base's "
                        "diversity; higher scales bring the mode-seeking back)")
    p.add_argument("--lora", default=None,
                   help="a diffusers LoRA file or folder (e.g. shapes-lcm-lora, or a run's DIR/lora) fused into "
                        "--model first, as pipe.load_lora_weights does")
    p.add_argument("--lora-scale", type=float, default=1.0, help="strength of --lora (a slider's position)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--out", required=True, help="output PNG (the grid, or the one image)")
    p.add_argument("--show-targets", default=None, metavar="PNG",
                   help="also write each step's x0 prediction (the diffusion target) as a grid: one row per step, "
                        "one column per image; with --base-model the first --base-steps rows are the base's")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.backends.loading import load_pipeline
    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.backends.generation import GenerationRequest, generate, validate
    from gendistill.errors import UserError
    from gendistill.render.images import make_grid, save_png

    request = GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps, sampler=args.sampler,
        eta=args.eta, guidance=args.guidance, negative_guidance=args.negative_guidance,
        guidance_rescale=args.guidance_rescale, seed=args.seed,
        num_images=args.num_images, karras=args.karras, base_steps=args.base_steps, base_guidance=args.base_guidance,
        scheduler=args.scheduler)
    validate(request, has_base=args.base_model is not None)  # before any loading
    device = pick_device(args.device)
    pipe = load_pipeline(args.model, device=device)
    if args.lora:
        from gendistill.backends.lora import apply_lora_file

        apply_lora_file(pipe, args.lora, args.lora_scale)
    model = TextToImageModel(pipe)
    if args.negative_guidance and model.negative_token is None:
        raise UserError(f"--negative-guidance needs a multi-CFG student (e.g. shapes-multi-cfg); {args.model} has "
                        "none: give the negative prompt alone, it replaces the empty prompt in guidance")
    base = TextToImageModel(load_pipeline(args.base_model, device=device)) if args.base_model else None
    result = generate(model, request, base, keep_targets=args.show_targets is not None)
    images = result.images
    path = save_png(images[0] if len(images) == 1 else make_grid(images), args.out)  # one image: no frame
    print(f"wrote {path}: {request.num_images} images with {result.sampler}, NFE {result.nfe:g} per image, "
          f"{result.seconds_per_image:.3f} s per image")
    if args.show_targets:
        print(write_targets(model, result.targets, args.show_targets, request.base_steps))
    return 0


def write_targets(model, targets, out: str, base_steps: int = 0) -> str:
    """Decode every step's x0 prediction into one grid (rows: steps; columns: images); returns what it wrote."""
    from gendistill.render.images import make_grid, save_png

    steps, count = targets.shape[:2]
    images = model.decode(targets.flatten(0, 1).to(model.network.device)).cpu()
    path = save_png(make_grid(images, columns=count), out)
    rows = "row 1" if base_steps == 1 else f"rows 1-{base_steps}"
    who = f"; {rows} by --base-model, the rest by --model" if base_steps else ""
    return f"wrote {path}: x0 predictions of {steps} steps (one row each) x {count} images{who}"
