"""``gendistill edit-3d``: edit a 3D Gaussian scene from a text prompt, localised by attention (GSEditPro)."""

from __future__ import annotations

import sys

from gendistill.commands.parsing import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("edit-3d", help="edit a 3D Gaussian scene toward a prompt, only where a word points (GSEditPro)",
                       description="Optimise the Gaussians of SCENE.ply by score distillation so that a diffusers "
                                   "text-to-image model reads the prompt, changing only the Gaussians the target "
                                   "word's cross-attention points at (found from several views, refined as the edit "
                                   "goes on). Writes DIR/scene.ply, before_after.gif, relevance.png, curves.png, "
                                   "metrics.json, the resolved config.yaml and checkpoints/ (--resume). Ctrl-C stops "
                                   "after the current step and still writes them.", formatter_class=DefaultsFormatter)
    p.add_argument("scene", help="the 3D Gaussian splat PLY to edit (3DGS layout, e.g. a text-to-3d scene.ply)")
    p.add_argument("--prompt", required=True, help="what the scene should show, e.g. 'a green cube'")
    p.add_argument("--target", required=True, help="the prompt's word the edit is about, e.g. cube")
    p.add_argument("--config", default=None,
                   help="YAML config or a shipped preset by name (shapes-edit-3d, shapes-edit-3d-unlocalised, "
                        "sd15-edit-3d); default: shapes-edit-3d")
    p.add_argument("--model", default=None, help="diffusers pipeline folder, shipped model or hub id")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set iterations=200 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="random seed; default: the config's (0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.run_dir import check_out_dir

    check_out_dir(args.out)
    from gendistill.jobs.edit_3d.config import load_edit3d_config
    from gendistill.jobs.edit_3d.run import run_edit_3d, validate
    from gendistill.shipped import resolve_preset

    overrides = list(args.overrides)
    for key, value in (("model", args.model), ("seed", args.seed)):
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_edit3d_config(resolve_preset(args.config or "shapes-edit-3d", "edit-3d"), overrides)
    validate(args.scene, args.prompt, args.target, config)  # one line before the model loads
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    result = run_edit_3d(args.scene, args.prompt, args.target, config, args.out, resume=args.resume, log=log)
    print(f"edited: {result.ply} ({int(result.selected.sum())} of {len(result.params)} Gaussians selected, "
          f"{result.steps} steps, {result.seconds:.0f} s); before/after: {result.out_dir / 'before_after.gif'}")
    return 0
