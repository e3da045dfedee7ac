"""``gendistill edit``: edit an image toward a target prompt by score distillation (LUSD; DDS and SDS by config)."""

from __future__ import annotations

import sys

from gendistill.commands.parsing import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("edit", help="edit an image toward a prompt by score distillation (LUSD, DDS, SDS)",
                       description="Optimise an image's latents so that a diffusers text-to-image model reads the "
                                   "target prompt, changing only where the edited word's attention points (LUSD). "
                                   "Writes DIR/edited.png (the image's own size), before_after.png, mask.png, "
                                   "curves.png, metrics.json, latents.safetensors, the resolved config.yaml and "
                                   "checkpoints/ (--resume). Ctrl-C stops after the current step and still writes "
                                   "them.", formatter_class=DefaultsFormatter)
    p.add_argument("image", help="the image to edit (PNG, JPEG, ...)")
    p.add_argument("--prompt", required=True, help="what the image should show, e.g. 'a blue cube'")
    p.add_argument("--source-prompt", default="", help="what the image shows now, e.g. 'a red cube' (default: empty)")
    p.add_argument("--method", default=None,
                   help="a preset by name (shapes-edit-lusd, shapes-edit-dds, shapes-edit-sds, sd15-edit-lusd) or a "
                        "YAML file; default: shapes-edit-lusd")
    p.add_argument("--model", default=None, help="diffusers pipeline folder, shipped model or hub id")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set run.iterations=300 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="random seed; default: the config's (0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.run_dir import check_out_dir

    check_out_dir(args.out)
    from gendistill.jobs.score_2d.edit import load_edit_config, run_edit
    from gendistill.render.images import load_image
    from gendistill.shipped import resolve_preset

    image = load_image(args.image)  # a missing or unreadable file is one line before the model loads
    overrides = list(args.overrides)
    for key, value in (("model", args.model), ("seed", args.seed)):
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_edit_config(resolve_preset(args.method or "shapes-edit-lusd", "edit"), overrides)
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    result = run_edit(image, args.prompt, config, args.out, source_prompt=args.source_prompt, resume=args.resume,
                      log=log)
    print(f"edited: {result.out_dir / 'edited.png'} ({result.steps} steps, {result.seconds:.0f} s); "
          f"before/after: {result.out_dir / 'before_after.png'}")
    return 0
