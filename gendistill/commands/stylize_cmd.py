"""``gendistill stylize``: a reference image's style by Attention Distillation (CVPR 2025, arXiv 2502.20235)."""

from __future__ import annotations

import sys

from gendistill.commands.parsing import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("stylize", help="transfer a reference image's style (Attention Distillation)",
                       description="Attention Distillation (Zhou et al., CVPR 2025): with --content, the content "
                                   "image's latents are optimised so that the UNet's self-attention outputs match "
                                   "attention over the reference's keys and values while the queries keep the "
                                   "content's layout; without it, PROMPT is sampled by DDIM with that loss as "
                                   "guidance. Writes DIR/stylized.png (the content's size when given), strip.png "
                                   "(content | reference | output), curves.png, metrics.json and config.yaml; "
                                   "style transfer also keeps checkpoints/ (--resume), and Ctrl-C still writes "
                                   "the outputs of the last step.",
                       formatter_class=DefaultsFormatter)
    p.add_argument("--reference", required=True, help="the style image (PNG or JPEG)")
    p.add_argument("--prompt", required=True, help="what the image shows, e.g. 'a red cube'")
    p.add_argument("--content", default=None, help="the image whose layout to keep (style transfer); "
                                                   "without it: text-to-image with the reference's style")
    p.add_argument("--model", default=None, help="diffusers UNet pipeline folder, shipped model or hub id; "
                                                 "default: the config's (shapes-teacher)")
    p.add_argument("--config", default=None,
                   help="YAML config, or a shipped preset by name (shapes-stylize, sd15-stylize)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set transfer.run.iterations=100 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="random seed; default: the config's (0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true",
                   help="style transfer: continue the run in --out from its newest readable checkpoint")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.run_dir import check_out_dir

    check_out_dir(args.out)
    from gendistill.jobs.score_2d.stylize import StylizeInputs, load_stylize_config, run_stylize, validate
    from gendistill.shipped import resolve_preset
    from pathlib import Path

    overrides = list(args.overrides)
    for key, value in (("model", args.model), ("seed", args.seed)):
        if value is not None:
            overrides.append(f"{key}={value}")
    preset = resolve_preset(args.config, "stylize") if args.config else None
    config = load_stylize_config(preset, overrides)
    inputs = StylizeInputs(Path(args.reference), args.prompt, None if args.content is None else Path(args.content))
    validate(inputs, config)  # one line before any model is loaded
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    result = run_stylize(inputs, config, args.out, resume=args.resume, log=log)
    final = ", ".join(f"{k} {v:.4f}" for k, v in result.final.items())
    print(f"stylized: {result.files[0]} ({result.mode}, {result.steps} steps, {result.seconds:.0f} s"
          f"{'; ' + final if final else ''})")
    return 0
