"""``gendistill text-to-3d``: 3D Gaussians for a prompt by score distillation (default: SDS, shapes teacher)."""

from __future__ import annotations

import sys

from gendistill.commands.parsing import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("text-to-3d", help="make a 3D scene of a prompt by score distillation (SDS, VSD, CSD, NPG, SDS-RGBD)",
                       description="Optimise 3D Gaussians (or a NeRF) so that a diffusers text-to-image model likes "
                                   "every view of them. Writes DIR/scene.ply (Gaussians, 3DGS layout; a NeRF writes "
                                   "field.safetensors and the marching-cubes mesh scene_mesh.ply/.obj/.glb), a "
                                   "turntable GIF, held-out views, metrics.json, curves.png and the resolved "
                                   "config.yaml; shapes captions also get eval3d.json (silhouette IoU, colour error, "
                                   "prompt accuracy) and checkpoints/ (--resume). Ctrl-C stops the run after the "
                                   "current step and still writes them.",
                       formatter_class=DefaultsFormatter)
    p.add_argument("prompt", help="what to make, e.g. 'a red sphere'")
    p.add_argument("--representation", default=None,
                   help="gaussians or nerf (needs pip install 'gendistill[nerf]'); default: the config's (gaussians)")
    p.add_argument("--method", default=None, help="sds, vsd, csd, npg or sds-rgbd (structure-aware: RGB and depth); default: the config's (sds)")
    p.add_argument("--model", default=None,
                   help="diffusers pipeline folder, shipped model or hub id; a distilled student (e.g. "
                        "shapes-lcm-4step, or the LoRA shapes-lcm-lora) is guided as it is meant to be (embedded "
                        "scale, or its distilled guidance in one pass; --set model_guidance=cfg for CFG on top); "
                        "default: shapes-teacher")
    p.add_argument("--config", default=None,
                   help="YAML config, or a shipped preset by name (e.g. shapes-vsd; see configs/text-to-3d/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set iterations=300 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="random seed; default: the config's (0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest readable checkpoint (same config)")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.run_dir import check_out_dir

    check_out_dir(args.out)  # an existing file there is one line, before any work or import
    from gendistill.jobs.text_to_3d.config import load_text3d_config
    from gendistill.shipped import resolve_preset
    from gendistill.jobs.text_to_3d.run import run_text_to_3d

    overrides = list(args.overrides)
    if args.method is not None:
        overrides.insert(0, f"method.kind={args.method}")
    for key, value in (("scene.kind", args.representation), ("model", args.model), ("seed", args.seed)):
        if value is not None:
            overrides.append(f"{key}={value}")
    preset = resolve_preset(args.config, "text-to-3d") if args.config else None
    config = load_text3d_config(preset, overrides)  # fails on bad keys before any work
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    result = run_text_to_3d(args.prompt, config, args.out, resume=args.resume, log=log)
    print(f"scene: {result.ply} ({result.scene.describe()}, {result.seconds:.0f} s); "
          f"turntable: {', '.join(str(p) for p in result.turntable)}")
    if result.evaluation is not None:
        from gendistill.jobs.text_to_3d.evaluate3d import format_eval_table

        print(format_eval_table(result.evaluation))
    return 0
