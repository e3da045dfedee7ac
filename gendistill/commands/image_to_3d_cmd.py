"""``gendistill image-to-3d``: 3D Gaussians of the object in one image, by SDS from its CLIP embedding alone
(Isotropic3D)."""

from __future__ import annotations

import sys

from gendistill.commands.parsing import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("image-to-3d", help="make a 3D scene of the object in an image (Isotropic3D: SDS from its "
                                           "CLIP embedding, no reference-view loss)",
                       description="Embed IMAGE with CLIP and optimise 3D Gaussians (or a NeRF) so that an image- "
                                   "and camera-conditioned teacher likes every view of them, each at its own camera "
                                   "(Isotropic3D). No render is compared with the image (the reference-view loss "
                                   "of the baseline preset shapes-image-to-3d-reference is off). Writes DIR/scene.ply, "
                                   "a turntable GIF, held-out views, metrics.json, curves.png, input.png, the "
                                   "resolved config.yaml and checkpoints/ (--resume); --set evaluate_caption='a red "
                                   "sphere' also measures IoU and colour against that shapes object.",
                       formatter_class=DefaultsFormatter)
    p.add_argument("image", help="the input image (PNG/JPEG; transparency is composited on white)")
    p.add_argument("--model", default=None, help="image/camera teacher folder; default: shapes-image-teacher")
    p.add_argument("--config", default="shapes-image-to-3d",
                   help="YAML config, or a shipped preset by name (configs/image-to-3d/: shapes-image-to-3d, or the "
                        "baseline shapes-image-to-3d-reference)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set iterations=300 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="random seed; default: the config's (0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest readable checkpoint (same config)")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.run_dir import check_out_dir

    check_out_dir(args.out)
    from gendistill.jobs.image_to_3d.config import load_image3d_config
    from gendistill.jobs.image_to_3d.run import run_image_to_3d
    from gendistill.shipped import resolve_preset

    overrides = list(args.overrides)
    for key, value in (("model", args.model), ("seed", args.seed)):
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_image3d_config(resolve_preset(args.config, "image-to-3d"), overrides)
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    result = run_image_to_3d(args.image, config, args.out, resume=args.resume, log=log)
    print(f"scene: {result.ply} ({result.scene.describe()}, {result.seconds:.0f} s); "
          f"turntable: {', '.join(str(p) for p in result.turntable)}")
    if result.evaluation is not None:
        from gendistill.jobs.text_to_3d.evaluate3d import format_eval_table

        print(format_eval_table(result.evaluation))
    return 0
