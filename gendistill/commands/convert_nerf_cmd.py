"""``gendistill convert-nerf``: convert a radiance field to another architecture or to 3D Gaussians (PVD)."""

from __future__ import annotations

from gendistill.commands.parsing import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("convert-nerf", help="convert a radiance field between architectures or to/from 3D Gaussians",
                       description="Progressive volume distillation: a student learns the teacher's volume "
                                   "(features, then density, then colour, then rendered rays) from a bank of the "
                                   "teacher's answers, drawn where it has density and refreshed where the student "
                                   "is most wrong (--set pvd.bank.enabled=false: query it on the fly). A field -> "
                                   "gaussians places splats on the teacher's density and fits them to its renders; "
                                   "a splat .ply teacher -> a field fits the field to the splats' renders. Writes "
                                   "DIR/field.safetensors or DIR/scene.ply, metrics.json (student vs teacher PSNR "
                                   "on held-out cameras), renders.png, curves.png, config.yaml and checkpoints/ "
                                   "(--resume continues; Ctrl-C keeps the outputs of the last step).",
                       formatter_class=DefaultsFormatter)
    p.add_argument("--teacher", required=True, help="a field checkpoint (field.safetensors) or a 3DGS .ply")
    p.add_argument("--to", required=True, dest="target", help="mlp, tensorf-vm, tensorf-cp, hashgrid or gaussians")
    p.add_argument("--focus", action="store_true", help="PVD-AL: replay the points and rays the student gets most "
                                                        "wrong")
    p.add_argument("--steps", type=int, default=None, help="distillation steps; default: the config's")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set pvd.points_per_step=2048 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="random seed; default: 0")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT/checkpoints")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.run_dir import check_out_dir

    check_out_dir(args.out)  # an existing file there is one line, before any work or import
    from gendistill.jobs.convert import TARGETS, load_convert_config, run_convert
    from gendistill.errors import check_choice

    check_choice("--to target", args.target, TARGETS)
    overrides = list(args.overrides)
    if args.focus:
        overrides.insert(0, "pvd.focus=true")
    if args.steps is not None:
        section = "splats" if args.target == "gaussians" else "pvd"
        overrides.insert(0, f"{section}.steps={args.steps}")
        overrides.insert(0, f"fit.steps={args.steps}")
    if args.seed is not None:
        overrides.insert(0, f"seed={args.seed}")
    config = load_convert_config(overrides)
    metrics = run_convert(config, args.teacher, args.target, args.out, resume=args.resume, log=print).metrics
    print(f"{args.teacher} -> {args.target}: PSNR vs teacher {metrics['psnr_vs_teacher']:.2f} dB on "
          f"{metrics['holdout_views']} held-out views ({metrics['seconds']:.0f} s); wrote {args.out}")
    return 0
