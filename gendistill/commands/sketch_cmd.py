"""``gendistill sketch``: a prompt drawn as N Bezier strokes (DiffSketcher: attention init, augmented SDS)."""

from __future__ import annotations

import sys

from gendistill.commands.parsing import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("sketch", help="draw a prompt as N Bezier strokes by augmented SDS (DiffSketcher)",
                       description="Optimise N cubic Bezier strokes (control points, widths and, in the shapes "
                                   "preset, colours) through a pure-PyTorch rasterizer so that a diffusers "
                                   "text-to-image model likes random warps and crops of the drawing (DiffSketcher, "
                                   "arXiv 2306.14685); strokes start where the model attends to the prompt's last "
                                   "word. Writes DIR/sketch.svg (SVG 1.1), sketch.png, strokes.safetensors, "
                                   "progress.gif, init.png, curves.png, metrics.json, config.yaml and checkpoints/ "
                                   "(--resume). Ctrl-C stops after the current step and keeps the strokes so far.",
                       formatter_class=DefaultsFormatter)
    p.add_argument("prompt", help="what to draw, e.g. 'a red cube'")
    p.add_argument("--strokes", type=int, default=None, help="number of strokes; default: the config's (16)")
    p.add_argument("--iterations", type=int, default=None, help="optimisation steps; default: the config's")
    p.add_argument("--model", default=None,
                   help="diffusers pipeline folder, shipped model or hub id; default: shapes-teacher")
    p.add_argument("--config", default=None,
                   help="YAML config, or a shipped preset by name (shapes-sketch, sd15-sketch; see configs/sketch/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set method.sds.guidance_scale=20 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="random seed; default: the config's (0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest readable checkpoint (same config)")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.errors import UserError
    from gendistill.run_dir import check_out_dir

    if not args.prompt.strip():
        raise UserError("the prompt is empty; describe what to draw, e.g. 'a red cube'")
    if args.strokes is not None and args.strokes < 1:
        raise UserError(f"--strokes must be >= 1, got {args.strokes}")
    check_out_dir(args.out)  # an existing file there is one line, before any work or import
    from gendistill.jobs.score_2d.sketch import load_sketch_config, run_sketch
    from gendistill.shipped import resolve_preset

    overrides = []
    for key, value in (("strokes.num_strokes", args.strokes), ("run.iterations", args.iterations),
                       ("model", args.model), ("seed", args.seed)):
        if value is not None:
            overrides.append(f"{key}={value}")
    preset = resolve_preset(args.config or "shapes-sketch", "sketch")
    config = load_sketch_config(preset, overrides + list(args.overrides))  # fails on bad keys before any work
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    result = run_sketch(args.prompt, config, args.out, resume=args.resume, log=log)
    print(f"sketch: {result.svg} ({result.scene.describe()}, {result.steps} steps, {result.seconds:.0f} s); "
          f"png: {result.png}; progress: {result.out_dir / 'progress.gif'}")
    return 0
