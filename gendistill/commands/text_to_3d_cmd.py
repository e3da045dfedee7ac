"""``gendistill text-to-3d``: 3D Gaussians for a prompt by score distillation (default: SDS, shapes teacher)."""

from __future__ import annotations

from gendistill.cli import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("text-to-3d", help="make a 3D scene of a prompt by score distillation (SDS, VSD, CSD, NPG)",
                       description="Optimise 3D Gaussians (or a NeRF) so that a diffusers text-to-image model likes "
                                   "every view of them. Writes DIR/scene.ply (Gaussians, 3DGS layout; a NeRF writes "
                                   "field.safetensors and the marching-cubes mesh scene_mesh.ply/.obj/.glb), a "
                                   "turntable GIF, held-out views, metrics.json, curves.png and the resolved "
                                   "config.yaml; shapes captions also get eval3d.json (silhouette IoU, colour error, "
                                   "prompt accuracy). Ctrl-C stops the run and still writes them.",
                       formatter_class=DefaultsFormatter)
    p.add_argument("prompt", help="what to make, e.g. 'a red sphere'")
    p.add_argument("--representation", default=None,
                   help="gaussians or nerf (needs pip install 'gendistill[nerf]'); default: the config's (gaussians)")
    p.add_argument("--method", default=None, help="sds, vsd, csd or npg; default: the config's (sds)")
    p.add_argument("--model", default=None, help="diffusers pipeline folder or hub id; default: assets/shapes-teacher")
    p.add_argument("--config", default=None, help="YAML config (see configs/text-to-3d/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set iterations=300 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="random seed; default: the config's (0)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.text_to_3d.config import load_text3d_config
    from gendistill.text_to_3d.run import run_text_to_3d

    overrides = list(args.overrides)
    if args.method is not None:
        overrides.insert(0, f"method.kind={args.method}")
    for key, value in (("representation", args.representation), ("model", args.model), ("seed", args.seed)):
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_text3d_config(args.config, overrides)  # fails on bad keys before any work
    result = run_text_to_3d(args.prompt, config, args.out)
    print(f"scene: {result.ply} ({result.scene.describe()}, {result.seconds:.0f} s); "
          f"turntable: {', '.join(str(p) for p in result.turntable)}")
    if result.evaluation is not None:
        from gendistill.text_to_3d.evaluate3d import format_eval_table

        print(format_eval_table(result.evaluation))
    return 0
